"""oslo.log configured as a Nova service configures it (debug on, one log file), for the test
programs beside this file: they import it from their own directory."""

from oslo_config import cfg
from oslo_log import log as logging


def setup_nova_logging(log_path: str, project: str = "nova") -> cfg.ConfigOpts:
    conf = cfg.CONF
    logging.register_options(conf)
    conf([], project=project)
    conf.set_override("log_file", log_path)
    conf.set_override("debug", True)
    logging.setup(conf, "nova")
    return conf

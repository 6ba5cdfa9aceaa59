"""`stacklens lab run --scenario network`: a real Open vSwitch (userspace netdev datapath)
between two network namespaces (the "VMs"), real traffic, a mid-run flow flush.

The lab starts its own ovsdb-server and ovs-vswitchd (foreground processes, private run/db/log
directory under a temporary directory, unix sockets only, killed by pid at the end), creates
a netdev bridge, two namespaces with a veth pair each (one end a bridge port whose Interface
row carries `external_ids:vm-id`), and runs bounded traffic inside the namespaces only:
ICMP echo both ways and UDP datagrams to PORTS destination ports. OpenFlow rules matching
each UDP destination port make ovs-vswitchd install one megaflow per port, so flushing the
datapath flows (`ovs-appctl revalidator/purge`) mid-run sends every active flow back
through the slow path at once: an upcall burst. `ovs-appctl` statistics are sampled every
SAMPLE_S into the bundle; the vswitchd log records every miss upcall (dpif_netdev DBG).

    OUT/bundle.toml
    OUT/ovs/ovs-stats.jsonl      sampled ovs-appctl output, the Interface table, the flush command
                                 (host lab-net)
    OUT/ovs/ovs-vswitchd.log     OvS's own log, one `miss upcall` record per upcall
    OUT/lab.json                 parameters, flush time, OvS's own counters at start and end
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from stacklens.errors import StacklensError
from stacklens.processes import stop_process

NET_HOST = "lab-net"
SAMPLE_S = 0.25
DURATION_S = 6.0
FLUSH_AT_S = 3.0
PORTS = 24  # UDP destination ports, one OpenFlow rule and one megaflow each
UDP_RATE = 200  # datagrams per second from vm1
APPCTL = ("dpctl/show", "upcall/show", "dpif-netdev/pmd-stats-show", "coverage/show")
SUBNET = "10.199.{}.{}"


@dataclass
class NetworkResult:
    scenario: str
    out: str
    bridge: str
    vms: dict  # vm name → {namespace, port, ip, mac}
    flush_ns: int = 0  # when revalidator/purge was issued (ns since the epoch)
    samples: int = 0
    ovs_counters_start: dict = field(default_factory=dict)  # pmd-stats-show of the main thread
    ovs_counters_end: dict = field(default_factory=dict)
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class OvsDaemons:
    """ovsdb-server + ovs-vswitchd of the lab, private to `rundir`, stopped by pid."""

    def __init__(self, rundir: Path, logfile: Path) -> None:
        self.rundir = rundir
        self.env = dict(os.environ, OVS_RUNDIR=str(rundir), OVS_DBDIR=str(rundir), OVS_LOGDIR=str(rundir))
        self.db_sock = rundir / "db.sock"
        self.procs: list[subprocess.Popen] = []
        db = rundir / "conf.db"
        schema = _schema()
        subprocess.run(["ovsdb-tool", "create", str(db), schema], check=True, timeout=10, env=self.env,
                       capture_output=True)
        self._start(["ovsdb-server", str(db), f"--remote=punix:{self.db_sock}",
                     f"--unixctl={rundir / 'ovsdb.ctl'}", "--no-chdir", f"--log-file={rundir / 'ovsdb.log'}"])
        _wait_for(self.db_sock, self.procs[-1])
        self.vsctl("--no-wait", "init")
        self.ctl = rundir / "vswitchd.ctl"
        self._start(["ovs-vswitchd", f"unix:{self.db_sock}", f"--unixctl={self.ctl}", "--no-chdir",
                     f"--log-file={logfile}"])
        _wait_for(self.ctl, self.procs[-1])

    def _start(self, cmd: list[str]) -> None:
        err = open(self.rundir / (Path(cmd[0]).name + ".stderr"), "wb")
        self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                           env=self.env, start_new_session=True))

    def vsctl(self, *args: str) -> str:
        return subprocess.run(["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=10", *args], check=True,
                              capture_output=True, text=True, timeout=15, env=self.env).stdout

    def appctl(self, *args: str) -> str:
        return subprocess.run(["ovs-appctl", "-t", str(self.ctl), "--timeout=10", *args], check=True,
                              capture_output=True, text=True, timeout=15, env=self.env).stdout

    def ofctl(self, *args: str) -> str:
        return subprocess.run(["ovs-ofctl", *args], check=True, capture_output=True, text=True, timeout=15,
                              env=self.env).stdout

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p, 5)


def _schema() -> str:
    for d in ("/usr/share/openvswitch", "/usr/local/share/openvswitch"):
        if Path(d, "vswitch.ovsschema").exists():
            return str(Path(d, "vswitch.ovsschema"))
    raise StacklensError("lab: vswitch.ovsschema not found (apt install openvswitch-switch)")


def _wait_for(sock: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StacklensError(f"lab: {proc.args[0]} did not start (no {sock}); see its stderr in the lab rundir")
        time.sleep(0.05)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=15)


# Traffic inside a namespace: bounded in time, plain sockets, only to the peer namespace.
_UDP_SENDER = """
import socket, sys, time
dst, base, ports, rate, until = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
i, t0 = 0, time.time()
while time.time() < until:
    try:
        s.sendto(b"stacklens-lab", (dst, base + i % ports))
    except OSError:
        pass
    i += 1
    time.sleep(max(0.0, t0 + i / rate - time.time()))
"""


def run_network(out: Path, progress: Callable[[str], None] | None = None,
                duration_s: float = DURATION_S, flush_at_s: float = FLUSH_AT_S) -> NetworkResult:
    """Run the network scenario and write its bundle to `out` (replaced if it is a lab bundle)."""
    say = progress or (lambda _m: None)
    for prog in ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovs-appctl", "ip"):
        if shutil.which(prog) is None:
            raise StacklensError(f"lab: {prog} is not installed (./dev setup installs openvswitch-switch, iproute2)")
    if os.geteuid() != 0:
        raise StacklensError("lab: the network scenario needs root (network namespaces, veth pairs)")
    if out.exists():
        if not (out / "bundle.toml").exists() and any(out.iterdir()):
            raise StacklensError(f"lab: {out} exists and is not a lab bundle; choose another --out")
        shutil.rmtree(out)
    (out / "ovs").mkdir(parents=True)
    (out / "bundle.toml").write_text('# written by stacklens lab run --scenario network\n'
                                     f'[[parts]]\npath = "ovs"\nhost = "{NET_HOST}"\n')
    tag = uuidlib.uuid4().hex[:6]  # unique names: concurrent runs never collide
    bridge = f"slbr{tag}"
    net = int(tag[:2], 16) % 200 + 1
    vms = {f"vm{i}": {"namespace": f"sl{tag}vm{i}", "port": f"sl{tag}p{i}", "ip": SUBNET.format(net, i)}
           for i in (1, 2)}
    result = NetworkResult("network", str(out), bridge, vms)
    t_start = time.monotonic()
    created_ns: list[str] = []
    created_links: list[str] = []
    traffic: list[subprocess.Popen] = []
    daemons: OvsDaemons | None = None
    samples = open(out / "ovs" / "ovs-stats.jsonl", "w")
    with tempfile.TemporaryDirectory(prefix="stacklens-ovs-") as tmp:
        try:
            daemons = OvsDaemons(Path(tmp), out / "ovs" / "ovs-vswitchd.log")
            daemons.appctl("vlog/set", "dpif_netdev:file:dbg")  # one log record per miss upcall
            daemons.vsctl("add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev")
            for name, vm in vms.items():
                _run("ip", "netns", "add", vm["namespace"])
                created_ns.append(vm["namespace"])
                _run("ip", "link", "add", vm["port"], "type", "veth", "peer", "name", "eth0", "netns", vm["namespace"])
                created_links.append(vm["port"])
                _run("ip", "link", "set", vm["port"], "up")
                ns = ("ip", "-n", vm["namespace"])
                _run(*ns, "addr", "add", vm["ip"] + "/24", "dev", "eth0")
                _run(*ns, "link", "set", "eth0", "up")
                _run(*ns, "link", "set", "lo", "up")
                if shutil.which("ethtool"):  # AF_PACKET on veth: let the receiver see valid checksums
                    subprocess.run(["ip", "netns", "exec", vm["namespace"], "ethtool", "-K", "eth0", "tx", "off"],
                                   capture_output=True, timeout=10)
                vm["mac"] = _read_mac(vm["namespace"])
                daemons.vsctl("add-port", bridge, vm["port"], "--", "set", "Interface", vm["port"],
                              f"external_ids:vm-id={name}", f"external_ids:namespace={vm['namespace']}",
                              f"external_ids:attached-mac={vm['mac']}")
            # One OpenFlow rule per UDP destination port: the classifier then needs every port
            # bit to choose a rule, so ovs-vswitchd installs one megaflow per port.
            rules = Path(tmp) / "openflow-rules.txt"
            rules.write_text("".join(f"priority=100,udp,tp_dst={20000 + p},actions=NORMAL\n" for p in range(PORTS)))
            daemons.ofctl("add-flows", bridge, str(rules))
            _write_sample(samples, interfaces=_interface_rows(daemons.vsctl("--format=json", "list", "Interface")))
            result.ovs_counters_start = _main_thread(daemons.appctl("dpif-netdev/pmd-stats-show"))
            say(f"network: bridge {bridge} (netdev) with {', '.join(v['namespace'] for v in vms.values())}; "
                f"traffic for {duration_s:.0f} s, flow flush at {flush_at_s:.0f} s")

            until = time.time() + duration_s
            vm1, vm2 = vms["vm1"], vms["vm2"]
            traffic.append(_in_ns(vm1["namespace"], [sys.executable, "-c", _UDP_SENDER, vm2["ip"], "20000",
                                                     str(PORTS), str(UDP_RATE), str(until)]))
            if shutil.which("ping"):
                count = str(int(duration_s / 0.1))
                for a, b in ((vm1, vm2), (vm2, vm1)):
                    traffic.append(_in_ns(a["namespace"], ["ping", "-q", "-i", "0.1", "-c", count, "-w",
                                                           str(int(duration_s) + 1), b["ip"]]))
            else:
                result.notes.append("ping not installed: UDP traffic only")
            t0 = time.monotonic()
            flushed = False
            k = 0
            while time.monotonic() - t0 < duration_s + SAMPLE_S:
                _write_sample(samples, appctl={c: daemons.appctl(c) for c in APPCTL})
                k += 1
                if not flushed and time.monotonic() - t0 >= flush_at_s:
                    result.flush_ns = time.time_ns()
                    daemons.appctl("revalidator/purge")
                    _write_sample(samples, command="revalidator/purge", issued_ns=result.flush_ns)
                    flushed = True
                    say(f"network: flushed the datapath flows (revalidator/purge) at {time.monotonic() - t0:.2f} s")
                time.sleep(max(0.0, t0 + k * SAMPLE_S - time.monotonic()))
            for p in traffic:
                p.wait(timeout=duration_s + 5)
            _write_sample(samples, appctl={c: daemons.appctl(c) for c in APPCTL})
            result.samples = k + 1
            result.ovs_counters_end = _main_thread(daemons.appctl("dpif-netdev/pmd-stats-show"))
        finally:
            for p in traffic:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
            samples.close()
            if daemons is not None:
                daemons.stop()
            for link in created_links:
                subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
            for ns in created_ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    result.wall_s = round(time.monotonic() - t_start, 3)
    (out / "lab.json").write_text(json.dumps(asdict(result) | {"parameters": {
        "sample_s": SAMPLE_S, "duration_s": duration_s, "flush_at_s": flush_at_s, "udp_ports": PORTS,
        "udp_rate": UDP_RATE}}, indent=1))
    say(f"network: done in {result.wall_s:.1f} s, {result.samples} samples; bundle in {out}")
    return result


def _interface_rows(text: str) -> list[dict]:
    """`ovs-vsctl --format=json list Interface` (OVSDB's ["map", …] / ["set", …] encoding) as plain objects."""
    table = json.loads(text)

    def plain(v):
        if isinstance(v, list) and len(v) == 2 and v[0] == "map":
            return {k: plain(x) for k, x in v[1]}
        if isinstance(v, list) and len(v) == 2 and v[0] == "set":
            return [plain(x) for x in v[1]]
        if isinstance(v, list) and len(v) == 2 and v[0] == "uuid":
            return v[1]
        return v
    keep = ("name", "ofport", "external_ids", "mac_in_use", "type", "admin_state", "link_state")
    return [{k: plain(v) for k, v in zip(table["headings"], row) if k in keep} for row in table["data"]]


def _in_ns(namespace: str, cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", namespace, *cmd], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _read_mac(namespace: str) -> str:
    out = subprocess.run(["ip", "-n", namespace, "-j", "link", "show", "eth0"], check=True, capture_output=True,
                         text=True, timeout=10).stdout
    return json.loads(out)[0]["address"]


def _write_sample(f, **body) -> None:
    f.write(json.dumps({"ovs_sample_ns": time.time_ns(), **body}) + "\n")
    f.flush()


def _main_thread(text: str) -> dict:
    from stacklens.sources.ovs_stats import parse_pmd_stats
    threads = parse_pmd_stats(text)
    return next((t for t in threads if t["thread"] == "main thread"), threads[0] if threads else {})

"""stacklens: multi-layer tracing and diagnosis for OpenStack clouds."""

__version__ = "0.1.0"

"""sophos-central-exporter: probes the Sophos Central public API and exports Prometheus metrics."""

import platform

__version__ = "0.1.0"
"""The one place the version is written: the package metadata (hatchling) reads it from here."""

PYTHON = platform.python_version()
"""The version of the Python running the exporter (``build_info``'s ``python_version`` label)."""

"""The built-in Sophos Central simulator (part of the product, not a test fixture).

It imitates Sophos Central over real loopback HTTP closely enough to develop, demonstrate, test
end to end and benchmark the exporter: the id host, the global API host, regional hosts, a raw
host for transport-level faults and a rogue listener that must never see a token.

    sim = Simulator(build_scenario("demo"), host="127.0.0.1", port=0)
    await sim.start()
    ...
    await sim.stop()
"""

from agent.simulator.drill import Drill, DrillError, load_drill, parse_drill
from agent.simulator.faults import (
    ALL_FAULTS,
    BASIC_FAULTS,
    CHAOS_FAULTS,
    FAULT_NAMES,
    NOT_API_FAULTS,
    PERMISSION_FAULTS,
    TRANSPORT_FAULTS,
    WIDE_FAULTS,
)
from agent.simulator.model import (
    DEFAULT_RATE_LIMITS,
    Credential,
    Scenario,
    Tenant,
    Throttle,
)
from agent.simulator.routes import FAMILIES, ROUTES, TENANT_FAMILIES
from agent.simulator.scenarios import SCENARIO_NAMES, build_scenario, tagged
from agent.simulator.serve import serve, write_agent_config
from agent.simulator.simulator import Simulator
from agent.simulator.tls import TlsFiles, make_tls
from agent.simulator.traffic import TrafficStats, busiest_window, window_seconds

__all__ = [
    "ALL_FAULTS",
    "BASIC_FAULTS",
    "CHAOS_FAULTS",
    "DEFAULT_RATE_LIMITS",
    "FAMILIES",
    "FAULT_NAMES",
    "NOT_API_FAULTS",
    "PERMISSION_FAULTS",
    "ROUTES",
    "SCENARIO_NAMES",
    "TENANT_FAMILIES",
    "TRANSPORT_FAULTS",
    "WIDE_FAULTS",
    "Credential",
    "Drill",
    "DrillError",
    "Scenario",
    "Simulator",
    "Tenant",
    "Throttle",
    "TlsFiles",
    "TrafficStats",
    "build_scenario",
    "busiest_window",
    "load_drill",
    "make_tls",
    "parse_drill",
    "serve",
    "tagged",
    "window_seconds",
    "write_agent_config",
]

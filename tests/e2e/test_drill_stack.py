"""A scheduled drill makes the exporter's alerts fire on time, end to end.

``simulate --tls --drill FILE`` as a subprocess, the exporter trusting the simulator's CA through
the ``ca_bundle`` the simulator wrote into its config, a real Prometheus evaluating the project's
rules (``for:`` divided by 60, as in test_real_stack.py), the example Alertmanager and a webhook.
The drill, on the simulator's clock:

- at 30 s one organization tenant starts answering 500: ``SophosCentralPersistent5xx`` for that
  tenant (three failed probes, confirmed 1 s and 2 s apart, then the scaled 5 s ``for:``) is
  pending no earlier than the fault and reaches the team chat within 30 s;
- at 60 s every API call answers 503: ``SophosCentralApiOutage`` pages the on-call engineer no
  earlier than the fault and within 30 s.

What it shows a user rehearsing an outage: the README's "Rehearse an outage" timeline, shortened.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import yaml

from agent.simulator import build_scenario
from tests.e2e.stack_support import RealStack, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

SCENARIO = build_scenario("integrations")
TENANT = SCENARIO.credential("org-integrations").tenants[0]
TENANT_FAULT_AT, OUTAGE_AT = 30.0, 60.0
WITHIN = 30.0
DRILL = {
    "faults": [
        {
            "name": "one tenant answers 500",
            "start": f"{TENANT_FAULT_AT:g}s",
            "duration": "10m",
            "target": {"tenant": TENANT.id},
            "fault": "server_error_500",
        },
        {
            "name": "Sophos Central answers 503 everywhere",
            "start": f"{OUTAGE_AT:g}s",
            "duration": "10m",
            "target": "everything",
            "fault": "unavailable_503",
        },
    ]
}
AGENT_OVERRIDES: dict[str, Any] = {
    "probe_interval": "2s",
    "token_probe_interval": "5s",
    "tenant_refresh_interval": "10s",
    "request_timeout": "3s",
    "confirm_interval": "1s",
    "budget_share": 0.25,
}
PAGER, CHAT = "sophos-central-pager", "sophos-central-chat"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    running = RealStack(tmp_path_factory.mktemp("drill-stack"))
    drill = running.workdir / "drill.yml"
    drill.write_text(yaml.safe_dump(DRILL, sort_keys=False), encoding="utf-8")
    try:
        with running.explain_failure():
            running.webhook.start()
            simulator = running.start_simulator(
                "integrations", "--tls", "--tls-dir", str(running.workdir / "tls"),
                "--drill", str(drill),
            )  # fmt: skip
            config = {
                **simulator["agent_config"],
                **AGENT_OVERRIDES,
                "state_file": str(running.workdir / "state.db"),
            }
            assert config["ca_bundle"] == simulator["ca_file"]
            running.start_agent(running.write_agent_config("agent.yml", config))
            running.start_alertmanager()
            running.start_prometheus()
            wait_until(
                lambda: running.query('sophos_central_probe_success{probe="tenant"} == 1'),
                30,
                "Prometheus to see a successful tenant probe over HTTPS",
            )
        yield running
    finally:
        running.close()


def at(stack: RealStack, seconds: float) -> float:
    """Wall time of a moment of the drill."""
    return float(stack.simulator["started_at"]) + seconds


def firing(stack: RealStack, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return stack.firing_in_prometheus(alertname=alertname, **labels)


def active_since(alert: dict[str, Any]) -> float:
    return datetime.fromisoformat(alert["activeAt"].replace("Z", "+00:00")).timestamp()


def notified(stack: RealStack, receiver: str, alertname: str) -> bool:
    return any(
        name == receiver and labels.get("alertname") == alertname
        for name, labels in stack.webhook.firing()
    )


def test_the_stack_is_up_before_the_first_fault(stack: RealStack) -> None:
    assert time.time() < at(stack, TENANT_FAULT_AT), "the stack took longer than the drill waits"
    assert not firing(stack, "SophosCentralPersistent5xx")
    assert not firing(stack, "SophosCentralApiOutage")


def test_a_tenant_fault_pages_the_team_chat_on_time(stack: RealStack) -> None:
    with stack.explain_failure():
        deadline = at(stack, TENANT_FAULT_AT + WITHIN) - time.time()
        (alert,) = wait_until(
            lambda: firing(stack, "SophosCentralPersistent5xx", tenant_id=TENANT.id),
            max(deadline, 1.0),
            f"SophosCentralPersistent5xx for {TENANT.id} within {WITHIN:g} s of the fault",
        )
        assert active_since(alert) >= at(stack, TENANT_FAULT_AT) - 1  # not before the fault
        assert alert["labels"]["credential"] == "org-integrations"
        wait_until(
            lambda: notified(stack, CHAT, "SophosCentralPersistent5xx"),
            10,
            "the team chat to be told",
        )


def test_an_api_wide_outage_pages_the_on_call_engineer_on_time(stack: RealStack) -> None:
    with stack.explain_failure():
        assert not firing(stack, "SophosCentralApiOutage"), "paged before the outage started"
        deadline = at(stack, OUTAGE_AT + WITHIN) - time.time()
        alerts = wait_until(
            lambda: firing(stack, "SophosCentralApiOutage"),
            max(deadline, 1.0),
            f"SophosCentralApiOutage within {WITHIN:g} s of the outage",
        )
        assert min(active_since(a) for a in alerts) >= at(stack, OUTAGE_AT) - 1
        wait_until(
            lambda: notified(stack, PAGER, "SophosCentralApiOutage"), 10, "the pager to ring"
        )
        context = ssl.create_default_context(cafile=stack.simulator["ca_file"])
        faults = httpx.get(f"{stack.simulator['admin_url']}/faults", verify=context).json()
        assert [f["name"] for f in faults["drill"]] == [f["name"] for f in DRILL["faults"]]

"""Against the simulator: a credential that expires, and a SIEM probe's last success that a
restart does not forget. (Its own module: a stack sets up the process's logging.)"""

from __future__ import annotations

import io
import time
from pathlib import Path

from agent.cli import run_check
from agent.config import load_settings
from agent.server import AgentService
from agent.simulator import build_scenario
from tests.e2e.harness import start_ready_stack, stop_stack, wait_for

EXPIRY = "sophos_central_credential_expiry_timestamp_seconds"
CAUSE = "sophos_central_probe_cause_info"
LAST_SUCCESS = "sophos_central_probe_last_success_timestamp_seconds"
STREAK = "sophos_central_probe_consecutive_failures"


async def test_an_expired_credential_is_said_to_have_expired_not_to_be_mistyped(
    tmp_path: Path,
) -> None:
    """org-healthy expires 12 s after the stack starts (in the simulator, and in its config's
    expires_at): until then /status says when; from then on the token endpoint refuses it and
    the token probe's cause is credential_expired, on /metrics, /status and in ``check``,
    while msp-healthy, without an expires_at, goes on as before."""
    scenario = build_scenario("healthy")
    expires_at = time.time() + 12
    scenario.credential("org-healthy").expires_at = expires_at
    stack = await start_ready_stack(
        scenario, tmp_path, within=30, token_probe_interval="1s", probe_interval="2s"
    )
    try:
        status = (await stack.get("/status")).text
        assert "The credential expires today" in status  # and in needs attention: critical
        assert (
            'data-credential="org-healthy" data-cause="" data-topic="credential expiry"' in status
        )
        metrics = await stack.metrics()
        assert {lbl["credential"]: v for _, lbl, v in metrics[EXPIRY]} == {
            "org-healthy": float(int(expires_at))
        }

        async def expired() -> bool:
            page = await stack.metrics()
            return any(
                lbl["credential"] == "org-healthy" and lbl["probe"] == "token"
                and lbl["cause"] == "credential_expired"
                for _, lbl, _ in page[CAUSE]
            )  # fmt: skip

        await wait_for(expired, 30, "org-healthy's token probe to say credential_expired")
        status = (await stack.get("/status")).text
        assert "token issuance fails (401)" in status
        assert "The credential has expired (the date in its expires_at has passed)" in status
        assert "It expired on " in status and "Check both values" not in status
        out = io.StringIO()
        assert await run_check(load_settings(stack.config_path), out) == 1
        rows = [line.split() for line in out.getvalue().splitlines()]
        token_rows = {row[0]: row for row in rows if len(row) > 6 and row[3] == "token"}
        assert token_rows["org-healthy"][6] == "credential_expired"
        assert token_rows["msp-healthy"][6] == "ok"
    finally:
        await stop_stack(stack)


async def test_a_siem_probes_last_success_survives_a_restart(tmp_path: Path) -> None:
    """The exporter is restarted while a tenant's SIEM events start failing: the failed probe
    after the restart still knows when the family last worked (from the state file), so the
    alert's clock did not start again."""
    scenario = build_scenario("healthy")
    tenant = scenario.credential("org-healthy").tenants[0]
    stack = await start_ready_stack(
        scenario,
        tmp_path,
        within=30,
        tenant_probes=["tenant", "siem_events"],
        probe_interval="2s",
        confirm_interval="1s",
    )
    try:
        page = await stack.metrics()
        before = {
            (lbl["tenant_id"], lbl["probe"]): v
            for _, lbl, v in page[LAST_SUCCESS]
            if lbl["credential"] == "org-healthy"
        }
        assert {probe for _, probe in before} == {"siem_events"}  # the SIEM family only
        assert before[(tenant.id, "siem_events")] <= time.time()
        await stack.service.stop(grace=0.5)
        stack.sim.set_fault(tenant.id, "server_error_500")
        stack.service = AgentService(load_settings(stack.config_path), process_metrics=False)
        await stack.service.start()

        async def failing() -> dict[str, float] | None:
            page = await stack.metrics()
            mine = {
                name: v
                for name in (LAST_SUCCESS, STREAK)
                for _, lbl, v in page.get(name, [])
                if (lbl["credential"], lbl["tenant_id"], lbl["probe"])
                == ("org-healthy", tenant.id, "siem_events")
            }
            return mine if mine.get(STREAK, 0) >= 1 else None

        after = await wait_for(failing, 30, "the tenant's siem_events to fail after the restart")
        assert after[LAST_SUCCESS] >= before[(tenant.id, "siem_events")]
        assert after[LAST_SUCCESS] < time.time() - 0.5  # from before the restart, not now
    finally:
        await stop_stack(stack)

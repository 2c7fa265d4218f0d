"""A wrong ``ca_bundle``, end to end: the agent against the simulator over HTTPS.

The simulator serves HTTPS from a CA it made at start-up; the agent is given another CA in
``ca_bundle``, as when a TLS-inspecting proxy re-signs the traffic and the bundle holds the wrong
certificate. Nothing can be probed, and every surface says why in the same words: ``/metrics``
(``cause="tls_error"``, ``error_code`` unchanged), ``/status``, ``check`` and the log line, with the
unknown-issuer remedy (set ``ca_bundle`` to the proxy's CA).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import trustme

from agent import metricnames as m
from agent.causes import TABLE
from agent.cli import run_check
from agent.simulator import build_scenario, make_tls
from agent.views.report import plain_remedy
from agent.views.status import remedy_html
from tests.e2e.harness import start_stack, stop_stack, wait_for

UNKNOWN_ISSUER = TABLE["tls_error"].variants["tls_unknown_issuer"]


async def test_a_wrong_ca_bundle_is_tls_error_with_the_unknown_issuer_remedy_everywhere(
    tmp_path: Path,
) -> None:
    tls = make_tls(tmp_path / "tls")
    wrong = tmp_path / "someone-elses-ca.pem"
    trustme.CA(organization_name="Not the simulator").cert_pem.write_to_path(str(wrong))
    stack = await start_stack(
        build_scenario("healthy"), tmp_path, tls=tls, ca_bundle=str(wrong), request_timeout="3s"
    )
    try:

        async def token_cause() -> str | None:
            for _, labels, _ in (await stack.metrics()).get(m.PROBE_CAUSE_INFO, []):
                if labels["probe"] == "token":
                    return labels["cause"]
            return None

        await wait_for(token_cause, 20, "the token probe's first result")
        assert await token_cause() == "tls_error"
        families = await stack.metrics()
        tokens = [lbl for _, lbl, _ in families[m.PROBE_CAUSE_INFO] if lbl["probe"] == "token"]
        assert {(t["cause"], t["kind"]) for t in tokens} == {("tls_error", "failure")}
        assert len(tokens) == len(stack.settings.credentials)
        calls = {
            (lbl["status_code"], lbl["error_code"])
            for _, lbl, _ in families[m.API_REQUESTS_TOTAL]
            if lbl["probe"] == "token"
        }
        assert calls == {("0", "tls_error")}, "the error_code label keeps its meaning"

        status = (await stack.get("/status")).text
        assert str(remedy_html(UNKNOWN_ISSUER)) in status

        out = io.StringIO()
        assert await run_check(stack.settings, out) == 1
        table = [line.split() for line in out.getvalue().splitlines()]
        rows = [" ".join(cells) for cells in table if cells[3:4] == ["token"]]
        assert len(rows) == len(stack.settings.credentials)
        for row in rows:
            assert " tls_error tls_error " in row, row
            assert row.endswith(" ".join(plain_remedy(UNKNOWN_ISSUER).split())), row

        records = [json.loads(line) for line in stack.logs.getvalue().splitlines() if line]
        logged = [r for r in records if r.get("probe") == "token" and r.get("cause")]
        assert logged and logged[-1]["cause"] == "tls_error"
        assert logged[-1]["hint"] == UNKNOWN_ISSUER
        assert "(tls_unknown_issuer): unable to get local issuer certificate" in logged[-1]["msg"]
    finally:
        await stop_stack(stack)

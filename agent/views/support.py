"""``/support`` and ``support-bundle``: the 5XX evidence as the support case Sophos asks for.

Sophos's troubleshooting guide asks, for a persistent 5XX, for a case with the subject "New API
5xx error", the request, the full response and how often it fails. This renders the evidence
``agent.evidence`` kept, as Markdown (``/support`` and the default bundle) or JSON. Evidence about
a tenant, credential or probe that is gone is *history*: listed after the current evidence, under
its own heading, and never called "failing now".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from agent.evidence import PERSISTENT_AFTER, Evidence, current_first
from agent.logs import REDACTOR
from agent.snapshot import Snapshot

SUBJECT = "New API 5xx error"
_TRACKING_IDS = ("trackingId", "correlationId", "requestId")
_ERROR_DETAILS = ("code", "docUrl")


def render_support_page(snapshot: Snapshot) -> str:
    """``/support``: the same Markdown as ``support-bundle``, tenants named as listed now."""
    # The evidence is stored redacted; the page passes the redactor once more all the same.
    return REDACTOR(render_markdown(list(snapshot.evidence), snapshot.tenant_names()))


def render_markdown(items: Sequence[Evidence], tenant_names: dict[str, str] | None = None) -> str:
    names = tenant_names or {}
    lines = [f"# Subject: {SUBJECT}", ""]
    if not items:
        lines += ["No 5XX answers recorded yet: there is no evidence to send.", ""]
        return "\n".join(lines)
    ordered = current_first(items)
    current = [e for e in ordered if e.current]
    history = len(ordered) - len(current)
    persistent = sum(1 for e in current if e.persistent)
    gone = (
        f" {history} more are history: their tenant, credential or probe is gone."
        if history
        else ""
    )
    lines += [
        "Evidence collected by sophos-central-exporter for a Sophos Central Support case, as the",
        "Sophos troubleshooting guide asks for it: the request, the full response, and how often",
        f"the failure occurs. {len(current)} probe(s) got 5XX answers; {persistent} of them are",
        f"persistent ({PERSISTENT_AFTER} or more consecutive 5XX).{gone} Secrets are redacted.",
        "",
    ]
    for item in current:
        lines += _markdown_item(item, names.get(item.tenant_id) or item.tenant_name)
    if history:
        lines += [
            "# History",
            "",
            "Evidence about what the exporter no longer probes: kept for a case that may still",
            "be worth opening, but none of it describes the present.",
            "",
        ]
        for item in ordered[len(current) :]:
            lines += _markdown_item(item, names.get(item.tenant_id) or item.tenant_name)
    return "\n".join(lines)


def _markdown_item(item: Evidence, tenant_name: str) -> list[str]:
    tenant = f"{tenant_name} ({item.tenant_id})" if item.tenant_id else "-"
    headers = "\n".join(f"{k}: {v}" for k, v in item.response_headers.items())
    ids = _joined(item.ids, _TRACKING_IDS) or "none in the response"
    sophos_code = _joined(item.ids, _ERROR_DETAILS)
    request_fence = _fence(item.request)
    response_fence = _fence(headers + item.response_body)
    since = f" (since {_iso(item.history_since)})" if item.history_since is not None else ""
    return [
        f"## {item.credential} / {item.probe} / {tenant}",
        "",
        f"- Status: **{item.state}**; last 5XX answer HTTP {item.status}",
        *([f"- History: {item.history}{since}"] if item.history else []),
        f"- First seen: {_iso(item.first_seen)}; last seen: {_iso(item.last_seen)}",
        f"- How often: {item.failures} of {item.calls} calls since first seen ({item.share:.0%})",
        f"- Last success after a 5XX: {_iso(item.last_ok) if item.last_ok else 'none'}",
        f"- Correlation / request ids: {ids}",
        *([f"- Sophos error code and documentation: {sophos_code}"] if sophos_code else []),
        "",
        "Request:",
        "",
        f"{request_fence}sh",
        item.request,
        request_fence,
        "",
        "Response:",
        "",
        f"{response_fence}http",
        f"HTTP {item.status}",
        headers,
        "",
        item.response_body or "(empty body)",
        response_fence,
        "",
    ]


def _joined(ids: dict[str, str], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={ids[k]}" for k in keys if k in ids)


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``: a response body that contains
    ```` ``` ```` must not end the block early and inject Markdown into the support case."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_json(items: Sequence[Evidence]) -> str:
    """Every item with its counts, ``state`` in words and ``current`` (False for history)."""
    data = {
        "subject": SUBJECT,
        "evidence": [
            {**asdict(e), "share": round(e.share, 4), "state": e.state, "current": e.current}
            for e in current_first(items)
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

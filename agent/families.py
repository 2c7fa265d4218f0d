"""The per-tenant probe families: which read calls the agent makes for every tenant.

A credential's API role is granted per product, so one tenant can answer 200 on
``/endpoint/v1/endpoints`` and 403 on ``/common/v1/alerts``; a SIEM connector lives on
``/siem/v1/events`` and ``/siem/v1/alerts``. ``tenant_probes`` picks which of these calls the agent
makes per tenant; Sophos's own multi-tenant samples call the Account Health Check
(``/account-health-check/v1/health-check``) per tenant, and it is the one per-tenant call whose 429
Sophos documents. Each built-in is one entry in ``BUILTINS``: its name (the ``probe`` label), its
path (the cheapest form of the call) and the check of its answer. Like blackbox_exporter's map of
probers, adding a family is adding an entry; nothing else branches on family names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.sophos import NotSophosAnswer, expect_some

CREDENTIAL_PROBES: tuple[str, ...] = ("token", "whoami", "tenant_list")
"""The credential-level probes; a per-tenant probe may not take one of their names."""

PROBE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

ShapeCheck = Callable[[dict[str, Any]], str | None]
"""Why a 2XX JSON object is not the answer the call documents, or None when it is; a
``ForeignShape`` when it is not the call's answer at all."""


class ForeignShape(str):
    """A check's finding that the object has none of the call's fields: someone other than
    Sophos answered (``not_sophos_answer``), rather than Sophos with a broken answer
    (``invalid_response``)."""


def _foreign(body: dict[str, Any], keys: tuple[str, ...]) -> ForeignShape | None:
    try:
        expect_some(body, keys, "response")
    except NotSophosAnswer as exc:
        return ForeignShape(str(exc))
    return None


def any_object(_body: dict[str, Any]) -> str | None:
    """Any JSON object: a custom path may answer anything Central serves, and every Central
    read answers an object."""
    return None


def paged_items(body: dict[str, Any]) -> str | None:
    """Endpoint and common APIs: ``{"items": [...], "pages": {...}}``."""
    if foreign := _foreign(body, ("items", "pages")):
        return foreign
    if not isinstance(body.get("items"), list):
        return "response has no 'items' list"
    if not isinstance(body.get("pages"), dict):
        return "response has no 'pages' object"
    return None


def siem_items(body: dict[str, Any]) -> str | None:
    """SIEM APIs: ``{"has_more": bool, "items": [...], "next_cursor": ...}``."""
    if foreign := _foreign(body, ("has_more", "items", "next_cursor")):
        return foreign
    if not isinstance(body.get("items"), list):
        return "response has no 'items' list"
    if not isinstance(body.get("has_more"), bool):
        return "response has no boolean 'has_more'"
    return None


SIEM_LOOKBACK_SECONDS = 86400.0
"""Sophos's SIEM endpoints refuse a ``from_date`` more than 24 hours back (400): a connector
that cannot collect for longer loses the events in between for good."""


def health_scores(body: dict[str, Any]) -> str | None:
    """Account Health Check: the scores per area under ``{"endpoint": {...}}``. Only the shape is
    checked: the scores are the account's configuration hygiene, not the API's health."""
    if foreign := _foreign(body, ("endpoint", "tenant")):
        return foreign
    if not isinstance(body.get("endpoint"), dict):
        return "response has no 'endpoint' object"
    return None


@dataclass(frozen=True)
class Family:
    """One per-tenant probe: ``path`` (with its query) on the tenant's API host.

    ``lookback``: how far back the API lets a collector read, for an API that forgets (the SIEM
    endpoints); None for one that does not. For such a family the agent exports when each
    tenant's probe last succeeded and ``SophosCentralSiemCollectionAtRisk`` warns while the
    collector can still catch up (``agent.collection``).
    """

    name: str
    path: str
    check: ShapeCheck = any_object
    lookback: float | None = None

    @property
    def endpoint(self) -> str:
        """The path without its query, as the diagnosis names it."""
        return self.path.split("?", 1)[0]


TENANT = "tenant"
"""The default family; its path is the ``tenant_probe_path`` setting."""

BUILTINS: dict[str, Family] = {
    f.name: f
    for f in (
        Family(TENANT, "", any_object),
        Family("siem_events", "/siem/v1/events?limit=1", siem_items, SIEM_LOOKBACK_SECONDS),
        Family("siem_alerts", "/siem/v1/alerts?limit=1", siem_items, SIEM_LOOKBACK_SECONDS),
        Family("common_alerts", "/common/v1/alerts?pageSize=1", paged_items),
        Family("account_health", "/account-health-check/v1/health-check", health_scores),
    )
}


ENDPOINTS = "/endpoint/v1/endpoints"
"""The default ``tenant_probe_path``'s call."""

KNOWN_ANSWERS: dict[str, ShapeCheck] = {
    ENDPOINTS: paged_items,
    **{f.endpoint: f.check for f in BUILTINS.values() if f.path},
}
"""The check of each call whose answer is documented, by path: whichever family makes it."""


def check_for(path: str) -> ShapeCheck:
    """The check of ``path``'s answer: the documented shape when the call is known, else any
    object (a custom path may answer anything Central serves)."""
    return KNOWN_ANSWERS.get(path.split("?", 1)[0].rstrip("/"), any_object)


@dataclass(frozen=True)
class ProbeSpec:
    """One ``tenant_probes`` entry as configured: a built-in's name, or a custom name and path."""

    name: str
    path: str | None = None


def spec_as_config(spec: ProbeSpec) -> str | dict[str, str]:
    """An entry as a user writes it, so ``config check`` output reads back as the same config."""
    return spec.name if spec.path is None else {"name": spec.name, "path": spec.path}


def parse_specs(value: Any, key: str = "tenant_probes") -> tuple[ProbeSpec, ...]:
    """Validate the ``tenant_probes`` list; a ValueError names the entry (``key[i].path``)."""
    if isinstance(value, str | dict) or not isinstance(value, Sequence) or not value:
        raise ValueError(
            f"{key}: must be a non-empty list of probe names "
            f"({', '.join(BUILTINS)}) or {{name, path}} entries"
        )
    specs: list[ProbeSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        spec = _spec(entry, f"{key}[{i}]")
        if spec.name in seen:
            where = f"{key}[{i}]" + (".name" if isinstance(entry, dict) else "")
            raise ValueError(f"{where}: {spec.name!r} is listed twice")
        seen.add(spec.name)
        specs.append(spec)
    return tuple(specs)


def _spec(entry: Any, where: str) -> ProbeSpec:
    if isinstance(entry, ProbeSpec):
        entry = {"name": entry.name, "path": entry.path} if entry.path else entry.name
    if isinstance(entry, str):
        if entry not in BUILTINS:
            raise ValueError(
                f"{where}: unknown probe {entry!r}; built-ins are {', '.join(BUILTINS)}, "
                "or give {name, path} for another GET call"
            )
        return ProbeSpec(entry)
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a probe name or a mapping with name and path")
    unknown = sorted(set(entry) - {"name", "path"})
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (an entry has only name and path)")
    name, path = entry.get("name"), entry.get("path")
    _check_name(name, f"{where}.name")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{where}.path: must be a path starting with '/' (a GET on the apiHost)")
    return ProbeSpec(str(name), path)


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not PROBE_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: must match ^[a-z][a-z0-9_]{{0,31}}$ (lower-case letters, digits and '_', "
            "starting with a letter); it becomes the probe label"
        )
    if name in CREDENTIAL_PROBES:
        raise ValueError(f"{where}: {name!r} is a credential-level probe; choose another name")
    if name in BUILTINS:
        raise ValueError(f"{where}: {name!r} is a built-in probe; list it by name, without a path")


def resolve(specs: Sequence[ProbeSpec], tenant_probe_path: str) -> tuple[Family, ...]:
    """The families to probe, in configured order (``tenant`` takes ``tenant_probe_path``)."""
    families: list[Family] = []
    for spec in specs:
        if spec.path is not None:
            families.append(Family(spec.name, spec.path, check_for(spec.path)))
        elif spec.name == TENANT:
            families.append(Family(TENANT, tenant_probe_path, check_for(tenant_probe_path)))
        else:
            families.append(BUILTINS[spec.name])
    return tuple(families)

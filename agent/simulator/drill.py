"""Faults on a schedule: the drill file that ``simulate --drill FILE`` runs.

A drill is a list of faults, each with a start (after the simulator started), a duration and a
target: one tenant, one host (``id`` for the token endpoint, ``global``, or a data region such
as ``eu01``), one credential, one API family, several of these at once (all must match), or
``everything`` (every API call on every host; the id host only when targeted by name)::

    faults:
      - name: EU01 down
        start: 5m
        duration: 20m
        target: {host: eu01}
        fault: empty_503
      - start: 2m
        duration: 30m
        target: {credential: msp-main}
        fault: revoked

The file is checked whole before the simulator starts: every problem is reported with the entry
and key it is in (``faults[1].target.host: unknown host 'eu05' ...``). While the simulator runs,
a fault is active from ``start`` to ``start + duration`` on the simulator's clock; the service
asks ``Drill.active`` on every call, so the schedule needs no timers to be right, and
``Drill.transitions`` lets the runner log each fault as it starts and ends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.configfile import ConfigError, load_yaml
from agent.durations import format_duration, parse_duration
from agent.simulator.faults import ALL_FAULTS, PERMISSION_FAULTS, TOKEN_FAULTS
from agent.simulator.model import REGIONS, Scenario
from agent.simulator.routes import FAMILIES
from agent.simulator.wire import HOST_FAULTY, HOST_MAIN

ID_HOST = "id"
"""The host name a drill gives the token endpoint (``id.sophos.com``)."""
TARGET_KEYS = ("tenant", "host", "credential", "family")
ENTRY_KEYS = ("name", "start", "duration", "target", "fault")


class DrillError(ValueError):
    """The drill file cannot be run; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class Target:
    """Which calls a fault hits; an unset field matches anything, ``everything`` sets none."""

    tenant: str | None = None
    host: str | None = None
    credential: str | None = None
    family: str | None = None

    def matches(self, call: CallPoint) -> bool:
        return (
            (self.tenant is None or self.tenant == call.tenant)
            and (self.host is None or self.host == call.host)
            and (self.credential is None or self.credential == call.credential)
            and (self.family is None or self.family == call.family)
        )

    def describe(self) -> str:
        parts = [f"{k}={v}" for k in TARGET_KEYS if (v := getattr(self, k)) is not None]
        return ",".join(parts) or "everything"


@dataclass(frozen=True)
class CallPoint:
    """Where a call is, as a drill target sees it: host name, credential, tenant, family."""

    host: str
    credential: str | None
    tenant: str | None = None
    family: str | None = None


@dataclass(frozen=True)
class DrillFault:
    """One scheduled fault; ``end`` is ``math.inf`` without a duration."""

    name: str
    start: float
    end: float
    target: Target
    fault: str

    def active(self, elapsed: float) -> bool:
        return self.start <= elapsed < self.end

    def applies(self, call: CallPoint) -> bool:
        """Whether this fault hits ``call``: token calls only when the target names the id
        host, or for ``revoked`` the credential; ``revoked`` never hits an API call."""
        if call.host == ID_HOST:
            named = self.target.host == ID_HOST or self.fault in TOKEN_FAULTS
            return named and self.target.credential in (None, call.credential)
        return self.fault not in TOKEN_FAULTS and self.target.matches(call)

    def as_json(self, elapsed: float) -> dict[str, Any]:
        state = (
            "active" if self.active(elapsed) else ("over" if elapsed >= self.end else "upcoming")
        )
        return {
            "name": self.name,
            "fault": self.fault,
            "target": self.target.describe(),
            "start": format_duration(self.start) if self.start else "0s",
            "end": None if math.isinf(self.end) else format_duration(self.end),
            "state": state,
        }


@dataclass(frozen=True)
class Drill:
    """A checked schedule of faults."""

    faults: tuple[DrillFault, ...]

    def active(self, elapsed: float) -> list[DrillFault]:
        return [f for f in self.faults if f.active(elapsed)]

    def transitions(self) -> list[tuple[float, str, DrillFault]]:
        """Every start and end, in time order: (seconds after start, "started"|"ended", fault)."""
        events = [(f.start, "started", f) for f in self.faults]
        events += [(f.end, "ended", f) for f in self.faults if not math.isinf(f.end)]
        return sorted(events, key=lambda e: (e[0], e[1] == "started"))


def host_names(scenario: Scenario) -> dict[str, str]:
    """Drill host names to host keys: ``global``, ``faulty`` and one per regional host."""
    names = {"global": HOST_MAIN, "faulty": HOST_FAULTY}
    for i in range(scenario.regions):
        names[REGIONS[i % len(REGIONS)][0]] = f"region-{i}"
    return names


def load_drill(path: str | Path, scenario: Scenario) -> Drill:
    """Read and check a drill file against the scenario it will run on."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DrillError(f"{path}: cannot read the drill file: {exc.strerror or exc}") from None
    try:
        data = load_yaml(text, str(path))
    except ConfigError as exc:
        raise DrillError(str(exc)) from None
    try:
        return parse_drill(data, scenario)
    except DrillError as exc:
        raise DrillError(f"{path}: {exc}") from None


def parse_drill(data: Any, scenario: Scenario) -> Drill:
    """A drill from its YAML data; ``DrillError`` names the entry and key of the first problem."""
    if not isinstance(data, Mapping) or set(data) != {"faults"}:
        raise DrillError("a drill file is a mapping with one key, faults: a list of faults")
    entries = data["faults"]
    if not isinstance(entries, list) or not entries:
        raise DrillError("faults: must be a non-empty list")
    checker = _Checker(scenario)
    return Drill(tuple(checker.entry(entry, f"faults[{i}]") for i, entry in enumerate(entries)))


class _Checker:
    def __init__(self, scenario: Scenario) -> None:
        self.hosts = host_names(scenario)
        self.credentials = {c.name for c in scenario.credentials}
        self.tenants = {t.id: t.id for t in scenario.tenants()}
        self.tenants.update({t.name: t.id for t in scenario.tenants()})

    def entry(self, entry: Any, where: str) -> DrillFault:
        if not isinstance(entry, Mapping):
            raise DrillError(f"{where}: must be a mapping with start, duration, target and fault")
        unknown = sorted(str(k) for k in set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise DrillError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(ENTRY_KEYS)})")
        for key in ("start", "target", "fault"):
            if key not in entry:
                raise DrillError(f"{where}.{key}: missing")
        start = _seconds(entry["start"], f"{where}.start", zero_ok=True)
        end = math.inf
        if entry.get("duration") is not None:
            end = start + _seconds(entry["duration"], f"{where}.duration", zero_ok=False)
        target = self.target(entry["target"], f"{where}.target")
        fault = self.fault(entry["fault"], target, where)
        name = entry.get("name", f"{fault} on {target.describe()}")
        if not isinstance(name, str) or not name.strip():
            raise DrillError(f"{where}.name: must be a non-empty string")
        return DrillFault(name.strip(), start, end, target, fault)

    def target(self, value: Any, where: str) -> Target:
        if value == "everything":
            return Target()
        if not isinstance(value, Mapping) or not value:
            raise DrillError(
                f"{where}: must be everything, or a mapping of one or more of "
                f"{', '.join(TARGET_KEYS)}"
            )
        unknown = sorted(str(k) for k in set(value) - set(TARGET_KEYS))
        if unknown:
            raise DrillError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(TARGET_KEYS)})")
        fields: dict[str, str] = {}
        for key, raw in value.items():
            if not isinstance(raw, str) or not raw:
                raise DrillError(f"{where}.{key}: must be a name")
            fields[key] = self._resolve(key, raw, f"{where}.{key}")
        return Target(**fields)

    def _resolve(self, key: str, raw: str, where: str) -> str:
        if key == "tenant":
            if raw not in self.tenants:
                raise DrillError(f"{where}: no tenant with id or name {raw!r} in this scenario")
            return self.tenants[raw]
        if key == "host":
            if raw != ID_HOST and raw not in self.hosts:
                known = ", ".join([ID_HOST, *self.hosts])
                raise DrillError(f"{where}: unknown host {raw!r}; this scenario serves {known}")
            return raw
        if key == "credential":
            if raw not in self.credentials:
                known = ", ".join(sorted(self.credentials))
                raise DrillError(f"{where}: no credential named {raw!r} (known: {known})")
            return raw
        if raw not in FAMILIES:
            raise DrillError(f"{where}: unknown family {raw!r} (known: {', '.join(FAMILIES)})")
        return raw

    def fault(self, value: Any, target: Target, where: str) -> str:
        if value not in ALL_FAULTS:
            raise DrillError(
                f"{where}.fault: unknown fault {value!r} (known: {', '.join(ALL_FAULTS)})"
            )
        fault = str(value)
        token_side = target.host == ID_HOST
        if fault in TOKEN_FAULTS and not (target.credential or token_side):
            raise DrillError(f"{where}.fault: {fault} needs a credential (or host: id) as target")
        if fault in TOKEN_FAULTS and (target.tenant or target.family):
            raise DrillError(f"{where}.fault: {fault} is about token requests: no tenant or family")
        if fault in PERMISSION_FAULTS and (token_side or target.family):
            raise DrillError(
                f"{where}.fault: {fault} names its own family; target a tenant, host or credential"
            )
        return fault


def _seconds(value: Any, where: str, *, zero_ok: bool) -> float:
    if zero_ok and value in (0, "0", "0s"):
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise DrillError(f"{where}: {exc}") from None


def describe_all(faults: Iterable[DrillFault], elapsed: float) -> list[dict[str, Any]]:
    return [f.as_json(elapsed) for f in faults]

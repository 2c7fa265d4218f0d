"""The out-of-process control API under ``/_simulator/`` on the global host.

End-to-end tests run the simulator as a subprocess next to a real Prometheus; this is how they
flip faults, rotate secrets and read the judge's numbers. It is unauthenticated, which is fine
for a loopback simulator and the reason it never serves secrets other than a freshly rotated one
(the caller asked for it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from agent.simulator.central import Central
from agent.simulator.rogue import RogueLog
from agent.simulator.wire import ApiRequest, Reply, json_reply

ADMIN_PREFIX = "/_simulator/"
_ROTATE = re.compile(r"^/_simulator/credentials/([^/]+)/rotate$")
_EXPIRE = re.compile(r"^/_simulator/credentials/([^/]+)/expire-tokens$")
_EXPIRE_CREDENTIAL = re.compile(r"^/_simulator/credentials/([^/]+)/expire$")
_FAULT = re.compile(r"^/_simulator/tenants/([^/]+)/fault$")


def _error(status: int, message: str) -> Reply:
    return json_reply(status, {"error": message})


class AdminApi:
    """Routes admin requests to the running simulator's controls."""

    def __init__(
        self, central: Central, rogue: RogueLog, state: Callable[[], dict[str, Any]]
    ) -> None:
        self._central = central
        self._rogue = rogue
        self._state = state

    def handle(self, req: ApiRequest) -> Reply:
        try:
            return self._route(req)
        except KeyError as exc:
            return _error(404, str(exc.args[0]) if exc.args else "not found")
        except ValueError as exc:
            return _error(400, str(exc))

    def _route(self, req: ApiRequest) -> Reply:
        path = req.path.rstrip("/")
        if path in ("/_simulator/state", "/_simulator/rogue", "/_simulator/faults"):
            if req.method != "GET":
                return _error(405, "use GET")
            if path.endswith("/state"):
                return json_reply(200, self._state())
            if path.endswith("/faults"):
                return json_reply(200, self._central.active_faults())
            return json_reply(200, {"requests": [asdict(r) for r in self._rogue.records]})
        if req.method != "POST":
            return _error(405 if path.startswith("/_simulator/") else 404, "use POST")
        return self._control(req, path)

    def _control(self, req: ApiRequest, path: str) -> Reply:
        if match := _ROTATE.match(path):
            secret = self._central.rotate_secret(match[1])
            return json_reply(200, {"name": match[1], "client_secret": secret})
        if match := _EXPIRE.match(path):
            return json_reply(
                200, {"name": match[1], "expired": self._central.expire_tokens(match[1])}
            )
        if match := _EXPIRE_CREDENTIAL.match(path):
            at = _body(req).get("at")
            if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
                raise ValueError("at must be a Unix time or null (now)")
            self._central.expire_credential(match[1], None if at is None else float(at))
            return json_reply(200, {"name": match[1], "expires_at": at})
        if match := _FAULT.match(path):
            fault = _body(req).get("fault")
            if fault is not None and not isinstance(fault, str):
                raise ValueError("fault must be a fault name or null")
            self._central.set_fault(match[1], fault)
            return json_reply(200, {"tenant_id": match[1], "fault": fault})
        if path == "/_simulator/outage":
            on = _body(req).get("on")
            if not isinstance(on, bool):
                raise ValueError('send {"on": true} or {"on": false}')
            self._central.outage = on
            return json_reply(200, {"outage": on})
        return _error(404, f"no admin route {path}")


def _body(req: ApiRequest) -> dict[str, Any]:
    try:
        body = json.loads(req.body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body

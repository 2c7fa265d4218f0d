"""The rogue listener's memory.

A tenant whose ``apiHost`` is ``http://localhost:<port>`` is a stand-in for a host the operator
never allowed. Whatever reaches it is recorded so that a test can prove the agent's bearer token
never did: the check is on what arrived, not on what the agent says it sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.simulator.wire import ApiRequest, Reply, json_reply

MAX_RECORDS = 10_000


@dataclass(frozen=True, slots=True)
class RogueRecord:
    """One request that reached the rogue listener; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]


class RogueLog:
    """Records requests (the first ``MAX_RECORDS``) and answers like a harmless API would."""

    def __init__(self) -> None:
        self.records: list[RogueRecord] = []
        self.total = 0

    def handle(self, req: ApiRequest) -> Reply:
        self.total += 1
        if len(self.records) < MAX_RECORDS:
            self.records.append(RogueRecord(req.method, req.path, dict(req.headers)))
        return json_reply(200, {"items": [], "pages": {"size": 0, "maxSize": 500}})

    @property
    def header_dicts(self) -> list[dict[str, str]]:
        return [dict(r.headers) for r in self.records]

    def authorization_seen(self) -> bool:
        """Whether any recorded request carried an Authorization header."""
        return any("authorization" in r.headers for r in self.records)

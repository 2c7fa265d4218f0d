"""The tenant round-robin: spread evenly, nobody starves, a hanging tenant holds up no one."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from agent.clock import FakeClock
from agent.scheduler import CredentialSchedule, TenantRotation, tick_seconds


def test_every_tenant_is_due_once_per_period_in_even_slots() -> None:
    rotation = TenantRotation()
    rotation.replace([f"t{i}" for i in range(10)])
    seen: list[tuple[float, str]] = []
    for step in range(1, 101):  # 100 ticks of 0.6 s: one 60 s period
        for tenant in rotation.due(0.6, 60.0):
            seen.append((step * 0.6, tenant))
    assert sorted(t for _, t in seen) == sorted(f"t{i}" for i in range(10))
    times = [at for at, _ in seen]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(5.9 <= gap <= 6.1 for gap in gaps), gaps  # 60 s / 10 tenants, no herd


def test_no_tenant_starves_over_many_periods() -> None:
    rotation = TenantRotation()
    rotation.replace([f"t{i}" for i in range(7)])
    counts: Counter[str] = Counter()
    for _ in range(7 * 50):
        counts.update(rotation.due(1.0, 7.0))
    assert set(counts.values()) == {50}


def test_tenant_list_changes_keep_the_rotation_and_drop_departed() -> None:
    rotation = TenantRotation()
    rotation.replace(["a", "b", "c", "d"])
    assert rotation.due(2.0, 4.0) == ["a", "b"]
    rotation.replace(["b", "c", "d", "e"])  # a left, e arrived
    due = rotation.due(4.0, 4.0)
    assert due == ["c", "d", "b", "e"]  # newcomers queue behind those already waiting


def test_slots_held_back_stay_due_come_first_and_add_up_to_one_round_at_most() -> None:
    rotation = TenantRotation()
    rotation.replace(["a", "b", "c", "d"])
    assert rotation.due(2.0, 4.0, limit=0) == []  # the budget has no room: a and b wait
    assert rotation.due(1.0, 4.0, limit=1) == ["a"]  # the held slots go first, in order
    assert rotation.due(0.0, 4.0) == ["b", "c"]  # and the rest as soon as there is room
    rotation.due(40.0, 4.0, limit=0)  # ten periods held: nobody is owed more than one probe
    assert rotation.due(0.0, 4.0) == ["d", "a", "b", "c"]
    assert rotation.due(0.5, 4.0) == []


def test_first_cycle_counts_only_tenants_still_listed() -> None:
    rotation = TenantRotation()
    rotation.replace(["a", "b"])
    assert rotation.pending_first == {"a", "b"}
    rotation.replace(["b"])
    assert rotation.pending_first == {"b"}


@pytest.mark.parametrize(
    ("period", "tenants", "tick"),
    [(60.0, 0, 5.0), (60.0, 1, 5.0), (60.0, 100, 0.6), (60.0, 10_000, 0.2)],
)
def test_tick_follows_the_slot_length_within_bounds(
    period: float, tenants: int, tick: float
) -> None:
    assert tick_seconds(period, tenants) == pytest.approx(tick)


class FakeState:
    def __init__(self, tenants: list[str]) -> None:
        self.probed = {t: object() for t in tenants}
        self.first_cycle_done = False


class FakeProber:
    """Tenant 'hang' never answers; the others answer at once."""

    name = "cred"
    probe_names = ("tenant",)

    def __init__(self, tenants: list[str]) -> None:
        self.state = FakeState(tenants)
        self.probed: list[str] = []
        self.hang = asyncio.Event()

    async def probe_token(self) -> None:
        return None

    async def refresh_tenants(self) -> None:
        return None

    async def probe_tenant(self, tenant_id: str, probe: str = "tenant", priority: int = 10) -> None:
        if tenant_id == "hang":
            await self.hang.wait()
        self.probed.append(tenant_id)


async def test_a_hanging_tenant_does_not_hold_up_the_others() -> None:
    clock = FakeClock()
    prober = FakeProber(["hang", "a", "b", "c"])
    schedule = CredentialSchedule(
        prober,  # type: ignore[arg-type]
        clock,
        period=lambda: 4.0,
        on_refresh=lambda _p: None,
        semaphore=asyncio.Semaphore(8),
    )
    await schedule.run_token()
    await schedule.run_refresh()
    await schedule.run_tick()
    for _ in range(8):  # two periods of 1 s ticks
        await clock.advance(1.0)
        await schedule.run_tick()
        for _ in range(5):
            await asyncio.sleep(0)
    assert Counter(prober.probed) == {"a": 2, "b": 2, "c": 2}
    assert ("hang", "tenant") in schedule.rotation.in_flight  # not started twice while it hangs
    assert not schedule.ready  # the hanging tenant has not finished its first probe
    prober.hang.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert schedule.ready
    await schedule.drain(grace=1.0)


async def test_a_crashing_probe_is_logged_and_does_not_stop_the_rotation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Crashing(FakeProber):
        async def probe_tenant(
            self, tenant_id: str, probe: str = "tenant", priority: int = 10
        ) -> None:
            if tenant_id == "a":
                raise RuntimeError("boom")
            self.probed.append(tenant_id)

    clock = FakeClock()
    prober = Crashing(["a", "b"])
    schedule = CredentialSchedule(
        prober,  # type: ignore[arg-type]
        clock,
        period=lambda: 2.0,
        on_refresh=lambda _p: None,
        semaphore=asyncio.Semaphore(8),
    )
    await schedule.run_token()
    await schedule.run_refresh()
    await schedule.run_tick()
    for _ in range(4):
        await clock.advance(1.0)
        await schedule.run_tick()
        for _ in range(5):
            await asyncio.sleep(0)
    assert prober.probed.count("b") == 2
    assert "tenant probe crashed" in caplog.text
    assert schedule.ready

"""The named scenarios: contents, determinism, validation and the generated agent config."""

from __future__ import annotations

import time

import pytest

from agent.simulator import (
    BASIC_FAULTS,
    CHAOS_FAULTS,
    SCENARIO_NAMES,
    Credential,
    Scenario,
    Simulator,
    Tenant,
    build_scenario,
    tagged,
)
from agent.simulator.faults import check_faults


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_scenario_builds_the_same_way_twice(name: str) -> None:
    first, second = build_scenario(name), build_scenario(name)

    assert [t.id for t in first.tenants()] == [t.id for t in second.tenants()]
    assert [t.name for t in first.tenants()] == [t.name for t in second.tenants()]
    assert [(c.client_id, c.client_secret) for c in first.credentials] == [
        (c.client_id, c.client_secret) for c in second.credentials
    ]
    assert any(not t.name.isascii() for t in first.tenants())


def test_scenarios_differ_from_each_other() -> None:
    ids = {name: {t.id for t in build_scenario(name).tenants()} for name in SCENARIO_NAMES}

    assert not ids["demo"] & ids["healthy"]
    assert not ids["scale-10k"] & ids["scale-20x500"]


def test_demo_has_every_kind_of_outcome() -> None:
    demo = build_scenario("demo")
    msp = demo.credential("msp-main")
    msp_ids = {t.id for t in msp.tenants}

    assert [c.name for c in demo.credentials] == [
        "msp-main",
        "org-main",
        "tenant-direct",
        "revoked-key",
    ]
    assert len(msp.tenants) == 250 and demo.regions == 2
    for fault in BASIC_FAULTS:
        (tenant,) = demo.tenants_with_fault(fault)
        assert tenant.id in msp_ids and tenant.name.endswith(f"[{fault}]")
    assert demo.tenants_with_fault("trial_403")[0].billing_type == "trial"
    assert demo.tenants_with_fault("no_partner_assistance_403")[0].billing_type == "term"
    assert [t.activated for t in tagged(demo, "not_activated")] == [False]
    assert [t.rogue for t in tagged(demo, "rogue_host")] == [True]
    assert demo.credential("org-main").id_type == "organization"
    assert len(demo.credential("org-main").tenants) >= 3
    direct = demo.credential("tenant-direct")
    assert direct.id_type == "tenant" and direct.id == direct.tenants[0].id
    revoked = demo.credential("revoked-key")
    assert revoked.configured_secret != revoked.client_secret


def test_chaos_mixes_every_chaos_fault_with_healthy_tenants() -> None:
    chaos = build_scenario("chaos")
    tenants = list(chaos.tenants())

    assert set(CHAOS_FAULTS) <= set(chaos.faults.values())
    assert sum(1 for t in tenants if t.id not in chaos.faults) > len(tenants) / 2


def test_scale_scenarios_are_large_and_cheap_to_build() -> None:
    started = time.perf_counter()
    ten_k = build_scenario("scale-10k")
    twenty = build_scenario("scale-20x500")
    elapsed = time.perf_counter() - started

    assert [len(c.tenants) for c in ten_k.credentials] == [10_000]
    assert [len(c.tenants) for c in twenty.credentials] == [500] * 20
    assert len({c.name for c in twenty.credentials}) == 20
    assert elapsed < 5


def test_unknown_scenario_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="scale-10k"):
        build_scenario("nope")


def _tiny(**changes: object) -> Scenario:
    tenant = Tenant(id="00000000-0000-4000-8000-000000000001", name="Only")
    cred = Credential("one", "cid", "secret", "partner", "pid", [tenant])
    scenario = Scenario(name="tiny", credentials=[cred])
    for key, value in changes.items():
        setattr(scenario, key, value)
    return scenario


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"faults": {"nope": "reset"}}, "unknown tenant"),
        ({"faults": {"00000000-0000-4000-8000-000000000001": "gremlins"}}, "unknown fault"),
        ({"regions": 0}, "regions"),
        ({"max_page_size": 0}, "max_page_size"),
    ],
)
def test_validation_names_the_problem(changes: dict[str, object], message: str) -> None:
    scenario = _tiny(**changes)
    with pytest.raises(ValueError, match=message):
        scenario.validate()
        check_faults(scenario)


def test_duplicate_credential_names_are_refused() -> None:
    scenario = _tiny()
    scenario.credentials.append(Credential("one", "cid2", "s", "partner", "p2", []))

    with pytest.raises(ValueError, match="duplicate credential name"):
        scenario.validate()


async def test_hand_built_scenario_is_served(start_sim: object) -> None:
    sim = Simulator(_tiny(faults={"00000000-0000-4000-8000-000000000001": "stall"}))
    await sim.start()
    try:
        assert sim.api_host_of("00000000-0000-4000-8000-000000000001") == sim.faulty_url
    finally:
        await sim.stop()


async def test_agent_config_points_at_the_simulator(start_sim: object) -> None:
    sim = Simulator(build_scenario("demo"))
    await sim.start()
    try:
        config = sim.agent_config()
    finally:
        await sim.stop()

    assert config["auth_url"] == sim.auth_url
    assert config["api_url"] == sim.api_url
    assert config["allowed_api_hosts"] == ["127.0.0.1"]
    assert config["rate_limits"] == sim.scenario.rate_limits
    assert config["budget_share"] == 0.5
    assert config["probe_interval"] == "30s"
    by_name = {c["name"]: c for c in config["credentials"]}
    assert set(by_name) == {"msp-main", "org-main", "tenant-direct", "revoked-key"}
    revoked = sim.scenario.credential("revoked-key")
    assert by_name["revoked-key"]["client_secret"] == revoked.configured_secret
    assert by_name["msp-main"]["client_id"] == sim.scenario.credential("msp-main").client_id

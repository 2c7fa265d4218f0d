"""``/status`` in a real browser, as a person sees it: Debian's headless Chromium, driven through
Playwright, loads the page the agent serves while it probes the demo scenario. The tests measure
what is on screen (positions, pixel widths, what a filter leaves visible), not the HTML text.
Chromium is required: without it this test fails, it never skips.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Page, async_playwright

from agent.causes import TABLE
from agent.metricnames import WINDOWS
from agent.simulator import build_scenario, tagged
from tests.e2e.harness import Stack, start_ready_stack, stop_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail(
            "headless Chromium is required for the status page test and was not found: "
            "install Debian's `chromium` package (apt-get install chromium)",
            pytrace=False,
        )
    return found


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its chunks and that its pixels decompress."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + chunk) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert len(zlib.decompress(idat)) > width * height, "pixel data is truncated"
    return width, height


SCREEN = {"width": 1400, "height": 1000}
"""The first screen a person sees on a laptop; the top of the page must answer the question."""

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = await start_ready_stack(
        build_scenario("demo"),
        tmp_path_factory.mktemp("status-browser"),
        within=60,
        probe_interval="5s",
        request_timeout="3s",  # room for a loaded CI machine; "slow" tenants take 8 s or more
    )
    yield running
    await stop_stack(running)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def page(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Page]:
    """The status page in real headless Chromium (Debian's), driven through Playwright."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_binary(), args=list(CHROMIUM_FLAGS[1:]), headless=True
        )
        try:
            tab = await browser.new_page(viewport=SCREEN)
            await tab.goto(stack.base_url + "/status", wait_until="load")
            yield tab
        finally:
            await browser.close()


async def box(page: Page, selector: str) -> dict[str, float]:
    handle = await page.query_selector(selector)
    assert handle is not None, f"nothing on the page matches {selector}"
    found = await handle.bounding_box()
    assert found is not None, f"{selector} is not rendered"
    return dict(found)


async def test_summary_numbers_match_what_the_page_lists(page: Page) -> None:
    stats = await page.eval_on_selector_all(
        "#summary .stat",
        "els => Object.fromEntries(els.map("
        "  e => [e.dataset.stat, parseInt(e.querySelector('b').textContent)]))",
    )
    counts = await page.evaluate(
        """() => ({
          failing: document.querySelectorAll('tr.probe.failure').length
                   + document.querySelectorAll('[data-alert=token]').length,
          business: document.querySelectorAll('tr.probe.business').length,
          not_run: document.querySelectorAll('tr.probe.not_run').length,
          healthy: document.querySelectorAll('tr.probe.ok').length,
        })"""
    )
    assert stats["failing"] == counts["failing"] > 0
    assert stats["business"] == counts["business"] > 0
    assert stats["not_run"] == counts["not_run"] > 0
    assert stats["probes"] == sum(counts.values())
    assert stats["credentials"] == 4


async def test_revoked_credential_and_a_failing_tenant_are_on_the_first_screen(
    page: Page, stack: Stack
) -> None:
    attention = await page.eval_on_selector_all(
        "#attention li",
        "els => els.map(e => [e.dataset.credential, e.dataset.cause, e.textContent])",
    )
    assert attention[0][:2] == ["revoked-key", "invalid_credentials"]
    assert "token issuance fails (401)" in attention[0][2]
    (server_error,) = [a for a in attention if a[1] == "sophos_server_error"]
    (tenant,) = tagged(stack.sim.scenario, "server_error_500")
    assert tenant.name in server_error[2] and tenant.id in server_error[2]
    for selector in (
        "#attention li[data-credential='revoked-key']",
        "#attention li[data-cause='sophos_server_error']",
    ):
        found = await box(page, selector)
        assert found["y"] + found["height"] <= SCREEN["height"], selector
    # The credential without a token is the first section, with its alert said loudly.
    first = await page.eval_on_selector("section.credential", "e => e.dataset.credential")
    assert first == "revoked-key"
    alert = await page.inner_text("section.credential [data-alert=token]")
    assert alert.startswith("No token: token issuance fails (401, oauth.invalid_client_secret).")
    assert TABLE["invalid_credentials"].remedy in alert
    shot = OUTPUT / "status-first-screen.png"
    shot.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(shot))
    print(f"\nfirst screen of /status: {shot}")
    assert png_size(shot.read_bytes()) == (SCREEN["width"], SCREEN["height"])


async def test_failures_are_grouped_by_cause_with_the_remedy_once(page: Page) -> None:
    groups = await page.eval_on_selector_all(
        "section[data-credential='msp-main'] .group",
        """els => els.map(g => ({
          cause: g.dataset.cause, kind: g.dataset.kind,
          remedy: g.querySelector('.remedy').innerText,
          rows: g.querySelectorAll('tr.probe').length }))""",
    )
    causes = [g["cause"] for g in groups]
    assert len(causes) == len(set(causes)), causes
    kinds = [g["kind"] for g in groups]
    assert kinds == sorted(kinds, key=["failure", "business"].index)  # failures first
    network = next(g for g in groups if g["cause"] == "network_error")
    assert network["rows"] == 2  # the slow and the resetting tenant, under one remedy
    for group in groups:
        assert "`" not in group["remedy"]  # code spans render as code, not raw Markdown
    trial = next(g for g in groups if g["cause"] == "trial_account")
    assert trial["kind"] == "business" and "not an outage" in trial["remedy"]


async def test_tenant_ids_do_not_wrap(page: Page) -> None:
    heights = await page.eval_on_selector_all(
        "tr.probe td.id, #attention span.id",
        "els => els.filter(e => e.offsetParent).map(e => e.getBoundingClientRect().height)",
    )
    assert heights and max(heights) < 2 * min(heights)


async def test_rate_window_bars_fill_to_their_share_in_pixels(page: Page) -> None:
    bars = await page.eval_on_selector_all(
        "table.budget tr[data-window]",
        """rows => rows.map(r => ({
          section: r.closest('section').dataset.credential, window: r.dataset.window,
          bar: r.querySelector('.bar').getBoundingClientRect().width,
          fill: r.querySelector('.fill').getBoundingClientRect().width,
          shown: parseFloat(r.lastElementChild.textContent) }))""",
    )
    assert [b["window"] for b in bars[:4]] == list(WINDOWS)
    assert len(bars) == 4 * len(WINDOWS)
    for bar in bars:
        assert bar["bar"] > 100, bar
        assert abs(bar["fill"] - bar["bar"] * min(bar["shown"], 100) / 100) <= 1.5, bar
    busiest = max(bars, key=lambda b: b["shown"])
    assert busiest["shown"] > 1.0 and busiest["fill"] >= 2, busiest


async def test_healthy_rows_are_collapsed_and_the_filter_finds_a_tenant(
    page: Page, stack: Stack
) -> None:
    assert await page.locator("details.healthy tr.probe").first.is_hidden()
    (tenant,) = tagged(stack.sim.scenario, "html_502")
    await page.fill("#filter", tenant.id)
    visible = await page.eval_on_selector_all(
        "tr.probe", "els => els.filter(e => e.offsetParent !== null).map(e => e.dataset.tenant)"
    )
    assert visible == [tenant.id]
    await page.fill("#filter", "")
    assert await page.locator(f"tr.probe[data-tenant='{tenant.id}']").is_visible()


async def test_status_page_references_no_external_assets(page: Page) -> None:
    refs = await page.evaluate(
        """() => Array.from(document.querySelectorAll('[src],[href],link,img,iframe,object,embed'))
                 .map(e => e.getAttribute('src') || e.getAttribute('href') || e.tagName)"""
    )
    assert all(ref.startswith("/") or ref.startswith("#") for ref in refs), refs
    css = await page.evaluate(
        "() => Array.from(document.styleSheets)"
        "  .map(s => Array.from(s.cssRules).map(r => r.cssText).join(''))"
    )
    assert all("url(" not in sheet and "@import" not in sheet for sheet in css)


async def test_status_page_refreshes_itself(page: Page) -> None:
    refresh = await page.get_attribute("meta[http-equiv=refresh]", "content")
    assert refresh is not None and int(refresh) > 0


async def new_tab(page: Page) -> Page:
    """A page of its own (its own session storage), in the module's browser."""
    browser = page.context.browser
    assert browser is not None
    return await browser.new_page(viewport=SCREEN)


async def test_a_link_from_an_alert_shows_its_credential_and_tenant(
    page: Page, stack: Stack
) -> None:
    """``/status?credential=NAME&tenant=ID`` (an alert's status_url) shows that credential only,
    the filter set to the tenant; typing keeps the address in step (the page's refresh reloads
    it), and "Show every credential" brings the rest back."""
    (tenant,) = tagged(stack.sim.scenario, "html_502")
    credential = next(
        c.name for c in stack.sim.scenario.credentials if any(t.id == tenant.id for t in c.tenants)
    )
    tab = await new_tab(page)
    try:
        await tab.goto(
            f"{stack.base_url}/status?credential={credential}&tenant={tenant.id}", wait_until="load"
        )
        assert await tab.input_value("#filter") == tenant.id
        sections = await tab.eval_on_selector_all(
            "section.credential",
            "els => els.filter(e => e.offsetParent !== null).map(e => e.dataset.credential)",
        )
        assert sections == [credential]
        rows = await tab.eval_on_selector_all(
            "tr.probe",
            "els => els.filter(e => e.offsetParent !== null).map(e => e.dataset.tenant)",
        )
        assert rows == [tenant.id]
        attention = await tab.eval_on_selector_all(
            "#attention li",
            "els => els.filter(e => e.offsetParent !== null).map(e => e.dataset.credential)",
        )
        assert attention and set(attention) == {credential}
        assert await tab.is_visible("#scope")
        assert await tab.inner_text("#scope b") == credential
        # The row is on the first screen, where the person who clicked the link looks.
        found = await box(tab, f"tr.probe[data-tenant='{tenant.id}']")
        assert found["y"] + found["height"] <= SCREEN["height"]

        await tab.fill("#filter", "no-such-tenant")
        query = await tab.evaluate("() => location.search")
        assert query == f"?credential={credential}&tenant=no-such-tenant"

        await tab.click("#show-all")
        assert await tab.evaluate("() => location.search") == ""
        shown = await tab.eval_on_selector_all(
            "section.credential", "els => els.filter(e => e.offsetParent !== null).length"
        )
        assert shown == 4 and not await tab.is_visible("#scope")
        assert await tab.input_value("#filter") == ""
    finally:
        await tab.close()


async def test_a_link_to_a_credential_this_exporter_does_not_have_says_so(
    page: Page, stack: Stack
) -> None:
    tab = await new_tab(page)
    try:
        await tab.goto(f"{stack.base_url}/status?credential=elsewhere", wait_until="load")
        assert await tab.is_visible("#scope .absent")
        assert "Showing credential elsewhere only (not on this exporter)." in await tab.inner_text(
            "#scope"
        )
    finally:
        await tab.close()

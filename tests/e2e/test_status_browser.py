"""``/status`` in a real browser: Debian's headless Chromium loads the page the agent serves while
it probes the demo scenario, and the DOM it builds carries the rows, remedies and rate bars an
on-call engineer looks for. Chromium is required: without it this test fails, it never skips.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import pytest_asyncio

from agent.diagnosis import REMEDIES
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
CHROMIUM_TIMEOUT = 60.0
_PROFILES = itertools.count()


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


async def chromium(tmp: Path, *args: str) -> bytes:
    """Run headless Chromium with a fresh profile; its stdout, or a failure naming why."""
    profile = tmp / f"profile-{next(_PROFILES)}"
    process = await asyncio.create_subprocess_exec(
        chromium_binary(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHROMIUM_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT} s: {args}")
    assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]
    return stdout


@dataclass
class Row:
    section: str
    attrs: dict[str, str]
    cells: list[str] = field(default_factory=list)


class StatusDom(HTMLParser):
    """The parts of the dumped DOM the test checks: rows by credential section, links, metas."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.section = ""
        self.rows: list[Row] = []
        self.metas: list[dict[str, str]] = []
        self.references: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.styles: list[str] = []
        self.title = ""
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self._in.append(tag)
        if tag == "h2" and values.get("id", "").startswith("credential-"):
            self.section = values["id"].removeprefix("credential-")
        elif tag == "tr":
            self.rows.append(Row(self.section, values))
        elif tag == "td" and self.rows:
            self.rows[-1].cells.append("")
        elif tag == "meta":
            self.metas.append(values)
        for name in ("href", "src", "action", "srcset", "poster", "data"):
            if name in values:
                self.references.append((tag, name, values[name]))
        if "style" in values:
            self.styles.append(values["style"])

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if "title" in self._in:
            self.title += data
        elif "style" in self._in:
            self.styles.append(data)
        elif "td" in self._in and self.rows and self.rows[-1].cells:
            self.rows[-1].cells[-1] += data


def parse_dom(text: str) -> StatusDom:
    dom = StatusDom()
    dom.feed(text)
    dom.close()
    return dom


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


def read_screenshot(path: Path) -> bytes:
    assert path.exists(), "chromium wrote no screenshot"
    return path.read_bytes()


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
async def dom(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> StatusDom:
    out = await chromium(
        tmp_path_factory.mktemp("chromium"), "--dump-dom", stack.base_url + "/status"
    )
    return parse_dom(out.decode("utf-8"))


async def test_status_page_loads_in_chromium(dom: StatusDom) -> None:
    assert dom.title == "Sophos Central Exporter: status"
    assert {"table", "h1", "h2"} <= dom.tags
    sections = {row.section for row in dom.rows}
    assert sections == {"msp-main", "org-main", "tenant-direct", "revoked-key"}


async def test_trial_tenant_403_is_shown_as_business_state_with_its_remedy(
    dom: StatusDom, stack: Stack
) -> None:
    (trial,) = tagged(stack.sim.scenario, "trial_403")
    (row,) = [r for r in dom.rows if r.attrs.get("data-tenant") == trial.id]
    assert row.section == "msp-main"
    assert row.attrs["data-cause"] == "trial_account"
    assert "business" in row.attrs["class"].split()
    probe, name, tenant_id, status, error_code, cause, remedy, age = row.cells
    assert (probe, name, tenant_id, status) == ("tenant", trial.name, trial.id, "403")
    assert (error_code, cause) == ("forbidden", "trial_account")  # as the simulator spells it
    assert remedy == REMEDIES["trial_account"]
    assert "not an outage" in remedy
    assert age.endswith(" ago")


async def test_revoked_credential_token_row_says_invalid_credentials(dom: StatusDom) -> None:
    rows = [r for r in dom.rows if r.section == "revoked-key" and r.cells[:1] == ["token"]]
    assert len(rows) == 1, rows
    (row,) = rows
    assert row.attrs["data-cause"] == "invalid_credentials"
    assert row.cells[3:6] == ["401", "oauth.invalid_client_secret", "invalid_credentials"]
    assert row.cells[6] == REMEDIES["invalid_credentials"]


async def test_every_credential_has_a_bar_for_each_rate_window(dom: StatusDom) -> None:
    for section in ("msp-main", "org-main", "tenant-direct", "revoked-key"):
        windows = [
            r.attrs["data-window"]
            for r in dom.rows
            if r.section == section and "data-window" in r.attrs
        ]
        assert windows == list(WINDOWS), section
    bars = [s for s in dom.styles if s.startswith("width:")]
    assert len(bars) == 4 * len(WINDOWS)
    msp_minute = next(
        r for r in dom.rows if r.section == "msp-main" and r.attrs.get("data-window") == "1m"
    )
    window, calls, allowance, limit, utilization = msp_minute.cells
    assert window == "1m" and int(calls) > 250
    assert int(allowance) == int(limit) == 60_000  # budget_share 1.0
    assert utilization.strip().endswith("%")


async def test_status_page_references_no_external_assets(dom: StatusDom) -> None:
    assert not {"script", "link", "img", "iframe", "object", "embed"} & dom.tags
    external = [ref for ref in dom.references if not ref[2].startswith("/")]
    assert external == []
    assert all("url(" not in s and "@import" not in s for s in dom.styles)


async def test_status_page_refreshes_itself(dom: StatusDom) -> None:
    refresh = [m for m in dom.metas if m.get("http-equiv", "").lower() == "refresh"]
    assert len(refresh) == 1
    assert int(refresh[0]["content"]) > 0


async def test_chromium_renders_a_screenshot_of_the_status_page(
    stack: Stack, tmp_path: Path
) -> None:
    shot = Path(os.environ.get("SOPHOS_STATUS_SCREENSHOT", tmp_path / "status.png"))
    await chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1400,2000", stack.base_url + "/status"
    )
    data = read_screenshot(shot)
    assert png_size(data) == (1400, 2000)
    # A blank page of this size compresses to about 13 KB; tables of text make it far larger.
    print(f"\nstatus.png: {len(data)} bytes")
    assert len(data) > 60_000, f"screenshot is suspiciously small ({len(data)} bytes)"

"""The documentation site as a reader sees it: built strictly (a broken link or reference
fails), served locally, opened in a headless Chromium (Debian's, driven by Playwright):
every page renders with no console error, search finds an option by name, and the home
page looks as its reference screenshot does.

Collected only with PYPER_WITH_DOCS=1 (tests/run.sh sets it after installing the docs
extra and finding Chromium). ``PYPER_UPDATE_SCREENSHOT=1`` rewrites the reference.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(__file__).resolve().parent / "site" / "home.png"
CHROMIUM = os.environ.get("PYPER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 720}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Build the site strictly and serve it on a local port: its address."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="docs-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, leaks: Any) -> Iterator[Any]:
    """A fresh page that records console errors, page errors and failed requests."""
    leaks.ignore_fds("socket:", "pipe:")  # the browser's pipes and sockets come and go with its own work
    context = browser.new_context(viewport=VIEWPORT)
    new = context.new_page()
    new.problems = []
    new.on("console", lambda m: new.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    new.on("pageerror", lambda e: new.problems.append(f"page error: {e}"))
    new.on("requestfailed", lambda r: new.problems.append(f"request failed: {r.url}"))
    try:
        yield new
    finally:
        context.close()


PAGES = ["", "guide/concepts/", "guide/composing/", "guide/executors/", "guide/errors/",
         "guide/real-work/", "guide/observability/", "guide/differences/", "reference/", "examples/"]


@pytest.mark.timeout(120)
def test_every_page_renders_without_console_errors(site: str, page: Any) -> None:
    for path in PAGES:
        response = page.goto(f"{site}/{path}", wait_until="networkidle")
        assert response is not None and response.status == 200, path
        heading = page.locator("article h1").first.inner_text()
        assert heading, f"{path}: no heading"
        assert page.locator("article pre").count() or path == "guide/differences/" or path == "reference/", path
    assert page.problems == []


@pytest.mark.timeout(60)
def test_the_pictures_load(site: str, page: Any) -> None:
    for path in ["", "guide/observability/"]:
        page.goto(f"{site}/{path}", wait_until="networkidle")
        images = page.locator("article img")
        assert images.count() >= 1, path
        for i in range(images.count()):
            width = images.nth(i).evaluate("img => img.naturalWidth")
            assert width > 100, (path, images.nth(i).get_attribute("src"))
    assert page.problems == []


@pytest.mark.timeout(60)
def test_the_reference_documents_the_options(site: str, page: Any) -> None:
    page.goto(f"{site}/reference/", wait_until="networkidle")
    text = page.locator("article").inner_text()
    for name in ("task", "Pipeline", "AsyncPipeline", "observe", "progress", "gather", "Rate", "Emit"):
        assert name in text, name
    parameters = page.locator("article table").first.inner_text()  # task(...)'s, from its docstring
    for option in ("workers", "throttle", "multiprocess", "on_error", "linger", "timeout", "ray_options"):
        assert option in parameters, option
    assert page.problems == []


@pytest.mark.timeout(60)
def test_search_finds_an_option_by_name(site: str, page: Any) -> None:
    page.goto(f"{site}/", wait_until="networkidle")
    page.keyboard.press("s")  # the site's shortcut to the search box
    page.keyboard.type("linger", delay=30)
    page.wait_for_selector(".md-search-result__item", timeout=10_000)
    results = page.locator(".md-search-result__item").all_inner_texts()
    assert any("Resources and policies" in r for r in results), results
    assert page.problems == []


@pytest.mark.timeout(60)
def test_the_home_page_looks_as_its_screenshot(site: str, page: Any, tmp_path: Path) -> None:
    page.goto(f"{site}/", wait_until="networkidle")
    shot = tmp_path / "home.png"
    shot.write_bytes(page.screenshot())  # bytes: Playwright writes no file from a thread of its own
    width, height, pixels = read_png(shot.read_bytes())
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])
    header = pixels[10 * width + width // 2]
    assert header[2] > header[0] + 60 and header[2] > header[1] + 60, header  # the indigo header bar
    assert len(set(pixels[width * 100:])) > 50  # text and code, not a blank page
    if os.environ.get("PYPER_UPDATE_SCREENSHOT") or not REFERENCE.exists():
        REFERENCE.parent.mkdir(exist_ok=True)
        shutil.copy(shot, REFERENCE)
    ref_width, ref_height, reference = read_png(REFERENCE.read_bytes())
    assert (ref_width, ref_height) == (width, height)
    differing = sum(1 for a, b in zip(pixels, reference) if max(abs(x - y) for x, y in zip(a, b)) > 48)
    assert differing / len(pixels) < 0.02, (
        f"{differing / len(pixels):.1%} of the home page's pixels differ from tests/site/home.png "
        "(if the page changed on purpose: PYPER_UPDATE_SCREENSHOT=1)")


def read_png(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """(width, height, RGB pixels row by row) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and not interlace, (depth, color, interlace)
    step = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * step
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - step] if i >= step else 0
            up, corner = previous[i], previous[i - step] if i >= step else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(line)
        previous = line
    pixels = [tuple(row[x * step:x * step + 3]) for row in rows for x in range(width)]
    return width, height, pixels

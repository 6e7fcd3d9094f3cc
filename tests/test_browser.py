"""One real-browser test: `streamlit run app.py` + Debian's headless Chromium driven by Playwright.

Uploads a PNG and a DICOM on the Predict page, waits for both probabilities and Grad-CAM overlays,
and saves a screenshot to test-artifacts/. Without /usr/bin/chromium the test skips locally and
FAILS on CI (env CI set), so CI cannot go green without having run it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from conftest import synthetic_film
from conftest_io_helpers import make_dicom
from PIL import Image

from bench.bench_app_browser import DONE as RESULT_DRAWN
from bench.common import (
    BOX_DRAWN_JS,
    CHROMIUM,
    CHROMIUM_ARGS,
    start_streamlit,
    stop_streamlit,
)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def require_chromium() -> None:
    if Path(CHROMIUM).is_file():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing on CI: install Debian's chromium (see .ci/run).")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI runs this test.")


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def dicom_bytes(pixels: np.ndarray) -> bytes:
    """A 12-bit MONOCHROME2 DX film with patient identifiers the app must never show."""
    return make_dicom((np.clip(pixels, 0, 1) * 4095).astype(np.uint16), "MONOCHROME2", 12,
                      PatientName="Browser^Secret", PatientID="ID-BROWSER-777", PatientAge="003Y", PatientSex="M")


@contextmanager
def served_browser(weights_root: Path, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """The app served on ``weights_root`` (as ``make run`` serves it) and headless Chromium: (browser, url).
    Both are stopped however the test ends."""
    from playwright.sync_api import sync_playwright

    proc, url = start_streamlit(weights_root, tmp_path / "streamlit.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield browser, url
            finally:
                browser.close()
    finally:
        stop_streamlit(proc)


@pytest.fixture()
def weights_root(tmp_path, tiny_model_dir) -> Path:
    root = tmp_path / "weights"
    shutil.copytree(tiny_model_dir, root / "tiny")
    (root / "ACTIVE").write_text("tiny\n")
    return root


def test_upload_png_and_dicom_shows_probabilities_and_overlays(weights_root, tmp_path):
    require_chromium()
    from playwright.sync_api import expect

    rng = np.random.default_rng(7)
    files = [{"name": "film.png", "mimeType": "image/png", "buffer": png_bytes(synthetic_film(rng, True, 320))},
             {"name": "study.dcm", "mimeType": "application/dicom",
              "buffer": dicom_bytes(synthetic_film(rng, False, 288))}]
    ARTIFACTS.mkdir(exist_ok=True)
    with served_browser(weights_root, tmp_path) as (browser, url):
        page = browser.new_page(viewport={"width": 1500, "height": 2000})
        page.goto(url, wait_until="domcontentloaded")
        # the landing (issue #16, item 1): name, purpose, users, limits and the upload box in one screen
        page.set_viewport_size({"width": 1400, "height": 1000})
        dropzone = page.locator('[data-testid="stFileUploaderDropzone"]')
        expect(dropzone).to_be_visible(timeout=90_000)
        page.wait_for_timeout(500)
        landing_bottom = dropzone.bounding_box()["y"] + dropzone.bounding_box()["height"]
        landing = page.locator('[data-testid="stMain"]').inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser_landing.png"))
        page.set_viewport_size({"width": 1500, "height": 2000})
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files, timeout=60_000)
        metrics = page.locator('[data-testid="stMetricValue"]')
        expect(metrics).to_have_count(2, timeout=90_000)
        expect(page.get_by_text("a relative map", exact=False)).to_have_count(2, timeout=30_000)
        page.wait_for_function(  # film + overlay for each file, drawn by plotly
            "() => document.querySelectorAll('[data-testid=stPlotlyChart] .imagelayer image').length >= 4",
            timeout=60_000)
        probabilities = metrics.all_inner_texts()
        body = page.inner_text("body")
        zoomed, windowed = zoom_and_window(page)
        page.screenshot(path=str(ARTIFACTS / "browser_predict.png"), full_page=True)
        with page.expect_download(timeout=60_000) as dl:     # the first film's report (issue #16, item 6)
            page.get_by_role("button", name="PDF report").first.click()
        report = Path(dl.value.path()).read_bytes()
    assert zoomed and windowed
    assert landing_bottom < 1000, landing_bottom                       # the way in, without scrolling
    for words in ("Pneumonia decision support", "For whom", "children", "Its limits", "not a diagnosis"):
        assert words in landing, words
    assert all(t.strip().endswith("%") for t in probabilities), probabilities
    assert "DX" in body and "MONOCHROME2" in body            # the DICOM's metadata panel
    assert "Browser^Secret" not in body and "ID-BROWSER-777" not in body and "Secret" not in body
    assert "Traceback" not in body
    assert (ARTIFACTS / "browser_predict.png").stat().st_size > 10_000
    # The report names the film by the sha256 the audit log recorded its prediction under.
    from test_app_units import pdf_text

    from pneumo_core.ops import audit

    text = pdf_text(report)
    digest = re.search(r"sha256 ([0-9a-f]{64})", text).group(1)
    reported = next(f for f in files if f"File: {f['name']}" in text)     # the film shown first (the newest)
    assert reported["name"] == "study.dcm" and digest == hashlib.sha256(reported["buffer"]).hexdigest()
    logged = [e for e in audit.events(newest_first=False) if e["input_sha256"] == digest]
    assert [e["action"] for e in logged] == ["predict"] and logged[0]["result"] in ("PNEUMONIA", "NORMAL")


def zoom_and_window(page) -> tuple[bool, bool]:
    """Issue #16, item 2, in the browser: the wheel zooms the first viewer (its axes' range and the pixels shown
    change), and the Bone window preset changes the film drawn (a new image, from the server's float pixels)."""
    from playwright.sync_api import expect

    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.scroll_into_view_if_needed()
    plot = chart.locator(".js-plotly-plot")
    x_range = "p => JSON.stringify(p._fullLayout.xaxis.range)"
    before_range, before_px = plot.evaluate(x_range), chart.screenshot()
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
    for _ in range(3):
        page.mouse.wheel(0, -300)
        page.wait_for_timeout(300)
    page.wait_for_timeout(800)
    zoomed = plot.evaluate(x_range) != before_range and chart.screenshot() != before_px
    film_href = "p => p.querySelector('.imagelayer image').getAttribute('href')"
    before_film = plot.evaluate(film_href)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Window").first.click()
    page.get_by_role("option", name="Bone").click()
    page.wait_for_function(
        "([old]) => { const i = document.querySelector('[data-testid=stPlotlyChart] .imagelayer image');"
        " return i && i.getAttribute('href') !== old; }", arg=[before_film], timeout=60_000)
    expect(chart).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "browser_viewer_bone.png"))
    return zoomed, plot.evaluate(film_href) != before_film


def test_roles_in_a_real_server_direct_url_then_admin_sign_in(weights_root, tmp_path):
    """A viewer who types /retrain on a freshly started server gets the "for administrators" page (not
    Streamlit's "Page not found"), no admin widget and no admin page in the menu, and the refusal is audited
    (issue #17, item 5); the admin password typed into the sidebar opens Retrain and the Audit log; the audit
    log records both, without names."""
    require_chromium()
    from conftest_app_helpers import ADMIN_PASSWORD, set_password
    from playwright.sync_api import expect

    from pneumo_core.ops import audit

    set_password()
    ARTIFACTS.mkdir(exist_ok=True)
    with served_browser(weights_root, tmp_path) as (browser, url):
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{url}/retrain", wait_until="domcontentloaded")     # the first request of the server
        expect(page.get_by_text("This page is for administrators", exact=False)).to_be_visible(
            timeout=90_000)
        viewer_body = page.inner_text("body")
        sidebar = page.locator('[data-testid="stSidebar"]')
        viewer_menu = sidebar.locator('[data-testid="stSidebarNav"]').inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser_viewer_refused.png"), full_page=True)
        sidebar.get_by_text("Admin sign-in").click()
        sidebar.get_by_label("Admin password").fill(ADMIN_PASSWORD)
        sidebar.get_by_role("button", name="Sign in").click()
        expect(sidebar.get_by_text("Admin session", exact=False)).to_be_visible(timeout=60_000)
        page.get_by_role("link", name="Retrain").click()
        expect(page.get_by_text("Model versions")).to_be_visible(timeout=60_000)
        page.get_by_role("link", name="Audit log").click()
        expect(page.get_by_text("Hash chain intact", exact=False)).to_be_visible(timeout=60_000)
    assert "Start training" not in viewer_body and "Model versions" not in viewer_body
    assert "Traceback" not in viewer_body and "Page not found" not in viewer_body
    assert "Predict" in viewer_menu and "Retrain" not in viewer_menu and "Audit log" not in viewer_menu
    events = audit.events(newest_first=False)
    actions = [(e["action"], e["result"]) for e in events]
    assert ("sign_in", "succeeded") in actions
    refused = [(e["role"], e["detail"]) for e in events if (e["action"], e["result"]) == ("open_page", "denied")]
    assert refused == [("viewer", "retrain")]


def click_worklist_row(page, row: int) -> None:
    """Tick a row's selection box in the worklist (a canvas grid: the row marker sits at its left edge)."""
    from appkit.triage_ui import HEADER_PX, ROW_PX

    box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(box["x"] + 14, box["y"] + HEADER_PX + ROW_PX * row + ROW_PX / 2)


def test_triage_detail_opens_in_view_with_next_previous_and_the_csv_columns(weights_root, tmp_path):
    """Issue #16, item 5: selecting a worklist row opens the detail in view (a dialog), Previous/Next move along
    three films; the CSV names films by sha256 and carries file names only when the box is ticked."""
    require_chromium()
    import csv

    from playwright.sync_api import expect

    from appkit.triage import CSV_COLUMNS

    rng = np.random.default_rng(11)
    names = ["one.png", "two.png", "three.png"]
    files = [{"name": n, "mimeType": "image/png", "buffer": png_bytes(synthetic_film(rng, i != 1, 256))}
             for i, n in enumerate(names)]
    ARTIFACTS.mkdir(exist_ok=True)
    with served_browser(weights_root, tmp_path) as (browser, url):
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(f"{url}/triage", wait_until="domcontentloaded")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files, timeout=60_000)
        expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible(timeout=90_000)
        csvs = []
        for tick in (False, True):
            if tick:
                page.get_by_text("Include file names").click()
                page.wait_for_timeout(1500)
            with page.expect_download(timeout=30_000) as dl:
                page.get_by_role("button", name="Worklist CSV").click()
            csvs.append(Path(dl.value.path()).read_text(encoding="utf-8"))
        page.wait_for_timeout(1000)
        click_worklist_row(page, 0)
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible(timeout=60_000)
        expect(dialog.get_by_text("Film 1 of 3", exact=False)).to_be_visible(timeout=60_000)
        box = dialog.bounding_box()
        heading = dialog.locator("h5").first
        headings = [heading.inner_text(timeout=60_000)]
        for step, at in (("Next", 2), ("n", 3), ("p", 2)):          # a click, then the keyboard shortcuts
            if len(step) == 1:
                page.keyboard.press(step)
            else:
                dialog.get_by_role("button", name=step).click()
            expect(dialog.get_by_text(f"Film {at} of 3", exact=False)).to_be_visible(timeout=60_000)
            expect(heading).not_to_have_text(headings[-1], timeout=60_000)
            headings.append(heading.inner_text())
        where = dialog.get_by_text("in the worklist", exact=False).inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser_triage_detail.png"))
    assert box["y"] < 1000 and box["y"] + 200 < 1000 + 1          # the dialog's top is on screen, not far below
    assert "Film 2 of 3" in where
    assert sorted(headings[:3]) == sorted(names) and headings[3] == headings[1]     # three films, then back one
    plain, named = (list(csv.DictReader(io.StringIO(t))) for t in csvs)
    assert tuple(plain[0]) == CSV_COLUMNS and tuple(named[0]) == ("file", *CSV_COLUMNS)
    assert not any(n in csvs[0] for n in names) and sorted(r["file"] for r in named) == sorted(names)
    assert all(len(r["sha256"]) == 64 for r in plain)


CHIP_BOXES = """() => { const box = document.querySelector('[data-testid=stFileChips]').getBoundingClientRect();
  return [...document.querySelectorAll('[data-testid=stFileChip]')].map(c => { const r = c.getBoundingClientRect();
    return [r.top - box.top, r.bottom - box.top, box.height]; }); }"""


def test_upload_box_shows_whole_rows_of_file_chips(weights_root, tmp_path):
    """Issue #16: with many files, the upload box showed its file chips cut through the middle of a row. Each
    chip is now wholly in view or wholly out of it (the box scrolls by rows), before and after a scroll."""
    require_chromium()
    from playwright.sync_api import expect

    rng = np.random.default_rng(2)
    files = [{"name": f"film_{i:02d}.png", "mimeType": "image/png", "buffer": png_bytes(synthetic_film(rng, True, 64))}
             for i in range(20)]
    with served_browser(weights_root, tmp_path) as (browser, url):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/triage", wait_until="domcontentloaded")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files, timeout=60_000)
        expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible(timeout=90_000)
        views = [page.evaluate(CHIP_BOXES)]
        page.locator('[data-testid="stFileChips"]').hover()
        page.mouse.wheel(0, 30)
        page.wait_for_timeout(1500)
        views.append(page.evaluate(CHIP_BOXES))
    for view in views:
        assert len(view) == 20
        assert all(bottom <= height + 1.5 or top >= height - 1.5 for top, bottom, height in view), view
        assert all(top >= -1.5 or bottom <= 1.5 for top, bottom, _ in view), view
    assert any(top >= height - 1.5 for top, _, height in views[0])      # more rows than fit: the box scrolls...
    assert views[1][0][0] < 0                                            # ...and the scroll moved it by a row


# Per element: the start times (ms since navigation) of the fetches of its Streamlit code file.
CODE_FETCHES = ("() => Object.fromEntries(['PlotlyChart', 'Metric', 'Slider'].map(n => [n, "
                "performance.getEntriesByType('resource').filter(e => e.name.includes(`/${n}.`))"
                ".map(e => e.startTime)]))")
# The upload box's container and the first one below it with something to show: (bottom, top, the column's
# gap). A container of zero height still shown would stand between them with a gap of its own.
BELOW_THE_BOX = """() => {
  const box = document.querySelector('[data-testid=stFileUploader]').closest('[data-testid=stElementContainer]');
  let next = box.nextElementSibling;
  while (next && next.getBoundingClientRect().height === 0) next = next.nextElementSibling;
  return [box.getBoundingClientRect().bottom, next.getBoundingClientRect().top,
          parseFloat(getComputedStyle(box.parentElement).rowGap)];
}"""


def test_result_code_loads_once_the_upload_box_is_drawn_and_serves_the_first_film(weights_root, tmp_path):
    """Issue #16, speed: the browser fetches the code of a result's elements (plotly's chart, the metric, the
    sliders) after drawing the upload box and before any upload, and the script that asks for it takes no
    room under the box; the first film's result then uses that code (one fetch of each in all: a second would
    mean the page had loaded a copy Streamlit does not use)."""
    require_chromium()
    from playwright.sync_api import expect

    film = png_bytes(synthetic_film(np.random.default_rng(3), True, 256))
    with served_browser(weights_root, tmp_path) as (browser, url):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(BOX_DRAWN_JS)
        page.goto(url, wait_until="domcontentloaded")
        expect(page.locator('[data-testid="stFileUploaderDropzone"]')).to_be_visible(timeout=90_000)
        page.wait_for_function(f"() => Object.values(({CODE_FETCHES})()).every(t => t.length >= 1)",
                               timeout=60_000)
        before_upload, box_at = page.evaluate(CODE_FETCHES), page.evaluate("() => window.__boxAt")
        box_bottom, next_top, gap = page.evaluate(BELOW_THE_BOX)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
            {"name": "film.png", "mimeType": "image/png", "buffer": film}, timeout=60_000)
        page.wait_for_function(RESULT_DRAWN, timeout=90_000)        # the probability and both viewer images
        expect(page.locator('[data-testid="stMetricValue"]')).to_have_count(1, timeout=30_000)
        in_all = page.evaluate(CODE_FETCHES)
    assert all(len(t) == 1 and t[0] >= box_at for t in before_upload.values()), (before_upload, box_at)
    assert abs(next_top - box_bottom - gap) < 1, (box_bottom, next_top, gap)
    assert {n: len(t) for n, t in in_all.items()} == {"PlotlyChart": 1, "Metric": 1, "Slider": 1}


def test_predict_newest_film_in_view_and_previous_next_across_three_films(weights_root, tmp_path):
    """Issue #16, item 3: after uploading three films the newest one's result is on screen below the upload
    box, and Previous/Next (clicked, or their keys P and N) bring each film first."""
    require_chromium()
    from playwright.sync_api import expect

    rng = np.random.default_rng(5)
    names = ["first.png", "second.png", "third.png"]
    files = [{"name": n, "mimeType": "image/png", "buffer": png_bytes(synthetic_film(rng, i != 1, 256))}
             for i, n in enumerate(names)]
    with served_browser(weights_root, tmp_path) as (browser, url):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files, timeout=90_000)
        expect(page.locator('[data-testid="stMetricValue"]')).to_have_count(3, timeout=120_000)
        heading = page.locator('[data-testid="stMain"] h5').first
        seen = [heading.inner_text()]
        top = heading.bounding_box()["y"]
        for step in ("Previous", "p", "n"):              # a click, then the buttons' keyboard shortcuts
            if len(step) == 1:
                page.keyboard.press(step)
            else:
                page.get_by_role("button", name=re.compile(f"^{step}\\b")).click()      # its name ends in the key
            expect(heading).not_to_have_text(seen[-1], timeout=60_000)
            seen.append(heading.inner_text())
        page.screenshot(path=str(ARTIFACTS / "browser_predict_three.png"))
    assert 0 < top < 1000                                    # the newest film's result is on screen
    assert seen == ["third.png", "second.png", "first.png", "second.png"]


def test_light_and_dark_themes_follow_the_system_on_every_page(weights_root, tmp_path):
    """Issue #16, item 8: no forced light theme; the app follows the system (and a user can choose in Settings).
    Screenshots of each page in both themes go to test-artifacts/."""
    require_chromium()
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    background = ("() => getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor"
                  ".match(/\\d+/g).slice(0, 3).map(Number)")
    seen: dict[tuple[str, str], list[int]] = {}
    with served_browser(weights_root, tmp_path) as (browser, url):
        for scheme in ("light", "dark"):
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
            for name, path in (("predict", ""), ("triage", "/triage"), ("metrics", "/metrics")):
                page.goto(f"{url}{path}", wait_until="domcontentloaded")
                expect(page.locator('[data-testid="stSidebar"]').get_by_text("Version")).to_be_visible(
                    timeout=90_000)
                page.wait_for_timeout(1500)
                seen[(scheme, name)] = page.evaluate(background)
                page.screenshot(path=str(ARTIFACTS / f"browser_{name}_{scheme}.png"))
            page.close()
    for (scheme, name), rgb in seen.items():
        assert (sum(rgb) / 3 > 200) if scheme == "light" else (sum(rgb) / 3 < 60), (scheme, name, rgb)

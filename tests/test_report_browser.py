"""Open report.html in headless Chromium and check that every image really loaded."""

from __future__ import annotations

import shutil

import pytest
from _eval_runs import trained_run

from resnetlab.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="chromium / chromedriver not installed (Debian: apt-get install chromium chromium-driver; .ci/run does it)",
    ),
]


@pytest.fixture
def browser(tmp_path):
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


_IMAGES_JS = """
return Array.from(document.images).map(function (im) {
  return {src: im.src.slice(0, 30), complete: im.complete, w: im.naturalWidth, h: im.naturalHeight};
});
"""


def test_every_image_in_report_html_loads(tmp_path, browser):
    run = trained_run(tmp_path)
    html_path, _ = build_report(run)
    # Move the report away from its run folder: a self-contained page must not need it.
    alone = tmp_path / "alone.html"
    alone.write_bytes(html_path.read_bytes())
    browser.get(alone.as_uri())
    images = browser.execute_script(_IMAGES_JS)
    assert len(images) == 3, images
    for im in images:
        assert im["complete"] and im["w"] > 0 and im["h"] > 0, im
    assert "resnetlab report" in browser.title


def test_the_check_catches_a_broken_image(tmp_path, browser):
    """The same check on a page with a broken image fails, so the test above can fail."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="data:image/png;base64,AAAA"><img src="missing.png"></body></html>')
    browser.get(page.as_uri())
    images = browser.execute_script(_IMAGES_JS)
    assert len(images) == 2 and all(im["w"] == 0 for im in images)

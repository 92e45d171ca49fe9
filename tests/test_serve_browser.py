"""The page of ``./run.sh serve`` in a real headless Chromium, as a person uses it.

The shipped model serves on a local port; Chromium (Debian's ``chromium`` and
``chromium-driver``, which ``.ci/run`` installs) uploads an image, waits for the outlines,
reads the count, toggles the outlines and downloads the label image. Without a browser
these tests skip, saying so. Each test writes a screenshot of the page beside its other
files (``SERVE_SCREENSHOT=PATH`` writes the synthetic image's one there too: the README's
picture is made that way, from a synthetic image, never from competition data).
"""

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import paths

pytest.importorskip("keras")
pytest.importorskip("selenium")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    not (CHROMEDRIVER and CHROMIUM),
    reason="no headless browser: install Debian's chromium and chromium-driver (.ci/run does)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The page and API of models/default on a free local port, for the module."""
    import uvicorn

    from pipeline.serving.app import create_app
    from pipeline.serving.segmenter import Segmenter

    app = create_app(Segmenter(paths.DEFAULT_MODEL_DIR, "cpu"))
    config = uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not running.started and time.time() < deadline:
        time.sleep(0.1)
    assert running.started, "the server did not start"
    yield f"http://127.0.0.1:{config.port}/"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1200,1000"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _upload_and_wait(browser, server, image: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    browser.find_element(By.ID, "files").send_keys(str(image))
    done = ".result[data-state=done], .result[data-state=error]"
    WebDriverWait(browser, 300).until(lambda b: b.find_elements(By.CSS_SELECTOR, done))
    card = browser.find_element(By.CSS_SELECTOR, ".result")
    assert card.get_attribute("data-state") == "done", card.text
    return card


def _downloaded_labels(card) -> np.ndarray:
    from selenium.webdriver.common.by import By

    link = card.find_element(By.CSS_SELECTOR, "a.download-labels")
    assert link.get_attribute("download").endswith("-labels.png")
    data = base64.b64decode(link.get_attribute("href").split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)))


def _predicted_count(image_dir: Path, image_id: str, out_csv: Path) -> int:
    """The count of ``./run.sh predict`` (the model's tuned settings) for one image."""
    from pipeline.cli import main as cli_main

    argv = ["predict", "--model", str(paths.DEFAULT_MODEL_DIR), "--images", str(image_dir)]
    assert cli_main([*argv, "--out", str(out_csv), "--device", "cpu"]) == 0
    rows = out_csv.read_text().splitlines()[1:]
    return sum(1 for row in rows if row.startswith(f"{image_id},") and row.split(",")[1])


def _check_rois_and_geojson(browser, card, count: int) -> None:
    """The page's Fiji ROI set and QuPath GeoJSON downloads hold one polygon per nucleus."""
    import json
    import zipfile

    from roifile import ImagejRoi
    from selenium.webdriver.common.by import By

    rois = card.find_element(By.CSS_SELECTOR, "a.download-rois")
    assert rois.get_attribute("download").endswith("_rois.zip")
    data = base64.b64decode(rois.get_attribute("href").split(",", 1)[1])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [ImagejRoi.frombytes(archive.read(n)).name for n in archive.namelist()]
    assert names == [str(k) for k in range(1, count + 1)]
    geojson = card.find_element(By.CSS_SELECTOR, "a.download-geojson")
    assert geojson.get_attribute("download").endswith(".geojson")
    text = browser.execute_async_script(
        "const done = arguments[1]; fetch(arguments[0]).then(r => r.text()).then(done);",
        geojson.get_attribute("href"),
    )
    assert len(json.loads(text)["features"]) == count


def _check_page(browser, card, count_expected: int, screenshot: Path) -> None:
    from selenium.webdriver.common.by import By

    count = int(card.find_element(By.CSS_SELECTOR, ".count").text)
    assert count == int(card.get_attribute("data-count")) == count_expected
    rows = card.find_elements(By.CSS_SELECTOR, "table.nuclei tbody tr")
    assert len(rows) == count
    outlines = card.find_element(By.CSS_SELECTOR, "img.outlines")
    assert outlines.is_displayed()
    card.find_element(By.CSS_SELECTOR, "input.toggle-outlines").click()
    assert not outlines.is_displayed()
    card.find_element(By.CSS_SELECTOR, "input.toggle-outlines").click()
    labels = _downloaded_labels(card)
    assert len(np.unique(labels[labels > 0])) == count
    _check_rois_and_geojson(browser, card, count)
    area = card.find_elements(By.CSS_SELECTOR, "table.nuclei th")[1]
    area.click()  # sorted by area, ascending
    cells = card.find_elements(By.CSS_SELECTOR, "table.nuclei tbody td:nth-child(2)")
    areas = [float(cell.text) for cell in cells]
    assert areas == sorted(areas)
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


@pytest.mark.realdata
def test_a_stage1_test_image_shows_the_count_of_predict(browser, server, real_test_dir, tmp_path):
    image_id = sorted(p.name for p in real_test_dir.iterdir())[0]
    one = tmp_path / "one"
    shutil.copytree(real_test_dir / image_id, one / image_id)
    expected = _predicted_count(one, image_id, tmp_path / "one.csv")
    assert expected > 0
    card = _upload_and_wait(browser, server, one / image_id / "images" / f"{image_id}.png")
    _check_page(browser, card, expected, tmp_path / "page.png")


def test_a_synthetic_image_shows_the_count_of_predict(browser, server, tmp_path):
    from pipeline.data.synthetic import make_demo_dataset

    demo = make_demo_dataset(tmp_path / "demo", n_train=1, n_test=1, size_range=(256, 256))
    image_id = sorted(p.name for p in demo.test_dir.iterdir())[0]
    expected = _predicted_count(demo.test_dir, image_id, tmp_path / "demo.csv")
    card = _upload_and_wait(
        browser, server, demo.test_dir / image_id / "images" / f"{image_id}.png"
    )
    screenshot = Path(os.environ.get("SERVE_SCREENSHOT") or tmp_path / "page.png")
    _check_page(browser, card, expected, screenshot)

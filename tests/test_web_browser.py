"""The page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Exactly the issue's list: open the printed URL, drop two of the authors' test images, wait for both
results, check each is a PNG of the input's size whose alpha equals the served mask, switch to a
background colour and see an RGB result, download one, see the error for a text file dropped as an
image; a screenshot goes to the test output. Without chromium these tests fail and say why (never skip).
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from u2net_client import U2NetClient

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("U2SERVE_TEST_OUT", ROOT / "build" / "test-output"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900")  # fmt: skip

# Drops files on the page as a user's drag would: a DataTransfer holding the files of a temporary input.
DROP_JS = """
const [target, input] = arguments;
const dt = new DataTransfer();
for (const f of input.files) dt.items.add(f);
for (const type of ["dragenter", "dragover", "drop"]) {
  target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
}
input.remove();
"""
BLOB_JS = """
const [src, done] = [arguments[0], arguments[arguments.length - 1]];
fetch(src).then(r => r.blob())
  .then(b => { const fr = new FileReader(); fr.onload = () => done(fr.result); fr.readAsDataURL(b); })
  .catch(() => done(null));
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"browser tests need {', '.join(missing)}: `make test` installs Debian's chromium and chromium-driver "
            "when run as root; otherwise `sudo apt-get install chromium chromium-driver`"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("browser tests need selenium (the dev extra: pip install -e '.[dev]')")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})  # fmt: skip
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.downloads = downloads  # type: ignore[attr-defined]
    browser.set_script_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def wait(predicate, timeout: float = 240.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def drop(driver, paths: list[Path]) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.multiple = true; i.id = 'drop-source';"
        "document.body.append(i);"
    )
    driver.find_element(By.ID, "drop-source").send_keys("\n".join(str(p) for p in paths))
    driver.execute_script(DROP_JS, driver.find_element(By.CSS_SELECTOR, '[data-testid="drop"]'),
                          driver.find_element(By.ID, "drop-source"))  # fmt: skip


def result_image(driver, n: int) -> Image.Image:
    from selenium.webdriver.common.by import By

    src = driver.find_element(By.CSS_SELECTOR, f'[data-testid="result-{n}"]').get_attribute("src")
    data_url = driver.execute_async_script(BLOB_JS, src)
    assert data_url, f"result-{n} ({src}) could not be read"
    im = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    im.load()
    return im


def item_state(driver, n: int) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'[data-testid="item-{n}"]')
    return found[0].get_attribute("data-state") if found else None


def test_the_page_in_a_real_browser(driver, web, server, reference_dir, tmp_path, record_property):
    from selenium.webdriver.common.by import By

    photos = sorted((reference_dir / "images").iterdir())[:2]
    # Open the URL `make serve` prints: the key moves into an HttpOnly cookie and leaves the address bar.
    driver.get(web.page_url())
    wait(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), 30, "the controls")
    assert "token" not in driver.current_url
    cookie = driver.get_cookie("u2serve_token")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""

    # The page's default model is rembg's, U2NET; U2NETP is named as the fast one.
    picker = driver.find_element(By.CSS_SELECTOR, '[data-testid="model"]')
    assert picker.get_attribute("value") == "u2net"
    labels = {o.get_attribute("value"): o.text for o in picker.find_elements(By.TAG_NAME, "option")}
    assert labels["u2net"].startswith("U2NET (rembg's default") and labels["u2netp"].startswith("U2NETP (fast")
    drop(driver, photos)
    wait(lambda: all(item_state(driver, n) == "done" for n in (0, 1)), what="both results")
    with U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file) as sdk:
        masks = [sdk.mask(p, "u2net").array.astype(int) for p in photos]
    for n, photo in enumerate(photos):
        im = result_image(driver, n)
        size = ImageOps.exif_transpose(Image.open(photo)).size
        assert im.format == "PNG" and im.mode == "RGBA" and im.size == size, (im.format, im.mode, im.size, size)
        assert np.abs(np.asarray(im)[..., 3].astype(int) - masks[n]).max() <= 2
        batch = driver.find_element(By.CSS_SELECTOR, f'[data-testid="batch-{n}"]').text
        assert batch.startswith("batch "), batch
    record_property("page_batches", [driver.find_element(By.CSS_SELECTOR, f'[data-testid="batch-{n}"]').text
                                     for n in (0, 1)])  # fmt: skip

    # A background colour: the result becomes RGB.
    colour = driver.find_element(By.CSS_SELECTOR, '[data-testid="option-background"]')
    colour.send_keys("#ffffff")
    driver.find_element(By.CSS_SELECTOR, '[data-testid="rerun"]').click()
    wait(lambda: all(item_state(driver, n) == "done" for n in (0, 1)), what="the results over white")
    assert result_image(driver, 0).mode == "RGB" and result_image(driver, 1).mode == "RGB"

    # Download one.
    driver.find_element(By.CSS_SELECTOR, '[data-testid="download-0"]').click()
    saved = wait(lambda: [p for p in driver.downloads.iterdir() if p.suffix == ".png"], 30, "the download")
    assert Image.open(saved[0]).mode == "RGB"

    OUT.mkdir(parents=True, exist_ok=True)
    shot = OUT / "web-page.png"
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(shot))
    record_property("screenshot", str(shot))

    # A text file dropped as an image: the page says what was wrong.
    text = tmp_path / "notes.png"
    text.write_text("these are my notes, not a picture\n")
    drop(driver, [text])
    error = driver.find_element(By.CSS_SELECTOR, '[data-testid="error"]')
    wait(lambda: error.is_displayed() and "not a recognised image" in error.text, 60, "the error message")
    assert "notes.png" in error.text

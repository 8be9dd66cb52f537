"""The page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

What a user sees, asserted where it can be seen: from screenshots' pixels, the result right of the compare
view's handle over a checkerboard where the served mask is 0 and the photo where it is 255; the first
result in view after a drop at a laptop's and a phone's size; the drop zone lit while a file is over it.
Beside them: the options shown only where they apply, each card's progress and the server's timings or
error, downloads, axe-core's accessibility check and no request leaving the page's origin. The test writes
docs/web-page.png (the README's picture) and its screenshots to build/test-output/ (U2SERVE_TEST_OUT).
Without chromium or axe-core (`make browser` installs both) these tests fail and say why (never skip).
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from u2net_client import U2NetClient

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("U2SERVE_TEST_OUT", ROOT / "build" / "test-output"))
DOCS_PICTURE = ROOT / "docs" / "web-page.png"  # README.md shows it: written here, from a real run
AXE = ROOT / "build" / "axe" / "node_modules" / "axe-core" / "axe.min.js"  # tools/install-browser.sh
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")  # fmt: skip
DESKTOP = (1400, 1000)
CHECKER = np.array([(0xD8, 0xDB, 0xE0), (0xFF, 0xFF, 0xFF)])  # style.css's --checker
NEAR = 6  # levels per channel: the same colour drawn twice

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
DRAG_JS = """
const [target, type] = arguments;
const dt = new DataTransfer();
dt.items.add(new File(["x"], "photo.png", {type: "image/png"}));
target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
"""
BLOB_JS = """
const [src, done] = [arguments[0], arguments[arguments.length - 1]];
fetch(src).then(r => r.blob())
  .then(b => { const fr = new FileReader(); fr.onload = () => done(fr.result); fr.readAsDataURL(b); })
  .catch(() => done(null));
"""
# Records each card's data-state changes (the states it went through, however fast).
WATCH_JS = """
window.seenStates = {};
new MutationObserver((records) => {
  for (const r of records) (window.seenStates[r.target.dataset.testid] ??= []).push(r.oldValue);
}).observe(document.getElementById("results"),
           {subtree: true, attributes: true, attributeFilter: ["data-state"], attributeOldValue: true});
"""
RECT_JS = """
const r = document.querySelector(arguments[0]).getBoundingClientRect();
return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height};
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


def viewport(driver, size: tuple[int, int], phone: bool = False) -> None:
    """A viewport of exactly `size` CSS pixels, one device pixel each (a phone's: its meta viewport holds)."""
    width, height = size
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": phone})  # fmt: skip


def open_page(driver, web, size: tuple[int, int] = DESKTOP, phone: bool = False) -> None:
    """The URL `make serve` prints, in a viewport of `size`."""
    viewport(driver, size, phone)
    driver.get(web.page_url())
    wait(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), 30, "the controls")
    assert driver.execute_script("return [innerWidth, innerHeight, devicePixelRatio]") == [*size, 1]


def find(driver, testid: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def click(driver, testid: str) -> None:
    """Scrolls a control to the middle of its panel, as a person would before clicking it, and clicks it."""
    el = find(driver, testid)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()


def drop(driver, paths: list[Path]) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.multiple = true; i.id = 'drop-source';"
        "document.body.append(i);"
    )
    driver.find_element(By.ID, "drop-source").send_keys("\n".join(str(p) for p in paths))
    driver.execute_script(DROP_JS, find(driver, "drop"), driver.find_element(By.ID, "drop-source"))


def result_image(driver, n: int) -> Image.Image:
    src = find(driver, f"result-{n}").get_attribute("src")
    data_url = driver.execute_async_script(BLOB_JS, src)
    assert data_url, f"result-{n} ({src}) could not be read"
    im = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    im.load()
    return im


def item_state(driver, n: int) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'[data-testid="item-{n}"]')
    return found[0].get_attribute("data-state") if found else None


def wait_done(driver, items: tuple[int, ...], what: str) -> None:
    wait(lambda: all(item_state(driver, n) in ("done", "error") for n in items), what=what)
    failed = {n: find(driver, f"item-error-{n}").text for n in items if item_state(driver, n) != "done"}
    assert not failed, failed


def rect(driver, css: str) -> dict[str, float]:
    return driver.execute_script(RECT_JS, css)


def screen(driver, name: str | None = None) -> np.ndarray:
    """The viewport as a person sees it (RGB, one pixel per CSS pixel); saved to OUT/name when named."""
    png = driver.get_screenshot_as_png()
    if name:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / name).write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def served_mask(server, photo: Path, model: str = "u2net") -> np.ndarray:
    with U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file) as sdk:
        return sdk.mask(photo, model).array.astype(int)


def is_checker(pixels: np.ndarray) -> np.ndarray:
    return (np.abs(pixels[:, None, :] - CHECKER[None]).max(axis=2) <= NEAR).any(axis=1)


def same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).max(axis=-1) <= NEAR


def set_divide(driver, n: int, percent: int) -> None:
    driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));",
                          find(driver, f"slider-{n}"), percent)  # fmt: skip


def test_the_page_in_a_real_browser(driver, web, server, reference_dir, tmp_path, record_property):
    from selenium.webdriver.support.ui import Select

    photos = sorted((reference_dir / "images").iterdir())[:2]
    # Open the URL `make serve` prints: the key moves into an HttpOnly cookie and leaves the address bar.
    open_page(driver, web)
    assert "token" not in driver.current_url
    cookie = driver.get_cookie("u2serve_token")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""

    # The page's default model is rembg's, U2NET; U2NETP is named as the fast one.
    picker = find(driver, "model")
    assert picker.get_attribute("value") == "u2net"
    labels = {o.get_attribute("value"): o.text for o in Select(picker).options}
    assert labels["u2net"].startswith("U2NET (rembg's default") and labels["u2netp"].startswith("U2NETP (fast")

    # Each card says where its image is: queued, sending, then done with the server's stage timings.
    driver.execute_script(WATCH_JS)
    drop(driver, photos)
    wait_done(driver, (0, 1), "both results")
    seen = driver.execute_script("return window.seenStates")
    for n, photo in enumerate(photos):
        states = [s for s in seen[f"item-{n}"] if s] + [item_state(driver, n)]
        assert states == ["queued", "sending", "done"], states
        assert find(driver, f"state-{n}").text == "Done"
        timings = find(driver, f"timings-{n}").text
        assert "round trip" in timings and "inference" in timings and timings.endswith(" ms"), timings
        im = result_image(driver, n)
        size = ImageOps.exif_transpose(Image.open(photo)).size
        assert im.format == "PNG" and im.mode == "RGBA" and im.size == size, (im.format, im.mode, im.size, size)
        assert np.abs(np.asarray(im)[..., 3].astype(int) - served_mask(server, photo)).max() <= 2
        assert find(driver, f"batch-{n}").text.startswith("batch ")
    record_property("page_batches", [find(driver, f"batch-{n}").text for n in (0, 1)])

    # The README's picture: this page, now.
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(DOCS_PICTURE))
    record_property("screenshot", str(DOCS_PICTURE))

    # JPEG quality set, then PNG again: quality no longer applies, is hidden and not sent (the server
    # would refuse it for PNG). A background colour: one click re-applies it to both, RGB now.
    Select(find(driver, "option-output_format")).select_by_value("jpeg")
    find(driver, "option-quality").send_keys("70")
    Select(find(driver, "option-output_format")).select_by_value("")
    assert not find(driver, "option-quality").is_displayed()
    find(driver, "option-background").send_keys("#ffffff")
    find(driver, "rerun").click()
    wait(lambda: all(item_state(driver, n) != "done" for n in (0, 1)), 30, "the re-run to start")
    wait_done(driver, (0, 1), "the results over white")
    assert result_image(driver, 0).mode == "RGB" and result_image(driver, 1).mode == "RGB"

    # Download one.
    find(driver, "download-0").click()
    saved = wait(lambda: [p for p in driver.downloads.iterdir() if p.suffix == ".png"], 30, "the download")
    assert Image.open(saved[0]).mode == "RGB"
    screen(driver, "web-page-white.png")

    # A text file dropped as an image: its card and the page say what was wrong.
    text = tmp_path / "notes.png"
    text.write_text("these are my notes, not a picture\n")
    drop(driver, [text])
    error = find(driver, "error")
    wait(lambda: error.is_displayed() and "not a recognised image" in error.text, 60, "the error message")
    assert "notes.png" in error.text
    assert item_state(driver, 2) == "error" and find(driver, "state-2").text == "Failed"
    assert "not a recognised image" in find(driver, "item-error-2").text


def test_the_compare_view_shows_the_result_over_a_checkerboard(driver, web, server, reference_dir):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    photo = reference_dir / "images" / "0003.jpg"  # an alpaca on grass: no background looks like a checkerboard
    open_page(driver, web)
    drop(driver, [photo])
    wait_done(driver, (0,), "the cutout")
    box = rect(driver, '[data-testid="result-0"]')
    assert box == pytest.approx(rect(driver, '[data-testid="item-0"] .before'), abs=0.5)  # on the original
    set_divide(driver, 0, 100)
    original = screen(driver)  # the divide at the right edge: the original everywhere
    set_divide(driver, 0, 50)
    shot = screen(driver, "compare-cutout.png")

    # Where each pixel of the result lies on the screen, and what the served mask says there (far from edges).
    x0, y0, w, h = round(box["left"]), round(box["top"]), round(box["width"]), round(box["height"])
    mask = Image.fromarray(served_mask(server, photo).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    clear = np.asarray(mask.filter(ImageFilter.MaxFilter(13))) <= 2
    solid = np.asarray(mask.filter(ImageFilter.MinFilter(13))) >= 253
    xs = np.arange(w)[None, :].repeat(h, axis=0)
    shown = np.ones((h, w), bool)  # not under the handle, its knob or the Original/Result tags
    shown[:, abs(xs[0] - w / 2) <= 16] = False
    shown[:, w - 16 :] = False
    shown[:32, :] = False
    right, left = shown & (xs > w / 2), shown & (xs < w / 2)
    here, before = shot[y0 : y0 + h, x0 : x0 + w], original[y0 : y0 + h, x0 : x0 + w]
    assert (right & clear).sum() > 1000 and (right & solid).sum() > 1000 and (left & clear).sum() > 1000
    photo_pixels = np.asarray(Image.open(photo).convert("RGB").resize((w, h), Image.BILINEAR)).astype(int)
    assert np.abs(before - photo_pixels).mean() < 12, "the page does not show the photo"
    assert is_checker(before[right & clear]).mean() < 0.2, "the photo's background looks like the checkerboard"
    # Result side: the checkerboard where the mask is 0, the photo where it is 255; the other side: the photo.
    assert is_checker(here[right & clear]).mean() > 0.97
    assert same(here[right & solid], before[right & solid]).mean() > 0.97
    assert same(here[left], before[left]).mean() > 0.99

    # A mask shows as a mask: black where the background was, white on the subject.
    find(driver, "task-mask").click()
    find(driver, "rerun").click()
    wait(lambda: item_state(driver, 0) != "done", 30, "the re-run to start")
    wait_done(driver, (0,), "the mask")
    here = screen(driver, "compare-mask.png")[y0 : y0 + h, x0 : x0 + w]
    assert (here[right & clear] <= NEAR).all(axis=1).mean() > 0.97
    assert (here[right & solid] >= 255 - NEAR).all(axis=1).mean() > 0.97

    # The handle follows the mouse (a click, a drag) and the arrow keys.
    slider, handle = find(driver, "slider-0"), '[data-testid="item-0"] .handle'

    def divide() -> tuple[float, float]:
        at = rect(driver, handle)
        return float(slider.get_attribute("value")), ((at["left"] + at["right"]) / 2 - box["left"]) / box["width"]

    ActionChains(driver).move_to_element_with_offset(slider, round(-w / 4), 0).click().perform()
    value, x = divide()
    assert abs(value - 25) <= 2 and abs(x - 0.25) <= 0.02, (value, x)
    ActionChains(driver).click_and_hold().move_by_offset(round(w / 2), 10).release().perform()
    value, x = divide()
    assert abs(value - 75) <= 2 and abs(x - 0.75) <= 0.02, (value, x)
    slider.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    assert divide()[0] == value - 2
    slider.send_keys(Keys.HOME)
    assert divide() == (0.0, pytest.approx(0, abs=0.01))


@pytest.mark.parametrize(("size", "phone"), [((1366, 768), False), ((390, 844), True)], ids=["laptop", "phone"])
def test_the_first_result_is_in_view_after_a_drop(driver, web, reference_dir, size, phone):
    open_page(driver, web, size, phone)
    drop(driver, sorted((reference_dir / "images").iterdir())[:2])
    wait_done(driver, (0, 1), "both results")
    width, height = size
    shot = screen(driver, f"first-result-{width}x{height}.png")
    assert shot.shape == (height, width, 3) and driver.execute_script("return scrollY") == 0
    card = rect(driver, '[data-testid="item-0"]')
    assert card["top"] >= 0 and card["left"] >= 0 and card["bottom"] <= height and card["right"] <= width, card
    result = rect(driver, '[data-testid="result-0"]')
    assert result["width"] > 0.7 * (card["width"] - 24) or result["height"] > 0.35 * height, result
    # The card shows its result: its pixels are not the page's background.
    inside = shot[round(result["top"]) + 40 : round(result["bottom"]) - 8, round(result["left"]) + 8]
    assert (np.abs(inside - (0xF6, 0xF7, 0xF9)).max(axis=1) > NEAR).mean() > 0.9
    # Cards are as tall as their content: padding and border below the download link, nothing more.
    for n in (0, 1):
        card, link = rect(driver, f'[data-testid="item-{n}"]'), rect(driver, f'[data-testid="download-{n}"]')
        assert card["bottom"] - link["bottom"] <= 16, (n, card, link)


def test_each_option_shows_only_where_it_applies(driver, web, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(driver, web)

    def visible() -> set[str]:
        return set(driver.execute_script(
            "return [...document.querySelectorAll('#options [data-testid^=\"row-\"]')]"
            ".filter((row) => row.checkVisibility()).map((row) => row.dataset.testid.slice(4))"
        ))  # fmt: skip

    def choose(name: str, value: str) -> None:
        Select(find(driver, f"option-{name}")).select_by_value(value)

    legends = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#controls fieldset.group > legend")]
    assert [t.lower() for t in legends] == ["model and result", "background", "edges", "crop", "output"]
    start = {"background", "background_image", "effect", "threshold", "refine", "crop", "output_format",
             "png_compression"}  # fmt: skip
    assert visible() == start
    # Defaults read as defaults: empty boxes with the default in words, lists naming theirs.
    for name in ("background", "threshold", "png_compression"):
        el = find(driver, f"option-{name}")
        assert el.get_attribute("value") == "" and not el.get_attribute("placeholder"), name
    assert "default: none (soft edges)" in find(driver, "row-threshold").text
    assert Select(find(driver, "option-refine")).first_selected_option.text == "none (default)"
    assert Select(find(driver, "option-output_format")).first_selected_option.text == "png (default)"
    assert "empty" in driver.find_element(By.CSS_SELECTOR, "#options .swatch").get_attribute("class")

    choose("refine", "matting")  # its knobs; threshold would harden what matting refines
    matting = {"matting_foreground_threshold", "matting_background_threshold", "matting_erode_size"}
    assert visible() == start - {"threshold"} | matting
    choose("output_format", "jpeg")
    assert visible() == start - {"threshold", "png_compression"} | matting | {"quality"}
    screen(driver, "options-matting-jpeg.png")
    choose("refine", "")
    choose("output_format", "webp")
    assert visible() == start - {"png_compression"} | {"quality"}
    choose("output_format", "")
    choose("effect", "blur")
    assert visible() == start | {"blur_radius"}
    find(driver, "option-background").send_keys("#102030")  # over a colour there is nothing to blur
    assert visible() == start - {"effect"}
    backdrop = tmp_path / "backdrop.png"
    Image.new("RGB", (8, 8), (40, 90, 160)).save(backdrop)
    find(driver, "option-background_image").send_keys(str(backdrop))  # an image: fit it, blur it
    assert visible() == start | {"background_fit", "blur_radius"}
    click(driver, "option-crop")
    assert visible() == start | {"background_fit", "blur_radius", "crop_margin", "box_threshold"}
    find(driver, "task-mask").click()  # a mask has no background
    assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="group-background"]') == []
    assert visible() == {"threshold", "refine", "crop", "crop_margin", "box_threshold", "output_format",
                         "png_compression"}  # fmt: skip
    click(driver, "reset")
    wait(lambda: visible() == start, 5, "the defaults")
    assert find(driver, "task-cutout").is_selected() and find(driver, "model").get_attribute("value") == "u2net"
    assert find(driver, "option-background").get_attribute("value") == ""


def test_the_drop_zone_lights_up_while_a_file_is_over_it(driver, web):
    open_page(driver, web)
    zone = find(driver, "drop")

    def colour() -> np.ndarray:
        pixels = np.asarray(Image.open(io.BytesIO(zone.screenshot_as_png)).convert("RGB")).reshape(-1, 3)
        return np.median(pixels, axis=0)

    assert np.abs(colour() - 255).max() <= 2
    driver.execute_script(DRAG_JS, zone, "dragenter")
    driver.execute_script(DRAG_JS, zone, "dragover")
    lit = colour()
    assert np.abs(lit - (0xDF, 0xE9, 0xFF)).max() <= 3, lit
    driver.execute_script(DRAG_JS, zone, "dragleave")
    assert np.abs(colour() - 255).max() <= 2
    # Keyboard: Enter on the zone opens the file chooser.
    driver.execute_script(
        "window.chooser = 0; document.getElementById('file-input')"
        ".addEventListener('click', (e) => { e.preventDefault(); window.chooser++; });"
    )
    zone.send_keys("\n")
    assert driver.execute_script("return window.chooser") == 1


def test_accessible_and_offline(driver, web, reference_dir):
    from selenium.webdriver.support.ui import Select

    if not AXE.is_file():
        pytest.fail(f"no {AXE}: `make browser` (tools/install-browser.sh) installs axe-core with npm")
    open_page(driver, web)
    drop(driver, sorted((reference_dir / "images").iterdir())[:1])
    wait_done(driver, (0,), "the result")
    Select(find(driver, "option-refine")).select_by_value("matting")
    Select(find(driver, "option-output_format")).select_by_value("webp")
    axe = AXE.read_text()
    for size, phone in ((DESKTOP, False), ((390, 844), True)):
        viewport(driver, size, phone)
        driver.execute_script(axe)
        report = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then((r) => done(r.violations), (e) => done(String(e)));"
        )
        assert isinstance(report, list), report
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]]) for v in report
               if v["impact"] in ("serious", "critical")]  # fmt: skip
        assert not bad, (size, bad)
    # Offline: everything the page loaded came from its own origin (or the page's own blobs).
    origin = driver.execute_script("return location.origin")
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert loaded and all(url.startswith((origin, "blob:", "data:")) for url in loaded), loaded

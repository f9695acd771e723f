"""The web page end to end: `polymodal serve` on 127.0.0.1 with trained models, driven in headless Chromium
(Debian's `chromium`, which `.ci/run` installs; Playwright is told where it is, since it cannot download its own).
A person's session: type a query, see result images, pick one with the keyboard, ask a question, get a caption,
search with an uploaded file, see an error. What the page shows is what the library computes for the same image.
Screenshots are kept in the test's temporary folder (the path is printed)."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from polymodal.data.records import open_image_file
from polymodal.model_io import load_for_inference
from polymodal.tasks.captioning import generate_captions
from tests.serve.conftest import ServerProcess, reference_answers
from tests.serve.fuzz_uploads import good_uploads

pytestmark = pytest.mark.slow  # trains three small models (~1 min on 2 cores), then drives a browser

CHROMIUM = os.environ.get("POLYMODAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# No sandbox: CI runs as root in a container. No background traffic: the machine is offline.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]


def wait_until(condition, what: str, timeout: float = 30) -> None:
    """Poll ``condition()`` from Python (the page's Content-Security-Policy forbids the eval that Playwright's
    wait_for_function needs, as it should)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def all_images_loaded(page, selector: str) -> int:
    """Wait until every <img> under ``selector`` has decoded pixels; returns how many there are."""
    def loaded() -> list[bool]:
        return page.locator(f"{selector} img").evaluate_all(
            "images => images.map(image => image.complete && image.naturalWidth > 0)")

    wait_until(lambda: loaded() and all(loaded()), f"the images under {selector}")
    return len(loaded())


@pytest.fixture(scope="module")
def server(trained_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    process = ServerProcess("--index", str(trained_world.index_copy(root / "index")),
                            "--vqa-checkpoint", str(trained_world.vqa),
                            "--caption-checkpoint", str(trained_world.caption),
                            "--images", str(trained_world.root / "images" / "pairs.jsonl"),
                            log=root / "server.log").wait_ready()
    yield process
    process.stop()


@pytest.fixture
def page(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run installs it in CI)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.console_errors = []
        page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
        yield page
        browser.close()


def test_search_ask_and_caption_in_a_browser(server, page, trained_world, tmp_path):
    page.goto(server.url + "/")
    page.wait_for_selector("#status.up")
    assert "24 images" in page.inner_text("#status")

    # Search: the box has focus when the page opens; Enter submits.
    assert page.evaluate("document.activeElement.id") == "query"
    page.keyboard.type("a red circle")
    page.keyboard.press("Enter")
    page.wait_for_selector("#grid li")
    shown = all_images_loaded(page, "#grid")
    assert shown == 12 and "12 of 24 images" in page.inner_text("#results-note")
    titles = page.locator(".tile-name").all_inner_texts()
    assert all(title.strip() for title in titles)  # the records' captions, from --images
    page.screenshot(path=tmp_path / "search.png")

    # Pick the first result with the keyboard: Tab from the search controls to the first tile, Enter.
    page.focus("#search-button")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('tile')")
    page.keyboard.press("Enter")
    page.wait_for_selector("#preview:not([hidden])")
    assert page.inner_text("#image-name") == titles[0]
    first_key = page.locator(".tile").first.get_attribute("title").splitlines()[1]

    # VQA: the question box has focus after picking; Enter asks. The answers are the model's.
    question = "how many objects are in the image?"
    page.keyboard.type(question)
    page.keyboard.press("Enter")
    page.wait_for_selector("#answers li")
    vqa = load_for_inference(trained_world.vqa, "cpu")
    expected = reference_answers(vqa, open_image_file(first_key), question, 5)
    assert page.locator("#answers .bar-label").all_inner_texts() == [answer for answer, _ in expected]
    shown_top = float(page.locator("#answers .bar-value").first.inner_text().rstrip("%"))
    assert shown_top == pytest.approx(100 * expected[0][1], abs=0.051)

    # Caption: the model's own caption for that image.
    page.click("#describe")
    page.wait_for_selector("#caption:not([hidden])")
    captioner = load_for_inference(trained_world.caption, "cpu")
    pixels = captioner.transform(open_image_file(first_key))[None]
    caption = generate_captions(captioner.model, captioner.tokenizer, [{"image": pixels}])[0]
    assert page.inner_text("#caption") == caption and len(caption.split()) >= 2
    page.screenshot(path=tmp_path / "page.png")

    # "/" from outside the text boxes returns to the search box.
    page.click("#results-title")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "query" and page.input_value("#query") == "a red circle"

    # An uploaded file: search with it; the same indexed image comes first.
    uploaded = trained_world.images[7]
    page.set_input_files("#file", str(uploaded))
    page.wait_for_selector("#preview:not([hidden])")
    page.click("#similar")
    wait_until(lambda: "Images like" in page.inner_text("#results-note"), "the image search")
    all_images_loaded(page, "#grid")
    assert page.locator(".tile").first.get_attribute("title").splitlines()[1] == str(uploaded)
    assert page.console_errors == []

    # Add a new image to the index from the page: it is saved, counted, and found by searching with it.
    page.set_input_files("#file", files=[{"name": "new.png", "mimeType": "image/png",
                                          "buffer": good_uploads()["png"]}])
    page.click("#add")
    wait_until(lambda: "Added as upload/" in page.inner_text("#image-message"), "the add")
    wait_until(lambda: "25 images" in page.inner_text("#status"), "the new index size")
    page.click("#similar")
    wait_until(lambda: page.locator(".tile").first.get_attribute("title").splitlines()[1].startswith("upload/"),
               "the added image to come first")

    # An error state: a file cut short is refused by the server, and the page says why.
    page.set_input_files("#file", files=[{"name": "broken.png", "mimeType": "image/png",
                                          "buffer": good_uploads()["png"][:300]}])
    page.click("#similar")
    page.wait_for_selector("#results-error:not([hidden])")
    assert "cut short" in page.inner_text("#results-error")
    page.screenshot(path=tmp_path / "error.png")
    print(f"screenshots: {tmp_path}")
    for name in ("search.png", "page.png", "error.png"):
        assert (tmp_path / name).stat().st_size > 20_000


def test_unconfigured_panels_say_how_to_configure_them(serve_world, page, tmp_path):
    process = ServerProcess("--index", str(serve_world.index_copy(tmp_path / "index")),
                            log=tmp_path / "server.log").wait_ready()
    try:
        page.goto(process.url + "/")
        page.wait_for_selector("#status.up")
        assert "--vqa-checkpoint" in page.inner_text("#vqa-card .off-note")
        assert "--caption-checkpoint" in page.inner_text("#caption-card .off-note")
        assert page.is_disabled("#question") and page.is_disabled("#describe")
        page.fill("#query", "a blue square")
        page.press("#query", "Enter")
        page.wait_for_selector("#grid li")
        page.locator(".tile").first.click()
        assert page.is_enabled("#classify") and page.is_disabled("#ask")
    finally:
        process.stop()

"""The console in a real browser (headless Chromium through Selenium): a few user flows end to end.

Sign in with the keyboard, search by a chosen photo and a box dragged on it, add files with the progress
bar and the failures listed, drop a file onto a drop zone, and no page breaking its own Content-Security-
Policy. Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install-browser.sh``); without them
these tests skip and say so. Selenium is given both paths, so it never downloads a browser or a driver.
"""

from __future__ import annotations

import shutil

import pytest
from photos import crop, encode, photo

TOKEN = "console-browser-token-0123456789"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no browser: install Debian's chromium and chromium-driver (scripts/install-browser.sh)"),
]  # fmt: skip
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, http_port=0, token=TOKEN, snapshot_interval_s=0,
                                         data_dir=tmp_path_factory.mktemp("console-browser")))  # fmt: skip
    running.base = f"http://127.0.0.1:{running.http_port}"
    running.service.create_database("photos")
    for name in ("chelsea", "coffee", "rocket"):
        running.service.set_image("photos", name, None, encode(photo(name)), None, attributes={"source": name})
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def browser(server):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def text(driver, selector: str) -> str:
    """The element's text now, "" while it is missing or being swapped (htmx replaces elements)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return css(driver, selector).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def no_page_errors(driver, *expected: str) -> None:
    """Nothing the page did was refused (CSP) or threw; ``expected``: messages a test provoked on purpose."""
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and not any(x in e["message"] for x in expected)]  # fmt: skip
    assert not severe, severe


@pytest.fixture(scope="module")
def signed_in(server, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(server.base + "/ui/databases")
    wait(browser, lambda d: "/ui/signin" in d.current_url)
    field = css(browser, "#token")
    assert browser.switch_to.active_element == field  # the token field has the focus
    field.send_keys(TOKEN + Keys.ENTER)
    wait(browser, lambda d: d.current_url.endswith("/ui/databases"))
    assert "photos" in css(browser, "main table").text
    no_page_errors(browser)
    return browser


def test_search_by_a_box_dragged_on_the_query(server, signed_in, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    d = signed_in
    query = tmp_path / "query.jpg"
    query.write_bytes(encode(crop(photo("chelsea"), 0.9)))
    d.get(server.base + "/ui/search?db=photos")
    css(d, "#image").send_keys(str(query))
    stage = css(d, ".crop-stage")
    wait(d, lambda _: stage.is_displayed() and css(d, ".crop-image").size["width"] > 50)
    size = css(d, ".crop-image").size
    (ActionChains(d).move_to_element_with_offset(stage, -size["width"] // 4, -size["height"] // 4).click_and_hold()
     .move_by_offset(size["width"] // 2, size["height"] // 2).release().perform())  # fmt: skip
    values = [float(css(d, f"#crop_{k}").get_attribute("value")) for k in "xywh"]
    assert 0.15 < values[0] < 0.35 and 0.4 < values[2] < 0.6, values  # about the middle quarter
    assert css(d, ".crop-box").is_displayed()
    css(d, "#top_k").clear()
    css(d, "#top_k").send_keys("2")
    css(d, "#search-form button[type=submit]").click()
    wait(d, lambda _: "hit" in text(d, "#results"))
    assert d.current_url.endswith("/ui/search?db=photos")  # htmx swapped the results in place
    groups = [e.text for e in d.find_elements("css selector", "#results .group a")]
    assert groups[0] == "chelsea" and len(groups) == 2
    # A file that is not an image: the reason shows in place of the hits.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    css(d, "#image").send_keys(str(broken))
    css(d, "#search-form button[type=submit]").click()
    wait(d, lambda _: "IMAGE" in text(d, "#results [role=alert]"))
    # A page-level refusal (a stale CSRF value) replaces the page's content with the reason.
    d.execute_script("document.body.setAttribute('hx-headers', JSON.stringify({'X-CSRF-Token': 'stale'}))")
    css(d, "#image").send_keys(str(query))
    css(d, "#search-form button[type=submit]").click()
    wait(d, lambda _: "CSRF_INVALID" in text(d, "main"))
    no_page_errors(d, "status of 400", "status of 403")


def test_add_files_with_progress_and_failures(server, signed_in, tmp_path):
    d = signed_in
    paths = []
    for name in ("astronaut", "camera"):
        paths.append(tmp_path / f"{name}.jpg")
        paths[-1].write_bytes(encode(photo(name)))
    paths.append(tmp_path / "broken.jpg")
    paths[-1].write_bytes(b"not a picture")
    d.get(server.base + "/ui/add?db=photos")
    css(d, "#images").send_keys("\n".join(str(p) for p in paths))
    css(d, "#add-form button[type=submit]").click()
    wait(d, lambda _: "3 of 3 sent" in text(d, "#add-count"), timeout=180)
    assert "1 failed" in css(d, "#add-count").text
    assert css(d, "#add-progress").get_attribute("value") == "3"
    rows = [e.text for e in d.find_elements("css selector", "#add-results li")]
    assert len(rows) == 3 and any(r.startswith("broken.jpg: failed") for r in rows), rows
    assert server.service.get_image("photos", "astronaut", 0).attributes["source"] == "astronaut.jpg"
    no_page_errors(d, "/ui/add - Failed to load resource: the server responded with a status of 400")  # broken.jpg


def test_a_dropped_file_fills_the_input(server, signed_in):
    d = signed_in
    d.get(server.base + "/ui/compare")
    count = d.execute_script("""
        const zone = document.querySelector('[data-drop-for=image_a]');
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array([255, 216, 255])], 'dropped.jpg', {type: 'image/jpeg'}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        return document.getElementById('image_a').files.length + ':' + document.getElementById('image_a').files[0].name;
    """)
    assert count == "1:dropped.jpg"
    no_page_errors(d)

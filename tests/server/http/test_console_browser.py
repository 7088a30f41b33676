"""The console in a real browser (headless Chromium through Selenium): what a user does, end to end.

The journeys: sign in (a wrong token, then the right one, with the keyboard); drop a photo on the search page
and see its photo first; drag a box on a query of two photos side by side and see the boxed photo first
(the whole query finds the other); "More like this" on a thumbnail of a database's grid finds that image's
near duplicates first; compare two photos and see the similarity ``LookalikeService.match`` gives; delete an
image after its confirmation page (Cancel keeps it). Besides: add files with the progress bar and the
failures listed, a search's errors shown in place, a file dropped on a compare drop zone. Every journey saves
a screenshot in its ``tmp_path`` and checks it shows something (many colours, no colour filling the page),
and no page breaks its own Content-Security-Policy or throws.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install-browser.sh``); without them these tests
skip and say so. Selenium is given both paths, so it never downloads a browser or a driver. Waits are
explicit: an htmx swap is seen by the swapped element being a new one and htmx's request classes gone.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest
from console_helpers import wait
from lookalike.server.core.errors import LookalikeError
from photos import crop, encode, photo, resize
from PIL import Image

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
    yield running
    running.stop(0)


def database(server, name: str, images: dict[str, bytes]) -> str:
    """A new database ``name`` (thumbnails kept) with one image per group: ``{group: encoded image}``."""
    server.service.create_database(name, keep="thumbnail")
    for group, data in images.items():
        server.service.set_image(name, group, 0, data, None, attributes={"source": f"{group}.jpg"})
    return name


def jpeg(name: str) -> bytes:
    return encode(photo(name), quality=90)


def browser_options():
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
                "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@pytest.fixture(scope="module")
def browser(server):
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=browser_options())
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


# -- helpers -----------------------------------------------------------------------------------
def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text(driver, selector: str) -> str:
    """The element's text now, "" while it is missing or being swapped (htmx replaces elements)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return css(driver, selector).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def swapped(driver, selector: str, action) -> None:
    """Runs ``action`` (a click that makes htmx replace ``selector``) and waits until the element is a new one
    and htmx has finished (no element still requesting, swapping or settling)."""
    driver.execute_script("document.querySelector(arguments[0]).dataset.replaced = 'not yet'", selector)
    action()
    wait(driver, lambda d: d.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return !!e && !e.dataset.replaced && !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')",
        selector))  # fmt: skip


def images_loaded(driver, selector: str) -> None:
    """Waits until every image ``selector`` matches (at least one) is scrolled to, loaded and decoded."""
    driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", selector)
    wait(driver, lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)", selector))  # fmt: skip


def groups(driver, selector: str = "#results") -> list[str]:
    return [e.text for e in all_css(driver, f"{selector} .tile .group a")]


def screenshot(driver, tmp_path: Path, name: str, *, photos: bool = False) -> Path:
    """Saves the window as ``tmp_path/name.png`` and checks it is not blank: no colour fills 99% of it, and it
    has many colours (``photos``: thousands, so the page's photos were drawn, not only text)."""
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 800 and img.height >= 600, (img.format, img.size)
        rgb = img.convert("RGB")
    colors = rgb.getcolors(maxcolors=rgb.width * rgb.height)
    most = max(count for count, _ in colors) / (rgb.width * rgb.height)
    assert len(colors) > 1 and most < 0.99, f"{path}: blank ({len(colors)} colours, one on {most:.1%})"
    least = 2000 if photos else 24
    assert len(colors) >= least, f"{path}: {len(colors)} colours, expected at least {least}"
    return path


def no_page_errors(driver, *expected: str) -> None:
    """Nothing the page did was refused (CSP) or threw; ``expected``: messages a test provoked on purpose."""
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and not any(x in e["message"] for x in expected)]  # fmt: skip
    assert not severe, severe


def sign_in(driver, server, token: str = TOKEN) -> None:
    from selenium.webdriver.common.keys import Keys

    field = css(driver, "#token")
    assert driver.switch_to.active_element == field  # the token field has the focus
    field.clear()
    field.send_keys(token + Keys.ENTER)


@pytest.fixture
def signed_in(server, browser):
    """The browser, signed in (through the sign-in page whenever the session's cookie is missing)."""
    browser.get(server.base + "/ui/databases")
    wait(browser, lambda d: "/ui/signin" in d.current_url or d.current_url.endswith("/ui/databases"))
    if "/ui/signin" in browser.current_url:
        sign_in(browser, server)
        wait(browser, lambda d: d.current_url.endswith("/ui/databases"))
    browser.get_log("browser")  # what earlier pages logged is theirs
    return browser


# -- the journeys ----------------------------------------------------------------------------------
def test_sign_in(server, browser, tmp_path):
    database(server, "signin", {"coffee": jpeg("coffee")})
    d = browser
    d.delete_all_cookies()
    d.get(server.base + "/ui/db/signin")
    wait(d, lambda _: "/ui/signin" in d.current_url)
    sign_in(d, server, "not-the-token")
    wait(d, lambda _: "not the server's token" in text(d, "#signin-failed"))
    assert css(d, "#token").get_attribute("aria-invalid") == "true"
    sign_in(d, server)
    wait(d, lambda _: d.current_url.endswith("/ui/db/signin"))  # back where it was going
    assert css(d, "main h1").text == "Database signin" and "Sign out" in css(d, "header").text
    images_loaded(d, "#grid .tile img")
    screenshot(d, tmp_path, "signed-in", photos=True)
    no_page_errors(d, "status of 401")


def test_drop_a_photo_on_the_search_page_and_see_it_first(server, signed_in, tmp_path):
    photos = {name: jpeg(name) for name in ("coffee", "rocket", "chelsea", "astronaut")}
    database(server, "dropped", photos)
    d = signed_in
    d.get(server.base + "/ui/search?db=dropped")
    assert not css(d, ".crop-stage").is_displayed()  # no query yet: no empty preview either
    query = encode(crop(photo("rocket"), 0.8), quality=85)
    d.execute_script("""
        const [selector, data] = arguments;
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'rocket-crop.jpg', {type: 'image/jpeg'}));
        const zone = document.querySelector(selector);
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, "[data-drop-for=image]", base64.b64encode(query).decode())  # fmt: skip
    assert d.execute_script("return document.getElementById('image').files[0].name") == "rocket-crop.jpg"
    images_loaded(d, ".crop-stage .crop-image")  # the dropped photo is shown, ready for a box
    swapped(d, "#results", lambda: css(d, "#search-form button[type=submit]").click())
    assert d.current_url.endswith("/ui/search?db=dropped")  # htmx swapped the results in place
    assert groups(d)[0] == "rocket", groups(d)
    assert re.search(r"\d+ hits \(compared with 4 images\)", css(d, "#results").text)
    images_loaded(d, "#results .tile img")
    screenshot(d, tmp_path, "dropped", photos=True)
    no_page_errors(d)


def side_by_side(left: str, right: str, height: int = 400) -> tuple[bytes, float]:
    """Two photos side by side at one height, as a JPEG, and the share of the width the left one takes."""
    images = [Image.fromarray(photo(n)) for n in (left, right)]
    images = [im.resize((round(im.width * height / im.height), height), Image.BICUBIC) for im in images]
    both = Image.new("RGB", (images[0].width + images[1].width, height))
    both.paste(images[0], (0, 0))
    both.paste(images[1], (images[0].width, 0))
    return encode(both, quality=90), images[0].width / both.width


def test_a_box_dragged_on_the_query_finds_the_photo_in_it(server, signed_in, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    database(server, "scenes", {name: jpeg(name) for name in ("coffee", "rocket", "astronaut", "camera")})
    d = signed_in
    query, split = side_by_side("coffee", "rocket")
    path = tmp_path / "coffee-and-rocket.jpg"
    path.write_bytes(query)
    d.get(server.base + "/ui/search?db=scenes")
    css(d, "#image").send_keys(str(path))  # picked with the file chooser
    images_loaded(d, ".crop-stage .crop-image")
    swapped(d, "#results", lambda: css(d, "#search-form button[type=submit]").click())
    whole = groups(d)
    assert whole[0] != "rocket" and "rocket" in whole, whole  # the whole picture: the bigger, busier coffee

    # A box over the right half, dragged with the mouse from its top-left corner to its bottom-right one.
    stage = css(d, ".crop-stage")
    size = css(d, ".crop-image").size
    w, h = size["width"], size["height"]
    (ActionChains(d).move_to_element_with_offset(stage, round((split - 0.5) * w) + 3, -h // 2 + 3).click_and_hold()
     .move_by_offset(round((1 - split) * w) - 8, h // 2).move_by_offset(0, h // 2 - 8).release().perform())  # fmt: skip
    x, y, bw, bh = (float(css(d, f"#crop_{k}").get_attribute("value")) for k in "xywh")
    px, py = 1 / w, 1 / h  # a pixel, as a fraction; the box is the drag's, within a few pixels
    assert abs(x - split) < 6 * px and y < 6 * py and abs(x + bw - 1) < 10 * px and abs(y + bh - 1) < 10 * py, \
        (x, y, bw, bh, w, h)  # fmt: skip
    box = css(d, ".crop-box")
    assert box.is_displayed() and abs(box.size["width"] - bw * w) < 4 and abs(box.size["height"] - bh * h) < 4
    swapped(d, "#results", lambda: css(d, "#search-form button[type=submit]").click())
    boxed = groups(d)
    assert boxed[0] == "rocket", (whole, boxed)
    assert [float(css(d, f"#crop_{k}").get_attribute("value")) for k in "xywh"] == [x, y, bw, bh]  # kept
    images_loaded(d, "#results .tile img")
    d.execute_script("window.scrollTo(0, 0)")
    with Image.open(screenshot(d, tmp_path, "region", photos=True)) as shot:
        assert shot.convert("RGB").getpixel((2, 2)) == (255, 255, 255)  # the box shades the query, not the page
    # "Whole image" clears the box: the whole picture again.
    css(d, ".crop-clear").click()
    assert not css(d, ".crop-box").is_displayed() and css(d, "#crop_x").get_attribute("value") == ""
    swapped(d, "#results", lambda: css(d, "#search-form button[type=submit]").click())
    assert groups(d) == whole
    no_page_errors(d)


def test_more_like_this_finds_the_near_duplicates_first(server, signed_in, tmp_path):
    astronaut = photo("astronaut")
    images = {"astronaut": encode(astronaut), "astronaut-crop": encode(crop(astronaut)),
              "astronaut-small": encode(resize(astronaut, 0.5))}  # fmt: skip
    images |= {name: jpeg(name) for name in ("coffee", "rocket", "camera", "chelsea")}
    database(server, "dups", images)
    d = signed_in
    d.get(server.base + "/ui/databases")
    css(d, "main table a[href='/ui/db/dups']").click()
    wait(d, lambda _: d.current_url.endswith("/ui/db/dups"))
    assert set(groups(d, "#grid")) == set(images)
    css(d, "a[aria-label='More like image 0 of group astronaut']").click()
    wait(d, lambda _: "/ui/search?" in d.current_url and "hits" in text(d, "#results"))
    assert "More like image 0 of group astronaut" in css(d, "#results").text
    found = groups(d)
    assert set(found[:2]) == {"astronaut-crop", "astronaut-small"} and "astronaut" not in found, found
    scores = [float(e.text.split()[-1]) for e in all_css(d, "#results .score")]
    assert scores == sorted(scores, reverse=True) and scores[1] > scores[2] + 0.3, scores
    assert css(d, "#db").get_attribute("value") == "dups"  # the form is ready to search the same database
    images_loaded(d, "#results img")
    screenshot(d, tmp_path, "more-like-this", photos=True)
    no_page_errors(d)


def test_compare_two_photos_shows_their_similarity(server, signed_in, tmp_path):
    a, b = jpeg("coffee"), encode(crop(photo("coffee")), quality=90)
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path, data in zip(paths, (a, b), strict=True):
        path.write_bytes(data)
    d = signed_in
    css(d, "nav a[href='/ui/compare']").click()
    wait(d, lambda _: d.current_url.endswith("/ui/compare"))
    css(d, "#image_a").send_keys(str(paths[0]))
    css(d, "#image_b").send_keys(str(paths[1]))
    swapped(d, "#comparison", lambda: css(d, "#compare-form button[type=submit]").click())
    shown = re.fullmatch(r"Similarity (-?\d\.\d{4}) \(cosine (-?\d\.\d{4})\)", css(d, "#comparison .similarity").text)
    assert shown, css(d, "#comparison").text
    similarity, cosine = server.service.match(a, b)
    assert abs(float(shown.group(1)) - similarity) <= 5e-5 + 1e-7 and abs(float(shown.group(2)) - cosine) <= 5e-5
    assert similarity > 0.8  # a crop of the same photo
    images_loaded(d, "#comparison img")
    screenshot(d, tmp_path, "compare", photos=True)
    no_page_errors(d)


def test_delete_asks_first_then_the_image_is_gone(server, signed_in, tmp_path):
    database(server, "trash", {name: jpeg(name) for name in ("coffee", "rocket", "camera")})
    d = signed_in
    d.get(server.base + "/ui/db/trash")
    delete = "a[aria-label='Delete image 0 of group rocket']"
    css(d, delete).click()
    wait(d, lambda _: "/ui/db/trash/delete?" in d.current_url)
    assert "Delete image 0 of group rocket of database trash?" in css(d, "main [role=alert]").text
    images_loaded(d, "main .tile img")
    screenshot(d, tmp_path, "confirm-delete", photos=True)
    css(d, "form.confirm a").click()  # Cancel: nothing deleted
    wait(d, lambda _: d.current_url.endswith("/ui/db/trash"))
    assert "rocket" in groups(d, "#grid") and server.service.get_image("trash", "rocket", 0)
    css(d, delete).click()
    wait(d, lambda _: "/ui/db/trash/delete?" in d.current_url)
    css(d, "form.confirm button.danger").click()
    wait(d, lambda _: "Deleted image 0 of group rocket." in text(d, "main .notice"))
    assert sorted(groups(d, "#grid")) == ["camera", "coffee"]
    with pytest.raises(LookalikeError) as err:
        server.service.get_image("trash", "rocket", 0)
    assert err.value.reason == "IMAGE_NOT_FOUND"
    images_loaded(d, "#grid .tile img")
    screenshot(d, tmp_path, "deleted", photos=True)
    no_page_errors(d)


# -- more of the same pages -----------------------------------------------------------------------
def test_search_errors_show_in_place(server, signed_in, tmp_path):
    database(server, "errors", {"coffee": jpeg("coffee")})
    d = signed_in
    d.get(server.base + "/ui/search?db=errors")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    css(d, "#image").send_keys(str(broken))
    swapped(d, "#results", lambda: css(d, "#search-form button[type=submit]").click())
    assert "IMAGE" in text(d, "#results [role=alert]")  # the reason, in place of the hits
    # A page-level refusal (a stale CSRF value) replaces the page's content with the reason.
    d.execute_script("document.body.setAttribute('hx-headers', JSON.stringify({'X-CSRF-Token': 'stale'}))")
    path = tmp_path / "coffee.jpg"
    path.write_bytes(jpeg("coffee"))
    css(d, "#image").send_keys(str(path))
    css(d, "#search-form button[type=submit]").click()
    wait(d, lambda _: "CSRF_INVALID" in text(d, "main"))
    no_page_errors(d, "status of 400", "status of 403")


def test_add_files_with_progress_and_failures(server, signed_in, tmp_path):
    server.service.create_database("added", keep="thumbnail")
    d = signed_in
    paths = []
    for name in ("astronaut", "camera"):
        paths.append(tmp_path / f"{name}.jpg")
        paths[-1].write_bytes(jpeg(name))
    paths.append(tmp_path / "broken.jpg")
    paths[-1].write_bytes(b"not a picture")
    d.get(server.base + "/ui/add?db=added")
    css(d, "#images").send_keys("\n".join(str(p) for p in paths))
    css(d, "#add-form button[type=submit]").click()
    wait(d, lambda _: "3 of 3 sent" in text(d, "#add-count"), timeout=180)
    assert "1 failed" in css(d, "#add-count").text
    assert css(d, "#add-progress").get_attribute("value") == "3"
    rows = [e.text for e in all_css(d, "#add-results li")]
    assert len(rows) == 3 and any(r.startswith("broken.jpg: failed") for r in rows), rows
    assert server.service.get_image("added", "astronaut", 0).attributes["source"] == "astronaut.jpg"
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


def test_add_a_folder_keeps_each_images_path_as_its_source(server, signed_in, tmp_path):
    """The folder picker (``webkitdirectory``): every image below it is added, a file that is not an image and a
    hidden one are left out, and each image's path within the folder becomes its source."""
    server.service.create_database("trip", keep="thumbnail")
    d = signed_in
    folder = tmp_path / "trip"
    (folder / "day1").mkdir(parents=True)
    (folder / "day1" / "rocket.jpg").write_bytes(jpeg("rocket"))
    (folder / "coffee.jpg").write_bytes(jpeg("coffee"))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    d.get(server.base + "/ui/add?db=trip")
    css(d, "#folder").send_keys(str(folder))
    css(d, "#add-form button[type=submit]").click()
    wait(d, lambda _: "2 of 2 sent" in text(d, "#add-count"), timeout=180)
    assert "failed" not in css(d, "#add-count").text
    sources = {server.service.get_image("trip", g, 0).attributes["source"] for g in ("rocket", "coffee")}
    assert sources == {"trip/day1/rocket.jpg", "trip/coffee.jpg"}, sources
    assert server.service.get_database("trip").size == 2
    no_page_errors(d)

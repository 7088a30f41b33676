"""Keyboard and label basics of the web console: every control reachable with the keyboard, and named.

From the HTML of every page: the tab order is the document's (no positive ``tabindex``); nothing but links,
buttons and form controls is made clickable (no inline handlers, no htmx trigger on a ``div``); every link, button
and field has a name (its text, a ``<label for>``, ``aria-label``); each drop zone holds a real, labelled file
input, which is the keyboard's one tab stop for it (the zone is not a second one); the crop box, drawn with a
pointer, has four labelled fields to type the region in.

In headless Chromium (skipped without it, as ``test_console_browser.py``): sign in with the keyboard; Tab visits
every focusable element of each page once, in document order, each with a name the browser computes, the
file inputs and no drop zone among them; an image pasted (Ctrl+V) becomes the query; a region typed in the fields (no
pointer) draws the box and searches by it.
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import requests
from console_helpers import fresh, jpeg, signed_in, start_console, wait
from photos import photo
from PIL import Image

TOKEN = "console-keyboard-token-0123456789"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
CONTROLS = {"a", "button", "input", "select", "textarea"}
TRIGGERS = ("hx-get", "hx-post", "hx-put", "hx-patch", "hx-delete", "hx-trigger")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_console(tmp_path_factory, TOKEN)
    fresh(running, "kb")
    for name in ("coffee", "rocket"):
        running.service.set_image("kb", name, 0, jpeg(photo(name)), None, attributes={"source": f"{name}.jpg"})
    yield running
    running.stop(0)


PAGES = ["/ui/databases", "/ui/db/kb", "/ui/db/kb/delete?group=coffee", "/ui/db/kb/delete?group=coffee&intra=0",
         "/ui/search?db=kb", "/ui/search?db=kb&group=coffee&intra=0", "/ui/compare", "/ui/add?db=kb", "/ui/status",
         "/ui/db/nope"]  # fmt: skip


class Page(HTMLParser):
    """Every element of a page with its attributes, its text, and the drop zone it is in (``zone``)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[dict[str, str]] = []
        self.open: list[dict[str, str]] = []
        self.feed(html)
        self.by_id = {e["id"]: e for e in self.elements if e.get("id")}
        self.labels = {e["for"]: e["text"] for e in self.elements if e["tag"] == "label" and e.get("for")}

    def handle_starttag(self, tag, attrs):
        zone = next((e["data-drop-for"] for e in reversed(self.open) if e.get("data-drop-for")), "")
        element = {**{k: v or "" for k, v in attrs}, "tag": tag, "text": "", "zone": zone}
        self.elements.append(element)
        if tag not in VOID:
            self.open.append(element)

    def handle_data(self, data):
        words = " ".join(data.split())
        for e in self.open if words else ():
            e["text"] = f"{e['text']} {words}".strip()

    def handle_endtag(self, tag):
        while self.open and self.open.pop()["tag"] != tag:  # an element closed implicitly (</p>, </li>)
            pass

    def name(self, e: dict[str, str]) -> str:
        """What a screen reader calls the element (the parts of the accessible name these pages use)."""
        by = " ".join(self.by_id.get(i, {}).get("text", "") for i in e.get("aria-labelledby", "").split())
        label, text = self.labels.get(e.get("id", ""), ""), e["text"] if e["tag"] in ("a", "button") else ""
        return (e.get("aria-label") or by or label or text or e.get("alt", "")).strip()


def keyboard_problems(html: str) -> list[tuple[str, ...]]:
    page, problems = Page(html), []
    for e in page.elements:
        tag, tabindex, what = e["tag"], e.get("tabindex"), e.get("id") or e.get("class") or e["text"][:40]
        if tabindex not in (None, "0", "-1") or (tabindex == "-1" and tag != "main"):  # main: the skip link's target
            problems.append(("tab order", tag, what, tabindex))
        if any(k.startswith("on") for k in e) or (tag not in CONTROLS | {"form"} and any(k in e for k in TRIGGERS)):
            problems.append(("clickable, not a control", tag, what))
        if tag == "a" and not e.get("href"):
            problems.append(("a link without href: not focusable", what))
        if (tag in CONTROLS or tabindex == "0") and e.get("type") != "hidden" and not page.name(e):
            problems.append(("no name", tag, what))
        if tabindex == "0" and tag not in CONTROLS:  # a drop zone too: its file input is the stop, not a second one
            problems.append(("a tab stop that is not a control", tag, what))
        if e.get("data-drop-for"):  # the keyboard's way in: the real, labelled file input inside the zone
            field = page.by_id.get(e["data-drop-for"], {})
            if not (e.get("role") and field.get("type") == "file" and field["zone"] == e["data-drop-for"]
                    and page.labels.get(field["id"]) and "tabindex" not in field):  # fmt: skip
                problems.append(("a drop zone without its labelled file input", what))
    if any("crop-stage" in e.get("class", "") for e in page.elements):  # the box has fields to type it in
        for k in "xywh":
            field = page.by_id.get(f"crop_{k}", {})
            if field.get("tag") != "input" or field.get("type", "text") not in ("text", "number") or \
                    "readonly" in field or "disabled" in field or not page.labels.get(f"crop_{k}"):  # fmt: skip
                problems.append(("the region cannot be typed", f"crop_{k}"))
    return problems


def test_every_control_is_reachable_and_named(server):
    s, _ = signed_in(server, TOKEN)
    for path in PAGES + ["/ui/signin"]:
        r = (s if path != "/ui/signin" else requests).get(server.base + path, timeout=60)
        assert r.status_code in (200, 404), (path, r.status_code)
        assert keyboard_problems(r.text) == [], path
        page = Page(r.text)
        assert [e["href"] for e in page.elements if e["tag"] == "a"][:1] == ["#main"] and "main" in page.by_id, path
        assert any(e["tag"] in ("input", "select", "button") for e in page.elements), path
    # The checks see what they look for: each of these breaks one rule.
    broken = [
        '<div tabindex="1">x</div>',
        '<div class="tile" hx-get="/ui/x">x</div>',
        '<span onclick="go()">x</span>',
        "<a>More</a>",
        '<input id="q">',
        '<select id="db"><option>shop</option></select>',
        '<button type="submit"></button>',
        '<div class="drop" role="group" aria-label="Query" data-drop-for="image"><p>Drop</p></div>',
        '<div class="drop" tabindex="0" role="group" aria-label="Query" data-drop-for="image"><label for="image">Q'
        '</label><input id="image" type="file"></div>',  # two tab stops for one picker
        '<div class="crop-stage"></div><label for="crop_x">Left</label><input id="crop_x" readonly>',
    ]
    assert all(keyboard_problems(html) for html in broken), [html for html in broken if not keyboard_problems(html)]


# -- in a real browser ------------------------------------------------------------------------------
FOCUSABLE = """
    const all = document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea, [tabindex]');
    const order = [...all].filter(e => e.tabIndex >= 0 && !e.disabled && e.getClientRects().length > 0);
    order.forEach((e, i) => { e.dataset.tabOrder = String(i); });
    return order.length;
"""


def in_chromium(test):
    missing = CHROMIUM is None or DRIVER is None
    why = "no browser: install Debian's chromium and chromium-driver (scripts/install-browser.sh)"
    marks = (pytest.mark.browser, pytest.mark.slow, pytest.mark.skipif(missing, reason=why))
    for mark in marks:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def chromium(server):
    """Headless Chromium, signed in with the keyboard alone: the token field has the focus; type, Tab, Enter."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
                "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        d.get(server.base + "/ui/databases")
        wait(d, lambda _: "/ui/signin" in d.current_url)
        assert d.switch_to.active_element.get_attribute("id") == "token"
        press(d, TOKEN, Keys.TAB)
        assert d.switch_to.active_element.text == "Sign in"
        press(d, Keys.ENTER)
        wait(d, lambda _: d.current_url.endswith("/ui/databases"))
        yield d
    finally:
        d.quit()


def press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


@in_chromium
def test_tab_reaches_every_control_of_every_page_in_order(server, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = chromium
    for path in PAGES:
        d.get(server.base + path)
        count = d.execute_script(FOCUSABLE)
        visited = []
        for _ in range(count):
            press(d, Keys.TAB)
            focused = d.switch_to.active_element
            visited.append((focused.get_attribute("data-tab-order"), focused.accessible_name.strip()))
        assert [i for i, _ in visited] == [str(i) for i in range(count)], (path, visited)
        assert all(name for _, name in visited), (path, visited)
        assert count >= 7, (path, visited)  # the skip link, the menu, sign out, and the page's own
    # One tab stop per picker: the file input itself (the browser's own control), never its drop zone.
    d.get(server.base + "/ui/search?db=kb")
    d.execute_script(FOCUSABLE)
    stops = d.execute_script("return [...document.querySelectorAll('[data-tab-order]')].map(e => e.id || e.tagName)")
    assert "image" in stops and not d.find_elements(By.CSS_SELECTOR, "[data-drop-for][data-tab-order]"), stops
    # Ctrl+V: an image pasted on the page becomes the query (what the clipboard holds is given to the event here).
    pasted = d.execute_script("""
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array([255, 216, 255])], 'pasted.jpg', {type: 'image/jpeg'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
        const input = document.getElementById('image');
        return input.files.length + ':' + input.files[0].name;
    """)  # fmt: skip
    assert pasted == "1:pasted.jpg"


@in_chromium
def test_a_region_typed_in_the_fields_draws_the_box_and_searches_by_it(server, chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    halves = [np.asarray(Image.fromarray(photo(n)).resize((320, 320))) for n in ("coffee", "rocket")]
    query = tmp_path / "coffee-and-rocket.jpg"
    query.write_bytes(jpeg(np.hstack(halves)))
    d = chromium
    d.get(server.base + "/ui/search?db=kb")
    d.find_element(By.ID, "image").send_keys(str(query))  # the file chooser: the browser's own, not the page's
    d.find_element(By.ID, "crop_x").click()
    press(d, "0.5", Keys.TAB, "0", Keys.TAB, "0.5", Keys.TAB, "1")
    box = d.find_element(By.CSS_SELECTOR, ".crop-box")
    wait(d, lambda _: box.is_displayed())
    image = d.find_element(By.CSS_SELECTOR, ".crop-image").size
    assert abs(box.size["width"] - image["width"] / 2) < 4 and abs(box.size["height"] - image["height"]) < 4
    press(d, Keys.ENTER)  # submits the form from the field
    wait(d, lambda _: re.search(r"hits? \(compared", d.find_element(By.ID, "results").text))
    first = d.find_element(By.CSS_SELECTOR, "#results .tile .group a").text
    assert first == "rocket", d.find_element(By.ID, "results").text

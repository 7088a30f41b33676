"""The web console at /ui, used the way a browser uses it: sign in, look, search, compare, add, delete.

A real server (default model, a token, the HTTP port) and ``requests`` with a cookie jar: every page and
form, the sign-in and CSRF rules (nothing answers without both), and that what the pages say is true
(the registered group is in the grid, a real photo's crop finds that photo, a delete deletes).
"""

from __future__ import annotations

import re
import time
from html import unescape
from html.parser import HTMLParser

import numpy as np
import pytest
import requests
from lookalike.server.core.calls import BulkItem
from lookalike.server.core.errors import LookalikeError
from photos import crop, encode, photo

TOKEN = "console-token-0123456789abcdef"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, http_port=0, token=TOKEN, snapshot_interval_s=0,
                                         data_dir=tmp_path_factory.mktemp("console")))  # fmt: skip
    running.base = f"http://127.0.0.1:{running.http_port}"
    yield running
    running.stop(0)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def signed_in(server) -> tuple[requests.Session, str]:
    """A browser session after signing in: (session, the CSRF value its forms carry)."""
    s = requests.Session()
    page = s.get(server.base + "/ui/signin", timeout=30)
    assert page.status_code == 200
    r = s.post(server.base + "/ui/signin", data={"token": TOKEN, "csrf": csrf_of(page.text), "next": "/ui/status"},
               allow_redirects=False, timeout=30)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/ui/status"
    assert s.cookies.get("lookalike_console", path="/ui")
    return s, csrf_of(s.get(server.base + "/ui/databases", timeout=30).text)


@pytest.fixture
def browser(server):
    s, csrf = signed_in(server)
    yield s, csrf
    s.close()


def jpeg(arr: np.ndarray) -> bytes:
    return encode(arr, "JPEG", quality=92)


def fresh(server, name: str, keep: str = "thumbnail") -> str:
    try:
        server.service.delete_database(name)
    except LookalikeError:
        pass
    server.service.create_database(name, keep=keep)
    return name


def text_of(html: str) -> str:
    text = unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))
    return re.sub(r" ([:?.,)])", r"\1", text)


# -- sign-in, CSRF ---------------------------------------------------------------------------------
PAGES = ["/ui/databases", "/ui/db/x", "/ui/db/x/delete?group=g", "/ui/search", "/ui/search?db=x&group=g&intra=0",
         "/ui/compare", "/ui/add", "/ui/status", "/ui/thumbnail?db=x&group=g&intra=0"]  # fmt: skip
FORMS = ["/ui/db/x/delete", "/ui/search", "/ui/compare", "/ui/add"]


def test_nothing_answers_without_signing_in(server):
    fresh(server, "x")
    server.service.set_image("x", "g", None, jpeg(photo("coffee")), None)
    anon = requests.Session()
    page = anon.get(server.base + "/ui/signin", timeout=30)  # gives this browser a CSRF cookie
    csrf = csrf_of(page.text)
    for path in PAGES:
        r = anon.get(server.base + path, allow_redirects=False, timeout=30)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin?next="), path
        assert "image/" not in r.headers.get("content-type", "")
    for path in FORMS:  # with a valid CSRF pair, but no session
        r = anon.post(server.base + path, data={"csrf": csrf, "group": "g", "db": "x"}, timeout=30)
        assert r.status_code == 401 and "TOKEN_INVALID" in r.text, path
    # A token in the PAI Authorization header is not a console session either.
    r = requests.get(server.base + "/ui/databases", headers={"Authorization": TOKEN}, allow_redirects=False,
                     timeout=30)  # fmt: skip
    assert r.status_code == 303
    assert server.service.get_image("x", "g", 0)  # nothing was deleted


def test_a_wrong_token_is_refused(server):
    s = requests.Session()
    csrf = csrf_of(s.get(server.base + "/ui/signin", timeout=30).text)
    r = s.post(server.base + "/ui/signin", data={"token": TOKEN + "x", "csrf": csrf}, allow_redirects=False,
               timeout=30)  # fmt: skip
    assert r.status_code == 401 and "not the server&#39;s token" in r.text
    assert "lookalike_console" not in r.headers.get("set-cookie", "")
    assert s.get(server.base + "/ui/databases", allow_redirects=False, timeout=30).status_code == 303
    # A forged session cookie is no better.
    s.cookies.set("lookalike_console", "guess", path="/ui")
    assert s.get(server.base + "/ui/databases", allow_redirects=False, timeout=30).status_code == 303


def test_sign_in_needs_csrf_and_sets_a_strict_http_only_cookie(server):
    s = requests.Session()
    s.get(server.base + "/ui/signin", timeout=30)
    r = s.post(server.base + "/ui/signin", data={"token": TOKEN}, allow_redirects=False, timeout=30)
    assert r.status_code == 403 and "CSRF_INVALID" in r.text
    csrf = s.cookies.get("lookalike_csrf")
    r = s.post(server.base + "/ui/signin", data={"token": TOKEN, "csrf": csrf, "next": "https://evil.example/"},
               allow_redirects=False, timeout=30)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/ui/databases"  # never off-site
    cookie = r.headers["set-cookie"].lower()
    assert "lookalike_console=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "path=/ui" in cookie and "secure" not in cookie  # plain HTTP here; Secure over TLS
    page = s.get(server.base + "/ui/databases", timeout=30)
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    assert "no token configured" not in page.text
    r = s.post(server.base + "/ui/signout", data={"csrf": csrf}, allow_redirects=False, timeout=30)
    assert r.status_code == 303
    assert s.get(server.base + "/ui/databases", allow_redirects=False, timeout=30).status_code == 303


def test_every_form_checks_csrf(server, browser):
    s, csrf = browser
    fresh(server, "x")
    server.service.set_image("x", "g", None, jpeg(photo("coffee")), None)
    files = {"image": ("a.jpg", jpeg(photo("coffee")), "image/jpeg")}
    for path in FORMS:
        for sent in ({}, {"csrf": "A" * 43}, {"csrf": ""}):
            r = s.post(server.base + path, data={**sent, "db": "x", "group": "g"}, files=files, timeout=30)
            assert r.status_code == 403 and "CSRF_INVALID" in r.text, (path, sent)
    # Sent by htmx, a refusal replaces the page's content (not only the part the form asked for).
    r = s.post(server.base + "/ui/search", data={"db": "x"}, files=files, headers={"HX-Request": "true"}, timeout=30)
    assert r.status_code == 403 and r.headers["hx-retarget"] == "#main" and r.headers["hx-reselect"] == "#main"
    # The header htmx and the page's script send works like the field.
    r = s.post(server.base + "/ui/db/x/delete", data={"group": "g", "intra": "0"}, allow_redirects=False,
               headers={"X-CSRF-Token": csrf}, timeout=30)  # fmt: skip
    assert r.status_code == 303
    with pytest.raises(LookalikeError):
        server.service.get_image("x", "g", 0)


def test_the_static_files_are_vendored(server):
    r = requests.get(server.base + "/ui/static/htmx.min.js", timeout=30)
    assert r.status_code == 200 and r.text.startswith("/*! htmx 2.0.4") and "javascript" in r.headers["content-type"]
    assert requests.get(server.base + "/ui/static/console.js", timeout=30).status_code == 200
    assert "Zero-Clause BSD" in requests.get(server.base + "/ui/static/htmx.LICENSE", timeout=30).text
    assert requests.get(server.base + "/ui/static/..%2Fsession.py", timeout=30).status_code == 404


# -- pages -----------------------------------------------------------------------------------------
def test_databases_and_a_database_grid(server, browser):
    s, _ = browser
    fresh(server, "shop")
    server.service.set_image("shop", "sku-cat", None, jpeg(photo("chelsea")), None,
                             attributes={"source": "cat.jpg", "category": "pets"})  # fmt: skip
    server.service.set_image("shop", "sku-mug", None, jpeg(photo("coffee")), None,
                             attributes={"source": "mug.jpg", "category": "kitchen"})  # fmt: skip
    page = s.get(server.base + "/ui/databases", timeout=30)
    row = re.search(r"<tr>\s*<th scope=\"row\"><a href=\"/ui/db/shop\">shop</a></th>(.*?)</tr>", page.text, re.S)
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells[0] == server.service.model_name and cells[1:3] == ["2", "2"] and cells[4] == "thumbnail"
    assert cells[-1] == "not snapshotted yet"
    snap = server.service.snapshot_database("shop")
    cells = re.findall(
        r"<td>(.*?)</td>",
        re.search(
            r"<a href=\"/ui/db/shop\">shop</a></th>(.*?)</tr>",
            s.get(server.base + "/ui/databases", timeout=30).text,
            re.S,
        ).group(1),
    )
    assert cells[-1] == f"{snap.size_bytes / 1000:.1f} KB", (cells, snap.size_bytes)  # its snapshot's files
    grid = s.get(server.base + "/ui/db/shop", timeout=30).text
    assert "sku-cat" in grid and "sku-mug" in grid and "cat.jpg" in grid and "pets" in grid
    src = unescape(re.search(r'<img src="(/ui/thumbnail\?db=shop&amp;group=sku-cat&amp;intra=0)" loading="lazy"',
                             grid).group(1))  # fmt: skip
    thumb = s.get(server.base + src, timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.headers["cache-control"] == "private, max-age=31536000, immutable"
    etag = thumb.headers["etag"]
    assert etag == '"' + server.service.kept_image("shop", "sku-cat", 0, "thumbnail").digest + '"'
    assert s.get(server.base + src, headers={"If-None-Match": etag}, timeout=30).status_code == 304
    # Filters: a group prefix, and attributes.
    only_cat = s.get(server.base + "/ui/db/shop", params={"group_prefix": "sku-c"}, timeout=30).text
    assert "sku-cat" in only_cat and "mug.jpg" not in only_cat
    kitchen = s.get(server.base + "/ui/db/shop", params={"where": "category=kitchen"}, timeout=30).text
    assert "mug.jpg" in kitchen and "cat.jpg" not in kitchen
    assert "No image matches" in s.get(server.base + "/ui/db/shop", params={"where": "category=cars"}, timeout=30).text
    bad = s.get(server.base + "/ui/db/shop", params={"where": "nonsense"}, timeout=30)
    assert bad.status_code == 400 and "WHERE_INVALID" in bad.text


def test_paging_and_images_not_kept(server, browser):
    s, _ = browser
    fresh(server, "vectors", keep="none")
    rng = np.random.default_rng(0)
    for i in range(60):
        server.service.set_image("vectors", f"g{i:03d}", None, None, rng.standard_normal(server.service.dimension),
                                 attributes={"source": f"file-{i:03d}.png"})  # fmt: skip
    first = s.get(server.base + "/ui/db/vectors", timeout=30).text
    assert first.count('class="tile"') == 48 and "g000" in first and "g048" not in first
    assert "not kept" in first and "file-000.png" in first and "/ui/thumbnail" not in first
    following = unescape(re.search(r'href="(/ui/db/vectors\?[^"]+)" rel="next"', first).group(1))
    second = s.get(server.base + following, timeout=30).text
    assert second.count('class="tile"') == 12 and "g048" in second and "g059" in second and 'rel="next"' not in second
    r = s.get(server.base + "/ui/thumbnail", params={"db": "vectors", "group": "g000", "intra": "0"}, timeout=30)
    assert r.status_code == 404 and "IMAGE_NOT_KEPT" in r.text
    # A group prefix past the first 2,000 images starts where it sorts (it used to scan from the first key).
    many = fresh(server, "many", keep="none")
    vectors = rng.standard_normal((2600, server.service.dimension))
    for i in range(0, 2600, 200):
        server.service.bulk_set(many, [BulkItem(f"h{j:05d}", 0, vector=vectors[j]) for j in range(i, i + 200)])
    deep = s.get(server.base + "/ui/db/many", params={"group_prefix": "h025"}, timeout=30)
    assert deep.text.count('class="tile"') == 48 and "h02500" in deep.text and "h02548" not in deep.text
    assert 'rel="next"' in deep.text and "Look further" not in deep.text
    # Each page says how long it took (service calls and rendering): Server-Timing.
    assert re.fullmatch(r"console;dur=\d+\.\d", deep.headers["server-timing"])


def test_a_database_that_does_not_exist_is_a_404_page(server, browser):
    s, _ = browser
    for path in ("/ui/db/nope", "/ui/db/nope/delete?group=g", "/ui/search?db=nope&group=g&intra=0"):
        r = s.get(server.base + path, timeout=30)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"], path
        assert "DATABASE_NOT_FOUND" in r.text and "nope" in text_of(r.text), path


def test_add_then_search_by_a_dropped_photo_and_a_region(server, browser):
    s, csrf = browser
    fresh(server, "photos")
    files = [("images", (f"{n}.jpg", jpeg(photo(n)), "image/jpeg")) for n in PHOTOS]
    files.append(("images", ("broken.jpg", b"this is not an image", "image/jpeg")))
    r = s.post(server.base + "/ui/add", data={"csrf": csrf, "db": "photos"}, files=files, timeout=300)
    assert r.status_code == 207
    page = text_of(r.text)
    assert "4 of 5 added, 1 failed" in page and "broken.jpg: failed" in page
    assert [e.group_id for e in server.service.group_images("photos", "chelsea")] == ["chelsea"]
    # The page's script sends one file per request and takes the result rows back.
    one = s.post(server.base + "/ui/add", data={"csrf": csrf, "db": "photos", "group": "extra"},
                 files=[("images", ("rocket2.jpg", jpeg(photo("rocket")), "image/jpeg"))],
                 headers={"X-Console-Fetch": "1"}, timeout=120)  # fmt: skip
    assert one.status_code == 200 and one.text.strip().startswith("<li") and "added to group extra as #0" in one.text
    # A crop of the cat finds the cat first.
    query = jpeg(crop(photo("chelsea"), 0.8))
    r = s.post(server.base + "/ui/search", data={"csrf": csrf, "db": "photos", "top_k": "3"},
               files={"image": ("q.jpg", query, "image/jpeg")}, timeout=120)  # fmt: skip
    assert r.status_code == 200
    groups = re.findall(r'class="group">group <a[^>]*>([^<]+)</a>', r.text)
    assert groups[0] == "chelsea" and len(groups) == 3
    scores = [float(x) for x in re.findall(r"score (-?[0-9.]+)</span>", r.text)]
    assert scores == sorted(scores, reverse=True)
    # A region: the box is sent as fractions; without the service's crop support the page says it used the whole.
    r = s.post(server.base + "/ui/search", data={"csrf": csrf, "db": "photos", "top_k": "2", "crop_x": "0.1",
               "crop_y": "0.1", "crop_w": "0.8", "crop_h": "0.8", "one_per_group": "on", "min_score": "-1"},
               files={"image": ("q.jpg", jpeg(photo("chelsea")), "image/jpeg")}, timeout=120)  # fmt: skip
    assert r.status_code == 200 and re.findall(r'class="group">group <a[^>]*>([^<]+)</a>', r.text)[0] == "chelsea"
    assert 'value="0.1000"' in r.text
    outside = {"crop_x": "2", "crop_y": "0", "crop_w": "1", "crop_h": "1"}
    bad = s.post(server.base + "/ui/search", data={"csrf": csrf, "db": "photos", **outside},
                 files={"image": ("q.jpg", query, "image/jpeg")}, timeout=60)  # fmt: skip
    assert bad.status_code == 400 and "CROP_INVALID" in bad.text
    # More like this: a registered-image query, which leaves out the image itself.
    r = s.get(server.base + "/ui/search", params={"db": "photos", "group": "rocket", "intra": "0", "top_k": "2"},
              timeout=120)  # fmt: skip
    hits = re.findall(r'class="group">group <a[^>]*>([^<]+)</a>', r.text)
    assert r.status_code == 200 and hits[0] == "extra" and "More like image 0 of group rocket" in text_of(r.text)
    # A file that is not an image says why.
    r = s.post(server.base + "/ui/search", data={"csrf": csrf, "db": "photos"},
               files={"image": ("x.jpg", b"nope", "image/jpeg")}, timeout=60)  # fmt: skip
    assert r.status_code == 400 and 'role="alert"' in r.text


def test_a_drawn_region_searches_by_that_region(server, browser):
    """Two photos side by side: the left half's box finds the one, the right half's the other."""
    from PIL import Image

    s, csrf = browser
    fresh(server, "halves")
    for name in ("chelsea", "rocket", "coffee"):
        server.service.set_image("halves", name, None, jpeg(photo(name)), None)
    left, right = (np.asarray(Image.fromarray(photo(n)).resize((320, 320))) for n in ("chelsea", "rocket"))
    scene = jpeg(np.hstack([left, right]))

    def first(box: tuple[str, str, str, str]) -> str:
        data = {
            "csrf": csrf,
            "db": "halves",
            "top_k": "1",
            **dict(zip(("crop_x", "crop_y", "crop_w", "crop_h"), box, strict=True)),
        }
        r = s.post(server.base + "/ui/search", data=data, files={"image": ("s.jpg", scene, "image/jpeg")}, timeout=120)
        assert r.status_code == 200
        return re.findall(r'class="group">group <a[^>]*>([^<]+)</a>', r.text)[0]

    assert first(("0", "0", "0.5", "1")) == "chelsea"
    assert first(("0.5", "0", "0.5", "1")) == "rocket"


def test_compare(server, browser):
    s, csrf = browser
    assert s.get(server.base + "/ui/compare", timeout=30).status_code == 200

    def similarity(a: bytes, b: bytes) -> float:
        r = s.post(server.base + "/ui/compare", data={"csrf": csrf},
                   files={"image_a": ("a.jpg", a, "image/jpeg"), "image_b": ("b.jpg", b, "image/jpeg")},
                   timeout=120)  # fmt: skip
        assert r.status_code == 200 and r.text.count('src="data:image') == 2
        return float(re.search(r"Similarity <strong>([0-9.]+)</strong>", r.text).group(1))

    cat = jpeg(photo("chelsea"))
    close, far = similarity(cat, jpeg(crop(photo("chelsea"), 0.85))), similarity(cat, jpeg(photo("rocket")))
    assert 0 <= far < close <= 1
    assert close == pytest.approx(server.service.match(cat, jpeg(crop(photo("chelsea"), 0.85)))[0], abs=1e-3)
    r = s.post(server.base + "/ui/compare", data={"csrf": csrf}, files={"image_a": ("a.jpg", cat, "image/jpeg")},
               timeout=60)  # fmt: skip
    assert r.status_code == 400 and "IMAGE_MISSING" in r.text


def test_delete_an_image_and_a_group_after_confirming(server, browser):
    s, csrf = browser
    fresh(server, "del")
    for name in ("coffee", "rocket"):
        server.service.set_image("del", "mugs", None, jpeg(photo(name)), None)
    server.service.set_image("del", "cats", None, jpeg(photo("chelsea")), None)
    confirm = s.get(server.base + "/ui/db/del/delete", params={"group": "mugs", "intra": "1"}, timeout=30)
    assert confirm.status_code == 200 and "Delete image 1 of group mugs" in text_of(confirm.text)
    assert server.service.get_image("del", "mugs", 1)  # looking is not deleting
    r = s.post(server.base + "/ui/db/del/delete", data={"csrf": csrf, "group": "mugs", "intra": "1"}, timeout=30)
    assert r.status_code == 200 and r.url.startswith(server.base + "/ui/db/del?")
    assert "Deleted image 1 of group mugs" in text_of(r.text)
    with pytest.raises(LookalikeError):
        server.service.get_image("del", "mugs", 1)
    confirm = s.get(server.base + "/ui/db/del/delete", params={"group": "mugs"}, timeout=30)
    assert "Delete group mugs of database del: 1 image?" in text_of(confirm.text)
    r = s.post(server.base + "/ui/db/del/delete", data={"csrf": csrf, "group": "mugs", "intra": ""}, timeout=30)
    assert "Deleted group mugs (1 images)" in text_of(r.text) and 'group_prefix=mugs"' not in r.text
    assert [e.group_id for e in server.service.list_images("del", None, 10, "")[0]] == ["cats"]
    r = s.post(server.base + "/ui/db/del/delete", data={"csrf": csrf, "group": "mugs"}, timeout=30)
    assert r.status_code == 404 and "GROUP_NOT_FOUND" in r.text


def test_status(server, browser):
    s, _ = browser
    requests.post(server.base + "/", json={"function_name": "get"}, headers={"Authorization": TOKEN}, timeout=30)
    page = s.get(server.base + "/ui/status", timeout=30)
    assert page.status_code == 200
    text = text_of(page.text)
    assert server.service.model_name in text and "Databases" in text
    model = next(m for m in server.service.list_models() if m["default"])
    assert model["device"] in ("cpu", "cuda") and model["execution"]
    assert re.search(rf"<td>{model['device']}</td><td>{re.escape(model['execution'])}</td>", page.text)  # where it runs
    assert re.search(r"<th scope=\"row\">[^<]*get</th><td>[1-9]", page.text)  # the PAI call above is counted


# -- the open console, and accessibility ----------------------------------------------------------
def test_without_a_token_the_console_is_open_and_says_so(server):
    from fastapi.testclient import TestClient
    from lookalike.server.transport.http_gateway import PaiGateway
    from lookalike.server.transport.http_server import create_app

    gateway = PaiGateway(server.service, token=None, max_body_bytes=8 << 20, oss=None)
    with TestClient(create_app(gateway)) as c:
        page = c.get("/ui/databases")
        assert page.status_code == 200 and "no token configured" in text_of(page.text)
        assert c.get("/ui/signin", follow_redirects=False).status_code == 303
        r = c.post("/ui/db/x/delete", data={"group": "g"})
        assert r.status_code == 403 and "CSRF_INVALID" in r.text  # open, but still no cross-site forms
        r = c.post("/ui/compare", data={"csrf": csrf_of(c.get("/ui/compare").text)})
        assert r.status_code == 400 and "IMAGE_MISSING" in r.text


class Controls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.labels: set[str] = set()
        self.controls: list[dict[str, str]] = []
        self.button: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "label" and a.get("for"):
            self.labels.add(a["for"])
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append(a)
        if tag == "button":
            self.button = {**a, "text": ""}
            self.controls.append(self.button)

    def handle_data(self, data):
        if self.button is not None:
            self.button["text"] += data.strip()

    def handle_endtag(self, tag):
        if tag == "button":
            self.button = None


def test_every_control_has_a_label(server, browser):
    s, _ = browser
    fresh(server, "a11y")
    server.service.set_image("a11y", "g", None, jpeg(photo("coffee")), None)
    paths = ["/ui/databases", "/ui/db/a11y", "/ui/db/a11y/delete?group=g", "/ui/search?db=a11y", "/ui/compare",
             "/ui/add", "/ui/status", "/ui/search?db=a11y&group=g&intra=0"]  # fmt: skip
    for path in paths + ["/ui/signin"]:
        html = (s if path != "/ui/signin" else requests).get(server.base + path, timeout=60).text
        parser = Controls()
        parser.feed(html)
        assert parser.controls or path in ("/ui/databases", "/ui/status"), path
        for c in parser.controls:
            named = c.get("id") in parser.labels or c.get("aria-label") or c.get("text")
            assert named, (path, c)
            assert c.get("tabindex", "0") == "0", (path, c)  # nothing taken out of the keyboard order
        assert 'href="#main"' in html and '<main id="main"' in html


def test_answers_on_a_kept_alive_connection_are_not_held_for_a_delayed_ack(server, browser):
    """Each answer after the first on a connection took 40 ms more (the body waited for the client's delayed
    ACK: no TCP_NODELAY on the HTTP port's sockets); a grid's thumbnails come over a few such connections."""
    s, _ = browser
    times = []
    for _ in range(8):
        started = time.perf_counter()
        assert s.get(server.base + "/ui/static/console.css", timeout=30).status_code == 200
        times.append(time.perf_counter() - started)
    assert min(times[1:]) < 0.030, times

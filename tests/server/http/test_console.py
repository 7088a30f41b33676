"""The web console at /ui, used the way a browser uses it: sign in, look, search, compare, add, delete.

A real server (default model, a token, the HTTP port) and ``requests`` with a cookie jar: every page and
form, the sign-in and CSRF rules (nothing answers without both), and that what the pages say is true
(the registered group is in the grid, a real photo's crop finds that photo, a delete deletes).
"""

from __future__ import annotations

import re
import time
from html import unescape

import numpy as np
import pytest
import requests
from console_helpers import csrf_of, fresh, jpeg, signed_in, start_console, text_of
from lookalike.server.core.calls import BulkItem
from lookalike.server.core.errors import LookalikeError
from photos import crop, photo

TOKEN = "console-token-0123456789abcdef"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_console(tmp_path_factory, TOKEN)
    yield running
    running.stop(0)


@pytest.fixture
def browser(server):
    s, csrf = signed_in(server, TOKEN)
    yield s, csrf
    s.close()


# -- sign-in, CSRF ---------------------------------------------------------------------------------
# What a browser may ask for before it has signed in (the sign-in page and what it loads), and the forms that
# need no session (signing in and out), but still the CSRF pair. Every other console route needs both.
PUBLIC = {("GET", "/ui/signin"), ("GET", "/ui/static/{name}")}
NO_SESSION = {("POST", "/ui/signin"), ("POST", "/ui/signout")}


def console_routes(server) -> list[tuple[str, str]]:
    """Every (method, path) the HTTP app serves under /ui, read from the app itself: a new route is checked too."""
    from lookalike.server.transport.http_gateway import PaiGateway
    from lookalike.server.transport.http_server import create_app

    try:  # FastAPI 0.16x resolves included routers lazily: their routes are read through it
        from fastapi.routing import iter_route_contexts
    except ImportError:
        iter_route_contexts = list

    app = create_app(PaiGateway(server.service, token=TOKEN, max_body_bytes=8 << 20, oss=None))
    routes = {(m, r.path) for r in iter_route_contexts(app.routes) if r.path.startswith("/ui") for m in r.methods}
    return sorted(routes - {(m, p) for m, p in routes if m == "HEAD"})


def test_nothing_answers_without_signing_in(server):
    fresh(server, "x")
    server.service.set_image("x", "g", None, jpeg(photo("coffee")), None)
    routes = console_routes(server)
    assert PUBLIC | NO_SESSION < set(routes) and len(routes) >= 15, routes
    anon = requests.Session()
    csrf = csrf_of(anon.get(server.base + "/ui/signin", timeout=30).text)  # gives this browser a CSRF cookie
    query = {"db": "x", "group": "g", "intra": "0"}
    for method, path in routes:
        if (method, path) in PUBLIC | NO_SESSION:
            continue
        url = server.base + path.replace("{name}", "x")
        if method == "GET":
            r = anon.get(url, params=query, allow_redirects=False, timeout=30)
            assert r.status_code == 303 and r.headers["location"].startswith("/ui/signin?next="), path
            assert "image/" not in r.headers.get("content-type", "")
            r = anon.get(url, params=query, headers={"HX-Request": "true"}, allow_redirects=False, timeout=30)
        else:  # with a valid CSRF pair, but no session
            assert method == "POST", (method, path)
            r = anon.post(url, data={"csrf": csrf, **query}, allow_redirects=False, timeout=30)
        assert r.status_code == 401 and "TOKEN_INVALID" in r.text, (method, path)
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
    files = {"image": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}  # small enough for the sign-in form's limit
    forms = [path.replace("{name}", "x") for method, path in console_routes(server) if method == "POST"]
    assert len(forms) >= 6, forms  # signin, signout, delete, search, compare, add, and any added later
    no_cookie = requests.Session()  # signed in, but without the CSRF cookie its field's value came from
    no_cookie.cookies.set("lookalike_console", s.cookies.get("lookalike_console"), path="/ui")
    for path in forms:
        for who, sent in [(s, {}), (s, {"csrf": "A" * 43}), (s, {"csrf": ""}), (no_cookie, {"csrf": csrf})]:
            r = who.post(server.base + path, data={**sent, "db": "x", "group": "g", "intra": "0", "token": TOKEN},
                         files=files, allow_redirects=False, timeout=30)  # fmt: skip
            assert r.status_code == 403 and "CSRF_INVALID" in r.text, (path, sent)
    assert server.service.get_image("x", "g", 0) and s.get(server.base + "/ui/status", timeout=30).ok  # still in
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
def test_databases_and_a_database_grid(server, browser, monkeypatch):
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
    assert cells[3] == (server.service.get_database("shop").storage or "local") and cells[-2] == "—"  # no reindex
    assert cells[-1] == "not snapshotted yet"
    running = "operations/reindex-shop-1"  # what the service says of a database being reindexed
    monkeypatch.setattr(server.service, "reindex_of", lambda name: running if name == "shop" else "")
    assert f"<td>{running}</td>" in s.get(server.base + "/ui/databases", timeout=30).text
    assert f"<dt>Reindex</dt><dd>{running}</dd>" in s.get(server.base + "/ui/db/shop", timeout=30).text
    monkeypatch.undo()
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
    thumb, src = thumbnail(s, server, grid, "sku-cat")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert thumb.headers["cache-control"] == "private, max-age=31536000, immutable"
    etag = thumb.headers["etag"]
    assert etag == '"' + server.service.kept_image("shop", "sku-cat", 0, "thumbnail").digest + '"'
    assert s.get(server.base + src, headers={"If-None-Match": etag}, timeout=30).status_code == 304
    # Cached for good under a URL that names its bytes: the image replaced, the grid points elsewhere; the old URL
    # (a page made before) or one without the version gets the new bytes, to be revalidated, never kept as they are.
    server.service.set_image("shop", "sku-cat", 0, jpeg(photo("rocket")), None,
                             attributes={"source": "cat.jpg", "category": "pets"})  # fmt: skip
    new, new_src = thumbnail(s, server, s.get(server.base + "/ui/db/shop", timeout=30).text, "sku-cat")
    assert new_src != src and new.content != thumb.content and new.headers["etag"] != etag
    assert new.headers["cache-control"] == "private, max-age=31536000, immutable"
    for stale in (src, re.sub(r"&v=\w+", "", src)):
        r = s.get(server.base + stale, headers={"If-None-Match": etag}, timeout=30)
        assert r.status_code == 200 and r.content == new.content and r.headers["cache-control"] == "private, no-cache"
    # Filters: a group prefix, and attributes.
    only_cat = s.get(server.base + "/ui/db/shop", params={"group_prefix": "sku-c"}, timeout=30).text
    assert "sku-cat" in only_cat and "mug.jpg" not in only_cat
    kitchen = s.get(server.base + "/ui/db/shop", params={"where": "category=kitchen"}, timeout=30).text
    assert "mug.jpg" in kitchen and "cat.jpg" not in kitchen
    assert "No image matches" in s.get(server.base + "/ui/db/shop", params={"where": "category=cars"}, timeout=30).text
    bad = s.get(server.base + "/ui/db/shop", params={"where": "nonsense"}, timeout=30)
    assert bad.status_code == 400 and "WHERE_INVALID" in bad.text


def thumbnail(s, server, page: str, group: str) -> tuple[requests.Response, str]:
    """The thumbnail the page's tile of ``group`` shows, lazily loaded: (its response, its URL)."""
    src = unescape(re.search(rf'<img src="(/ui/thumbnail\?db=\w+&amp;group={group}&amp;intra=0&amp;v=[0-9a-f]{{16}})"'
                             r' loading="lazy"', page).group(1))  # fmt: skip
    r = s.get(server.base + src, timeout=30)
    assert r.status_code == 200, r.text
    return r, src


def test_paging_and_images_not_kept(server, browser):
    s, _ = browser
    fresh(server, "vectors", keep="none")
    rng = np.random.default_rng(0)
    for i in range(60):
        server.service.set_image("vectors", f"g{i:03d}", None, None, rng.standard_normal(server.service.dimension),
                                 attributes={"source": f"file-{i:03d}.png"})  # fmt: skip
    first = s.get(server.base + "/ui/db/vectors", timeout=30).text
    assert first.count('class="tile"') == 48 and "g000" in first and "g048" not in first
    # Each tile: a placeholder naming its own image's source, in place of a thumbnail.
    placeholder = r'<div class="placeholder" role="img" aria-label="not kept: ([^"]+)">\s*<span>not kept</span>' \
                  r'<span class="source">([^<]+)</span></div>'  # fmt: skip
    shown = re.findall(rf'<figure class="tile">\s*{placeholder}.*?group <a[^>]*>(\w+)</a>', first, re.S)
    assert shown == [(f"file-{i:03d}.png", f"file-{i:03d}.png", f"g{i:03d}") for i in range(48)]
    assert "/ui/thumbnail" not in first and "<img" not in first
    # "More like this" on one: the query too is its placeholder (not a thumbnail that is not there), the hits theirs.
    more = s.get(server.base + "/ui/search", params={"db": "vectors", "group": "g007", "intra": "0", "top_k": "3"},
                 timeout=30).text.split('id="results"')[1]  # fmt: skip
    assert [a for a, _ in re.findall(placeholder, more)][:1] == ["file-007.png"] and "<img" not in more
    assert len(re.findall(rf'<figure class="tile">\s*{placeholder}', more)) == 3
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
    # A region: the box is sent as fractions of the image, and the form shows it back.
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


def request_table(page: str) -> tuple[dict[str, list[float]], float]:
    """The status page's request table, {method: [calls, failed, per second, mean ms, per second recently (or
    None)]}, and its uptime (s)."""
    table = page.split("<caption>Requests since start")[1].split("</table>")[0]
    rows = re.findall(r'<tr><th scope="row">([^<]+)</th>(.*?)</tr>', table, re.S)
    up = float(re.search(r"<dt>Up</dt><dd>(\d+) s</dd>", page).group(1))
    out = {}
    for method, cells in rows:
        calls, failed, per_s, recent, mean_ms = re.findall(r"<td>([^<]*)</td>", cells)
        now = None if recent == "–" else float(recent)
        out[method] = [float(calls), float(failed), float(per_s), float(mean_ms), now]
    return out, up


def test_status(server, browser):
    from lookalike.client import LookalikeClient

    s, _ = browser
    page = s.get(server.base + "/ui/status", timeout=30)
    assert page.status_code == 200
    text = text_of(page.text)
    assert server.service.model_name in text and "Databases" in text
    model = next(m for m in server.service.list_models() if m["default"])
    assert model["device"] in ("cpu", "cuda") and model["execution"]
    assert re.search(rf"<td>{model['device']}</td><td>{re.escape(model['execution'])}</td>", page.text)  # where it runs
    n = len(server.service.all_databases())
    assert re.search(rf"<dt>Databases</dt><dd>{n}</dd>", page.text)
    # Calls on both wires, one refused, show up: every number is the server's own registry's.
    before, _ = request_table(page.text)
    for body in ({"function_name": "get"},) * 3 + ({"function_name": "no_such_function"},):
        requests.post(server.base + "/", json=body, headers={"Authorization": TOKEN}, timeout=30)
    with LookalikeClient(server.address, token=TOKEN, timeout=30) as c:
        c.list_databases()
    after_page = s.get(server.base + "/ui/status", timeout=30).text
    after, up = request_table(after_page)
    assert after["pai/get"][0] == before.get("pai/get", [0])[0] + 3
    assert sum(r[1] for r in after.values()) == sum(r[1] for r in before.values()) + 1
    assert any(m.endswith("ListDatabases") for m in after), after  # gRPC
    counted: dict[str, list[float]] = {}
    for family in server.metrics.registry.collect():
        for x in family.samples:
            row = counted.setdefault(x.labels.get("method", ""), [0, 0, 0])
            if x.name == "lookalike_requests_total":
                row[0] += x.value
                row[1] += x.value if x.labels["code"] != "OK" else 0
            elif x.name == "lookalike_request_seconds_sum":
                row[2] += x.value
    assert set(after) == {m for m, r in counted.items() if r[0]}
    window = float(re.search(r"Per second, last (\d+) s", after_page).group(1))
    for method, (calls, failed, per_s, mean_ms, recent) in after.items():
        assert [calls, failed] == counted[method][:2], method
        assert mean_ms == round(1000 * counted[method][2] / calls, 1), method
        # calls over the server's uptime: the page shows the uptime rounded to the second (a relative error of up to
        # 0.5 / up) and the rate to 3 decimals (5e-4); the two add up (pytest.approx takes the larger of rel and abs)
        assert abs(per_s - calls / up) <= (calls / up) * 0.6 / up + 6e-4, method
        # since an earlier view (this test's first, or one before it): a rate, not the uptime's average
        assert recent is not None and recent * (window + 1) >= calls - before.get(method, [0])[0] - 1e-6, method
    assert after["pai/get"][4] * (window + 1) >= 3


# -- the open console ------------------------------------------------------------------------------
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

"""Console pages that run the model: search (a file, a region of it, or a registered image), compare, add."""

from __future__ import annotations

import base64
import math
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lookalike.server.core.errors import LookalikeError, invalid
from lookalike.server.core.service import Query
from lookalike.server.transport.console import Console
from lookalike.server.transport.console.pages import intra_of, thumbnail_url, tile

PREVIEW_MAX_BYTES = 8 << 20  # a query image is shown back (as a data: URL) only up to this size
SOURCE_MAX_CHARS = 200


def crop_box(form: Any) -> tuple[float, float, float, float] | None:
    """The region drawn on the query, as fractions (x, y, w, h) of its width and height; None for the whole."""
    texts = [str(form.get(f"crop_{k}") or "").strip() for k in "xywh"]
    if not any(texts):
        return None
    try:
        x, y, w, h = (float(t) for t in texts)
    except ValueError:
        raise invalid("CROP_INVALID", "the region's x, y, width and height must be numbers (fractions 0-1)") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or not (0 <= x < 1 and 0 <= y < 1 and 0 < w and 0 < h):
        raise invalid("CROP_INVALID", f"region ({x}, {y}, {w}, {h}) is not inside the image; draw it again")
    w, h = min(w, 1 - x), min(h, 1 - y)
    if (x, y, w, h) == (0, 0, 1, 1):
        return None
    return (x, y, w, h)


def relative_source(filename: str) -> str:
    """A file's name as sent, kept as its ``source``: its path within a chosen or dropped folder
    (``trip/day1/a.jpg``), without anything that climbs out or starts at a root."""
    parts = [p for p in PurePosixPath(filename.replace("\\", "/")).parts if p not in ("/", ".", "..")]
    return "/".join(parts)[-SOURCE_MAX_CHARS:] or "image"


def number(form: Any, name: str, kind: type, default: Any) -> Any:
    text = str(form.get(name) or "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise invalid(f"{name.upper()}_INVALID", f"{name.replace('_', ' ')} {text[:24]!r} is not a number") from None
    return value


async def upload(form: Any, name: str, label: str, *, required: bool = True) -> tuple[bytes, str] | None:
    """(bytes, file name) of a file field; None when none was sent and it is optional."""
    item = form.get(name)
    if item is None or isinstance(item, str) or not item.filename:
        if required:
            raise invalid("IMAGE_MISSING", f"choose, drop or paste {label}")
        return None
    data = await item.read()
    if not data:
        raise invalid("IMAGE_MISSING", f"{label} ({item.filename}) is empty")
    return data, item.filename


def preview(data: bytes | None, media: str = "") -> str:
    if not data or len(data) > PREVIEW_MAX_BYTES:
        return ""
    return f"data:{media or 'image/*'};base64,{base64.b64encode(data).decode()}"


def add_routes(router: APIRouter, console: Console) -> None:

    async def database_names() -> list[str]:
        return [db.name for db in await console.call(console.service.all_databases)]

    def options(source: Any) -> dict[str, Any]:
        return {"top_k": number(source, "top_k", int, 12), "one_per_group": str(source.get("one_per_group") or "")
                in ("on", "1", "true"), "min_score": number(source, "min_score", float, None)}  # fmt: skip

    async def run_search(request: Request, source: Any, query: Query, crop: Any, shown: str,
                         query_tile: Any = None) -> Response:  # fmt: skip
        name = str(source.get("db") or "")
        opts = options(source)
        error, hits, compared = None, [], 0
        try:
            found, compared, _ = await console.call(console.service.search, name, query, top_k=opts["top_k"],
                                                    one_per_group=opts["one_per_group"], min_score=opts["min_score"],
                                                    heavy=True, crop=crop)  # fmt: skip
            hits = [tile(h.group_id, h.intra_id, h.attributes, h.score) for h in found]
        except LookalikeError as err:
            if err.reason in ("DATABASE_NOT_FOUND",):
                raise
            error = err
        status = 200 if error is None else 400
        return console.page(request, "search.html", status, title="Search", section="search",
                            databases=await database_names(), db=name, opts=opts, hits=hits, searched=True,
                            compared=compared, error=error, query_image=shown, query_tile=query_tile, crop=crop,
                            registered=query.registered)  # fmt: skip

    async def search_page(request: Request) -> Response:
        q = request.query_params
        if q.get("group") and q.get("db"):  # "more like this": a registered-image query
            intra = intra_of(q.get("intra")) or 0
            e = await console.call(console.service.get_image, q["db"], q["group"], intra)
            shown = tile(e.group_id, e.intra_id, e.attributes)  # its thumbnail, or where it came from when not kept
            return await run_search(request, q, Query(registered=(q["group"], intra)), None,
                                    thumbnail_url(q["db"], shown) if shown.kept else "", shown)  # fmt: skip
        return console.page(request, "search.html", title="Search", section="search", databases=await database_names(),
                            db=q.get("db", ""), opts=options(q), hits=[], searched=False, registered=None)  # fmt: skip

    async def search(request: Request) -> Response:
        form = await request.form()
        crop = crop_box(form)
        data, _ = await upload(form, "image", "an image to search with")  # type: ignore[misc]
        return await run_search(request, form, Query(image=data), crop, preview(data))

    async def compare_page(request: Request) -> Response:
        return console.page(request, "compare.html", title="Compare", section="compare")

    async def compare(request: Request) -> Response:
        form = await request.form()
        a, _ = await upload(form, "image_a", "the first image")  # type: ignore[misc]
        b, _ = await upload(form, "image_b", "the second image")  # type: ignore[misc]
        similarity, cosine = await console.call(console.service.match, a, b, heavy=True)
        return console.page(request, "compare.html", title="Compare", section="compare", similarity=similarity,
                            cosine=cosine, image_a=preview(a), image_b=preview(b))  # fmt: skip

    async def add_page(request: Request) -> Response:
        return console.page(request, "add.html", title="Add images", section="add", databases=await database_names(),
                            db=request.query_params.get("db", ""), results=None)  # fmt: skip

    async def add(request: Request) -> Response:
        form = await request.form()
        name, group = str(form.get("db") or ""), str(form.get("group") or "").strip()
        files = [f for f in form.getlist("images") if not isinstance(f, str) and f.filename]
        if not files:
            raise invalid("IMAGE_MISSING", "choose or drop one or more image files to add")
        results = []
        for item in files:
            data = await item.read()
            source = relative_source(item.filename)
            row = {"file": source, "group": group or PurePosixPath(source).stem or "image", "ok": False}
            try:
                done = await console.call(console.service.set_image, name, row["group"], None, data, None,
                                          attributes={"source": source}, heavy=True)  # fmt: skip
                row |= {"ok": True, "intra": done.key[1], "replaced": done.replaced}
            except LookalikeError as err:
                if err.reason == "DATABASE_NOT_FOUND":
                    raise
                row |= {"reason": err.reason, "message": err.message}
            results.append(row)
        failed = sum(not r["ok"] for r in results)
        template = "add_rows.html" if "hx-request" in request.headers or "x-console-fetch" in request.headers else \
            "add.html"  # fmt: skip
        return console.page(request, template, 200 if not failed else 207 if failed < len(results) else 400,
                            title="Add images", section="add", databases=await database_names(), db=name,
                            group=group, results=results, failed=failed)  # fmt: skip

    route = router.add_api_route
    route("/search", console.route(search_page), methods=["GET"])
    route("/search", console.route(search, post=True), methods=["POST"])
    route("/compare", console.route(compare_page), methods=["GET"])
    route("/compare", console.route(compare, post=True), methods=["POST"])
    route("/add", console.route(add_page), methods=["GET"])
    route("/add", console.route(add, post=True), methods=["POST"])

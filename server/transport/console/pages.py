"""Console pages that read and delete: sign-in, databases, a database's thumbnails, deletes, thumbnails, status."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from lookalike.server.core.errors import LookalikeError, invalid
from lookalike.server.core.paging import encode_token
from lookalike.server.core.validation import ORIGINAL_ATTRIBUTE, SYSTEM_PREFIX, THUMBNAIL_ATTRIBUTE
from lookalike.server.transport.console import Console
from lookalike.server.transport.console.session import PATH
from lookalike.server.transport.http_images import VERSION_CHARS, cache_headers, held_digests

GRID_PAGE = 48
SCAN_LIMIT = 2000  # images a filtered page looks at, at most; then it offers to look further


@dataclass
class Tile:
    """One image as the grid and the hit lists show it."""

    group_id: str
    intra_id: int
    version: str  # the digest of what the thumbnail route serves (the kept thumbnail, else the original); "" none
    attributes: dict[str, str] = field(default_factory=dict)
    score: float | None = None

    @property
    def kept(self) -> bool:
        return bool(self.version)

    @property
    def source(self) -> str:
        return self.attributes.get("source", "")


def tile(group_id: str, intra_id: int, attributes: dict[str, str] | None, score: float | None = None) -> Tile:
    attributes = attributes or {}
    version = attributes.get(THUMBNAIL_ATTRIBUTE) or attributes.get(ORIGINAL_ATTRIBUTE) or ""
    own = {k: v for k, v in sorted(attributes.items()) if not k.startswith(SYSTEM_PREFIX)}
    return Tile(group_id, intra_id, version, own, score)


def thumbnail_url(database: str, t: Tile) -> str:
    """Where a kept image's thumbnail is: a URL that names its bytes (``v``: the start of their digest), so it
    is cached for good; the same image asked for without it, or with a stale ``v``, is revalidated
    (``http_images.cache_headers``)."""
    return f"{PATH}/thumbnail?" + urlencode({"db": database, "group": t.group_id, "intra": t.intra_id,
                                             "v": t.version[:VERSION_CHARS]})  # fmt: skip


def parse_where(text: str) -> dict[str, str]:
    """``key=value`` pairs, one a line or comma-separated; every one must match."""
    where: dict[str, str] = {}
    for part in text.replace("\n", ",").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise invalid("WHERE_INVALID", f"filter {part.strip()[:40]!r} is not key=value (e.g. category=shoes)")
        where[key.strip()] = value.strip()
    return where


def intra_of(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise invalid("INTRA_ID_INVALID", f"intra_id {text[:24]!r} is not a non-negative integer")
    return int(text)


def browse(service: Any, name: str, prefix: str, where: dict[str, str], token: str) -> tuple[list[Tile], str, int]:
    """A page of a database's images, filtered by group prefix and attributes: (tiles, next token, scanned).

    The service lists by key (a group prefix starts where the prefix sorts); each step asks for just as many as
    the page still needs, so the token it returns is right after the last image shown (or skipped). At most
    ``SCAN_LIMIT`` images are looked at per page."""
    tiles: list[Tile] = []
    scanned = 0
    if prefix and not token:  # start at the prefix: no group before it in the key order starts with it
        token = encode_token([prefix, -1])
    while len(tiles) < GRID_PAGE and scanned < SCAN_LIMIT:
        entries, token = service.list_images(name, None, min(GRID_PAGE - len(tiles), SCAN_LIMIT - scanned), token)
        scanned += len(entries)
        for e in entries:
            if prefix and not e.group_id.startswith(prefix):
                if e.group_id > prefix:  # keys are ordered: no later group starts with the prefix
                    return tiles, "", scanned
                continue
            if all(e.attributes.get(k) == v for k, v in where.items()):
                tiles.append(tile(e.group_id, e.intra_id, e.attributes))
        if not token:
            break
    return tiles, token, scanned


def describe(service: Any, db: Any) -> dict[str, Any]:
    return {"name": db.name, "model": service.bound_model(db) or "not loaded", "images": db.size,
            "groups": db.group_count, "storage": db.storage or "local", "keep": db.keep,
            "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(db.create_time)) if db.create_time else "",
            "reindex": service.reindex_of(db.name),
            "disk": human_bytes(service.database_disk_bytes(db.name))}  # fmt: skip


def human_bytes(size: int | None) -> str:
    """A size for people ("12.3 MB"), or what is not known yet."""
    if size is None:
        return "not snapshotted yet"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size:.1f} TB"


def add_routes(router: APIRouter, console: Console) -> None:
    console.templates.env.globals["thumbnail_url"] = thumbnail_url

    async def index(request: Request) -> Response:
        return RedirectResponse(f"{PATH}/databases", status_code=303)

    async def signin_page(request: Request) -> Response:
        if console.session.open:
            return RedirectResponse(f"{PATH}/databases", status_code=303)
        return console.page(request, "signin.html", title="Sign in", next=safe_next(request.query_params.get("next")))

    async def signin(request: Request) -> Response:
        form = await request.form()
        token, target = str(form.get("token") or ""), safe_next(str(form.get("next") or ""))
        if console.session.open:
            return RedirectResponse(target, status_code=303)
        if not console.session.accepts(token):
            return console.page(request, "signin.html", 401, title="Sign in", next=target,
                                failed="That is not the server's token.")  # fmt: skip
        response = RedirectResponse(target, status_code=303)
        console.session.sign_in(request, response, token)
        return response

    async def signout(request: Request) -> Response:
        response = RedirectResponse(
            f"{PATH}/signin" if not console.session.open else f"{PATH}/databases", status_code=303
        )
        console.session.sign_out(response)
        return response

    async def databases(request: Request) -> Response:
        service = console.service
        rows = await console.call(lambda: [describe(service, db) for db in service.all_databases()])
        return console.page(request, "databases.html", title="Databases", section="databases", databases=rows)

    async def database(request: Request) -> Response:
        name = request.path_params["name"]
        q = request.query_params
        prefix, where_text, token = q.get("group_prefix", ""), q.get("where", ""), q.get("page", "")
        db = await console.call(console.service.get_database, name)  # a database that does not exist: its 404 page
        where = parse_where(where_text)
        tiles, next_token, scanned = await console.call(browse, console.service, name, prefix, where, token)
        more = urlencode({"group_prefix": prefix, "where": where_text, "page": next_token}) if next_token else ""
        return console.page(request, "database.html", title=f"Database {name}", section="databases",
                            db=describe(console.service, db), tiles=tiles, group_prefix=prefix, where=where_text,
                            more=more, scanned=scanned, filtered=bool(prefix or where),
                            notice=q.get("notice", ""))  # fmt: skip

    async def confirm_delete(request: Request) -> Response:
        name = request.path_params["name"]
        group, intra = request.query_params.get("group", ""), intra_of(request.query_params.get("intra"))
        if intra is None:
            images = await console.call(console.service.group_images, name, group)
            tiles = [tile(e.group_id, e.intra_id, e.attributes) for e in images[:GRID_PAGE]]
            count = len(images)
        else:
            e = await console.call(console.service.get_image, name, group, intra)
            tiles, count = [tile(e.group_id, e.intra_id, e.attributes)], 1
        return console.page(request, "delete.html", title="Delete?", section="databases", name=name, group=group,
                            intra=intra, tiles=tiles, count=count)  # fmt: skip

    async def delete(request: Request) -> Response:
        name = request.path_params["name"]
        form = await request.form()
        group, intra = str(form.get("group") or ""), intra_of(str(form.get("intra") or ""))
        if intra is None:
            count = await console.call(console.service.delete_group, name, group)
            notice = f"Deleted group {group} ({count} images)."
        else:
            await console.call(console.service.delete_image, name, group, intra)
            notice = f"Deleted image {intra} of group {group}."
        return RedirectResponse(f"{PATH}/db/{quote(name, safe='')}?{urlencode({'notice': notice})}", status_code=303)

    async def thumbnail(request: Request) -> Response:
        q = request.query_params
        name, group, intra = q.get("db", ""), q.get("group", ""), intra_of(q.get("intra")) or 0
        held = held_digests(request)
        try:
            image = await console.call(console.service.kept_image, name, group, intra, "thumbnail", held)
        except LookalikeError as err:
            if err.reason != "IMAGE_NOT_KEPT":
                raise
            image = await console.call(console.service.kept_image, name, group, intra, "original", held)
        headers = cache_headers(image.digest, q.get("v", ""))
        if image.unchanged:
            return Response(status_code=304, headers=headers)
        return Response(image.data, media_type=image.media_type, headers=headers)

    async def status(request: Request) -> Response:
        models = await console.call(console.service.list_models)
        dbs = await console.call(console.service.all_databases)
        rates, uptime, recent_s = console.rates.rows(console.metrics)
        return console.page(request, "status.html", title="Status", section="status", models=models,
                            counts={"databases": len(dbs), "images": sum(d.size for d in dbs),
                                    "groups": sum(d.group_count for d in dbs)},
                            rates=rates, uptime=uptime, recent_s=recent_s, ready=console.service.ready)  # fmt: skip

    add = router.add_api_route
    add("", console.route(index), methods=["GET"])
    add("/", console.route(index), methods=["GET"])
    add("/signin", console.route(signin_page, auth=False), methods=["GET"])
    add("/signin", console.route(signin, auth=False, post=True), methods=["POST"])
    add("/signout", console.route(signout, auth=False, post=True), methods=["POST"])
    add("/databases", console.route(databases), methods=["GET"])
    add("/db/{name}", console.route(database), methods=["GET"])
    add("/db/{name}/delete", console.route(confirm_delete), methods=["GET"])
    add("/db/{name}/delete", console.route(delete, post=True), methods=["POST"])
    add("/thumbnail", console.route(thumbnail), methods=["GET"])
    add("/status", console.route(status), methods=["GET"])


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith(PATH + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PATH}/databases"

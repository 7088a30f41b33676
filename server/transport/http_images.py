"""Kept images over HTTP: ``GET /v1/databases/{db}/images/{group}/{intra}/thumbnail`` (and ``/original``).

For browsers (the web console) and ``curl``: the bytes as they are kept, behind the same token
as every call, with the digest as a strong ETag. The path names a key, and a key's image can be
replaced (an overwrite, a recreated database), so the path alone is served ``no-cache``: a client
asks again with ``If-None-Match`` and gets 304 while the digest is the same. A URL that also names
the bytes, ``?v=`` and at least ``VERSION_CHARS`` leading hex digits of the digest (the console's
thumbnail URLs; ``lookalike.thumbnail`` / ``lookalike.original`` attributes hold the digests), is
cached as immutable: those bytes never change. ``private`` because a token guards them. Errors are
the JSON envelope the PAI routes use, with the stable reason (IMAGE_NOT_KEPT, IMAGE_NOT_FOUND, ...).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.transport.auth import token_matches
from lookalike.server.transport.call_slots import CallSlots
from lookalike.server.transport.http_gateway import PaiGateway, failure

CACHE_CONTROL = "private, max-age=31536000, immutable"  # a URL that names the bytes (?v=digest prefix)
REVALIDATE = "private, no-cache"  # a URL that names a key only: its image may be replaced
VERSION_CHARS = 16  # hex digits of the digest a versioned URL carries


def cache_headers(digest: str, version: str) -> dict[str, str]:
    """ETag and Cache-Control for kept bytes with ``digest`` asked for at a URL whose ``v`` is ``version``."""
    named = len(version) >= VERSION_CHARS and digest.startswith(version)
    return {"ETag": f'"{digest}"', "Cache-Control": CACHE_CONTROL if named else REVALIDATE}


def held_digests(request: Request) -> set[str]:
    """The digests ``If-None-Match`` names (``*`` stays ``*``): the kept bytes the client already holds, which the
    server then does not read at all (``Keeper.read``)."""
    sent = request.headers.get("if-none-match", "")
    return {t.strip().removeprefix("W/").strip('"') for t in sent.split(",") if t.strip()}


def add_image_routes(app: FastAPI, gateway: PaiGateway, slots: CallSlots, retry_after_s: int) -> None:
    """The kept-image routes on the PAI app (the same token, call slots and error envelope)."""

    def read(database: str, group_id: str, intra_id: str, view: str, held: set[str]) -> Any:
        if not intra_id.isdigit():
            raise invalid("INTRA_ID_INVALID", f"intra_id {intra_id[:24]!r} is not a non-negative integer")
        return gateway.service.kept_image(database, group_id, int(intra_id), view, held)

    async def kept(request: Request, database: str, group_id: str, intra_id: str, view: str) -> Response:
        import anyio

        if gateway.token is not None and not token_matches(request.headers.get("authorization"), gateway.token):
            return failure(uuid.uuid4().hex, LookalikeError(ErrorKind.UNAUTHENTICATED, "TOKEN_INVALID",
                                                            "missing or wrong token: send it in the Authorization "
                                                            "header"))  # fmt: skip
        if not slots.take():
            return JSONResponse({"error_code": "TOO_MANY_REQUESTS", "error_msg": "the server is at --max-inflight"},
                                status_code=429, headers={"Retry-After": str(retry_after_s)})  # fmt: skip
        try:
            image = await anyio.to_thread.run_sync(read, database, group_id, intra_id, view, held_digests(request))
        except LookalikeError as err:
            return failure(uuid.uuid4().hex, err)
        finally:
            slots.give_back()
        headers = cache_headers(image.digest, request.query_params.get("v", ""))
        if image.unchanged:
            return Response(status_code=304, headers=headers)
        return Response(image.data, media_type=image.media_type, headers=headers)

    async def thumbnail(request: Request, database: str, group_id: str, intra_id: str) -> Response:
        return await kept(request, database, group_id, intra_id, "thumbnail")

    async def original(request: Request, database: str, group_id: str, intra_id: str) -> Response:
        return await kept(request, database, group_id, intra_id, "original")

    base = "/v1/databases/{database}/images/{group_id}/{intra_id}"
    app.add_api_route(base + "/thumbnail", thumbnail, methods=["GET"], summary="An image's kept thumbnail")
    app.add_api_route(base + "/original", original, methods=["GET"], summary="An image's kept original bytes")

"""Kept images over HTTP: ``GET /v1/databases/{db}/images/{group}/{intra}/thumbnail`` (and ``/original``).

For browsers (the web console) and ``curl``: the bytes as they are kept, behind the same token
as every call, with the digest as a strong ETag and immutable caching. A kept blob is named by
its digest, so the bytes behind an ETag never change: a re-registered image gets a new digest,
hence a new ETag. ``Cache-Control: private`` because a token guards them. Errors are the JSON
envelope the PAI routes use, with the stable reason (IMAGE_NOT_KEPT, IMAGE_NOT_FOUND, ...).
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

CACHE_CONTROL = "private, max-age=31536000, immutable"


def add_image_routes(app: FastAPI, gateway: PaiGateway, slots: CallSlots, retry_after_s: int) -> None:
    """The kept-image routes on the PAI app (the same token, call slots and error envelope)."""

    def read(database: str, group_id: str, intra_id: str, view: str) -> Any:
        if not intra_id.isdigit():
            raise invalid("INTRA_ID_INVALID", f"intra_id {intra_id[:24]!r} is not a non-negative integer")
        return gateway.service.kept_image(database, group_id, int(intra_id), view)

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
            image = await anyio.to_thread.run_sync(read, database, group_id, intra_id, view)
        except LookalikeError as err:
            return failure(uuid.uuid4().hex, err)
        finally:
            slots.give_back()
        etag = f'"{image.digest}"'
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        sent = request.headers.get("if-none-match", "")
        if etag in [t.strip().removeprefix("W/") for t in sent.split(",")] or sent.strip() == "*":
            return Response(status_code=304, headers=headers)
        return Response(image.data, media_type=image.media_type, headers=headers)

    async def thumbnail(request: Request, database: str, group_id: str, intra_id: str) -> Response:
        return await kept(request, database, group_id, intra_id, "thumbnail")

    async def original(request: Request, database: str, group_id: str, intra_id: str) -> Response:
        return await kept(request, database, group_id, intra_id, "original")

    base = "/v1/databases/{database}/images/{group_id}/{intra_id}"
    app.add_api_route(base + "/thumbnail", thumbnail, methods=["GET"], summary="An image's kept thumbnail")
    app.add_api_route(base + "/original", original, methods=["GET"], summary="An image's kept original bytes")

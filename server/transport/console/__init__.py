"""The web console on the HTTP port, at ``/ui``: server-rendered pages (FastAPI + Jinja2), htmx, a little plain JS.

Like every transport it calls ``LookalikeService`` and nothing past it. Pages: sign-in, databases, a database's
thumbnails (filters, delete), search (a dropped, pasted or picked file, a region of it, or "more like this"),
compare, add, status. ``create_app`` mounts it: ``app.include_router(console_router(gateway, slots))``.

Nothing is fetched from the network: htmx 2.0.4 is vendored in ``static/`` (its 0BSD licence beside it), and the
pages allow scripts, styles and images from this server only (Content-Security-Policy).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from lookalike.server.core.errors import ErrorKind, LookalikeError
from lookalike.server.transport.call_slots import CallSlots
from lookalike.server.transport.console.rates import RequestRates
from lookalike.server.transport.console.session import PATH, Session
from lookalike.server.transport.http_gateway import HTTP_STATUS

HERE = Path(__file__).resolve().parent
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".LICENSE": "text/plain; charset=utf-8"}  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
SIGNIN_MAX_BYTES = 16 << 10
NAV = (("databases", "Databases"), ("search", "Search"), ("compare", "Compare"), ("add", "Add images"),
       ("status", "Status"))  # fmt: skip


class Refused(Exception):
    """A console request answered with a page of its own (sign in, 403, 413, 429) instead of the handler's."""

    def __init__(self, response: Response) -> None:
        super().__init__("refused")
        self.response = response


class Console:
    """What every console page needs: the service, the session rules, the templates, the call slots."""

    def __init__(self, gateway: Any, slots: CallSlots) -> None:
        from fastapi.templating import Jinja2Templates

        self.gateway = gateway  # read when a page is asked for (an app is built before its gateway is set up)
        self.session = Session(gateway)
        self.slots = slots
        self.rates = RequestRates()  # the status page's, with the last view's counters
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["q"] = lambda value: quote(str(value), safe="")
        self.static = {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for p in sorted((HERE / "static").iterdir())
                       if p.suffix in STATIC_TYPES}  # fmt: skip

    @property
    def service(self) -> Any:
        return self.gateway.service

    @property
    def metrics(self) -> Any:
        return getattr(self.gateway, "metrics", None)

    @property
    def max_body_bytes(self) -> int:
        return self.gateway.max_body_bytes

    # -- answers ---------------------------------------------------------------------------
    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        context |= {"request": request, "csrf": self.session.csrf_of(request), "open": self.session.open,
                    "nav": NAV, "signed_in": self.session.signed_in(request)}  # fmt: skip
        context.setdefault("section", "")
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        if template == "error.html" and "hx-request" in request.headers:  # the error replaces the page's content,
            response.headers.update({"HX-Retarget": "#main", "HX-Reselect": "#main", "HX-Reswap": "outerHTML"})
        self.session.remember_csrf(request, response)  # not only the part the form asked for
        return response

    def error(self, request: Request, err: LookalikeError) -> Response:
        status = 413 if err.reason == "MESSAGE_TOO_LARGE" else HTTP_STATUS.get(err.kind, 500)
        return self.page(request, "error.html", status, title=err.reason.replace("_", " ").capitalize(), error=err)

    def refusal(self, request: Request, status: int, reason: str, message: str) -> Refused:
        kind = {401: ErrorKind.UNAUTHENTICATED, 403: ErrorKind.PERMISSION_DENIED, 429: ErrorKind.RESOURCE_EXHAUSTED}
        err = LookalikeError(kind.get(status, ErrorKind.INVALID_ARGUMENT), reason, message)
        response = self.page(request, "error.html", status, title=reason.replace("_", " ").capitalize(), error=err)
        if status == 429:
            response.headers["Retry-After"] = "1"
        return Refused(response)

    # -- guards ----------------------------------------------------------------------------
    def require_sign_in(self, request: Request) -> None:
        if self.session.signed_in(request):
            return
        if request.method == "GET" and "hx-request" not in request.headers:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise Refused(RedirectResponse(f"{PATH}/signin?next={quote(target, safe='')}", status_code=303))
        raise self.refusal(request, 401, "TOKEN_INVALID", "sign in with the server's token first")

    async def check_post(self, request: Request, max_bytes: int | None = None) -> None:
        """A POST: the length (before a byte of the body is read), then the CSRF value."""
        limit = max_bytes or self.max_body_bytes + (64 << 10)  # a form's fields beside one image
        length = request.headers.get("content-length", "")
        if not length.strip().isdigit():
            raise self.refusal(request, 411, "LENGTH_REQUIRED", "send the form with a Content-Length")
        if int(length) > limit:
            raise self.refusal(request, 413, "MESSAGE_TOO_LARGE", f"the form is {int(length)} bytes, over the limit "
                               f"of {limit} (--max-message-bytes); send fewer or smaller images at once")  # fmt: skip
        if not await self.session.csrf_ok(request):
            raise self.refusal(request, 403, "CSRF_INVALID", "the form's CSRF token is missing or stale: reload the "
                               "page and send it again")  # fmt: skip

    async def call(self, function: Callable[..., Any], *args: Any, heavy: bool = False, **kwargs: Any) -> Any:
        """A service call on a worker thread; ``heavy`` ones (model work) take one of the server's call slots."""
        import functools

        import anyio

        if heavy and not self.slots.take():
            raise LookalikeError(ErrorKind.RESOURCE_EXHAUSTED, "TOO_MANY_REQUESTS", f"the server is serving "
                                 f"its limit of {self.slots.limit} calls (--max-inflight); try again soon")  # fmt: skip
        try:
            return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))
        finally:
            if heavy:
                self.slots.give_back()

    def route(self, handler: Callable[..., Awaitable[Response]], *, auth: bool = True,
              post: bool = False) -> Callable[..., Awaitable[Response]]:  # fmt: skip
        """The guards (sign-in, then for a POST length and CSRF) and the error pages around a handler."""

        async def guarded(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if auth:
                    self.require_sign_in(request)
                if post:
                    await self.check_post(request, None if auth else SIGNIN_MAX_BYTES)
                response = await handler(request)
            except Refused as refused:
                response = refused.response
            except LookalikeError as err:
                response = self.error(request, err)
            finally:
                await request.close()  # the uploaded files' temporary copies
            # The page's own time (service calls and rendering; the body is rendered by now), for the browser's
            # network panel and bench/console_grid.py: everything but the HTTP server and the network.
            response.headers["Server-Timing"] = f"console;dur={(time.perf_counter() - started) * 1e3:.1f}"
            return response

        guarded.__name__ = handler.__name__
        return guarded

    def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return Response("not found", status_code=404, media_type="text/plain")
        data, media_type = self.static[name]
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(data, media_type=media_type, headers={"ETag": etag, "Cache-Control": "no-cache"})


def console_router(gateway: Any, slots: CallSlots | None = None) -> APIRouter:
    """The console's routes, under ``/ui``; ``gateway`` is the HTTP gateway (its service, token and body limit)."""
    from lookalike.server.transport.console import pages, query

    console = Console(gateway, slots or CallSlots(32))
    router = APIRouter(prefix=PATH, include_in_schema=False)

    async def static(request: Request) -> Response:
        return console.static_file(request)

    router.add_api_route("/static/{name}", static, methods=["GET"])
    pages.add_routes(router, console)
    query.add_routes(router, console)
    return router


__all__ = ["Console", "console_router"]

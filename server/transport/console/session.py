"""Who may use the console, and that a form really came from it.

- Sign-in: the server's token (any of ``--token`` / ``--token-file``, checked with ``token_matches`` as every
  port checks it) is kept in an HttpOnly, SameSite=Strict cookie (Secure when the request came over TLS).
  Every console request checks it again, so a token removed from the token file stops working at once.
  With no token configured the console is open, and its pages say so.
- CSRF: double submit. A random value in a SameSite=Strict cookie, the same value in a hidden ``csrf`` field
  of every form (or the ``X-CSRF-Token`` header htmx and the console's script send); every POST compares the
  two in constant time before it reads anything else.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from lookalike.server.transport.auth import token_matches

SESSION_COOKIE = "lookalike_console"
CSRF_COOKIE = "lookalike_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
PATH = "/ui"


class Session:
    """The console's view of the server's tokens (``gateway.token``: a ``TokenSet``, a string, or None = open)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    @property
    def token(self) -> Any:
        return self.gateway.token

    @property
    def open(self) -> bool:
        """True when the server has no token: the console needs no sign-in."""
        return self.token is None

    def accepts(self, sent: str | None) -> bool:
        return bool(sent) and token_matches(sent, self.token)

    def signed_in(self, request: Request) -> bool:
        return self.open or self.accepts(request.cookies.get(SESSION_COOKIE))

    @staticmethod
    def csrf_of(request: Request) -> str:
        """The CSRF value of this browser: its cookie, or a new one (``remember_csrf`` sets it on the response)."""
        value = request.cookies.get(CSRF_COOKIE, "")
        if len(value) != 43:  # token_urlsafe(32)
            value = getattr(request.state, "new_csrf", "") or secrets.token_urlsafe(32)
            request.state.new_csrf = value
        return value

    @staticmethod
    def remember_csrf(request: Request, response: Response) -> None:
        new = getattr(request.state, "new_csrf", "")
        if new:
            response.set_cookie(CSRF_COOKIE, new, path=PATH, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")  # fmt: skip

    @staticmethod
    async def csrf_ok(request: Request) -> bool:
        """The POST carries the cookie's CSRF value in its header or its ``csrf`` form field."""
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if len(cookie) != 43:
            return False
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent:
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else ""
        return hmac.compare_digest(sent.encode(), cookie.encode())

    def sign_in(self, request: Request, response: Response, token: str) -> None:
        response.set_cookie(SESSION_COOKIE, token.strip(), path=PATH, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # fmt: skip

    @staticmethod
    def sign_out(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=PATH)

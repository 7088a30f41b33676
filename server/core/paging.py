"""Opaque page tokens: base64 of a small JSON cursor."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from lookalike.server.core.errors import invalid

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise invalid("PAGE_SIZE_INVALID", f"page_size {requested} is out of range; use 1-{MAX_PAGE_SIZE} (0 = 100)")
    return requested or DEFAULT_PAGE_SIZE


def encode_token(cursor: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


def decode_token(token: str) -> Any:
    if not token:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise invalid(
            "PAGE_TOKEN_INVALID", "page_token is not one this server issued; pass next_page_token unchanged"
        ) from None

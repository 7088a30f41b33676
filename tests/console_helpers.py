"""What the web console's page tests share: a server with the HTTP port, a signed-in ``requests`` session, HTML."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import numpy as np
import requests
from lookalike.server.core.errors import LookalikeError
from photos import encode


def start_console(tmp_path_factory: Any, token: str | None, **config: Any) -> Any:
    """A real server (default model) with the HTTP port and ``token``; ``.base`` is the port's URL."""
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    running = create_server(ServerConfig(port=0, http_port=0, token=token, snapshot_interval_s=0,
                                         data_dir=tmp_path_factory.mktemp("console"), **config))  # fmt: skip
    running.base = f"http://127.0.0.1:{running.http_port}"
    return running


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def signed_in(server: Any, token: str) -> tuple[requests.Session, str]:
    """A browser session after signing in: (session, the CSRF value its forms carry)."""
    s = requests.Session()
    page = s.get(server.base + "/ui/signin", timeout=30)
    assert page.status_code == 200
    r = s.post(server.base + "/ui/signin", data={"token": token, "csrf": csrf_of(page.text), "next": "/ui/status"},
               allow_redirects=False, timeout=30)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/ui/status"
    assert s.cookies.get("lookalike_console", path="/ui")
    return s, csrf_of(s.get(server.base + "/ui/databases", timeout=30).text)


def jpeg(arr: np.ndarray) -> bytes:
    return encode(arr, "JPEG", quality=92)


def fresh(server: Any, name: str, keep: str = "thumbnail") -> str:
    """A new, empty database ``name`` (one left by an earlier test is deleted first)."""
    try:
        server.service.delete_database(name)
    except LookalikeError:
        pass
    server.service.create_database(name, keep=keep)
    return name


def text_of(html: str) -> str:
    """The page's text as a reader sees it: tags gone, spaces collapsed, entities decoded."""
    text = unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))
    return re.sub(r" ([:?.,)])", r"\1", text)


def wait(driver: Any, condition: Any, timeout: float = 60) -> Any:
    """Poll ``condition`` until it is truthy. An element the page re-rendered between finding it and reading it
    (StaleElementReferenceException) counts as "not yet", as WebDriverWait's own NoSuchElement does."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)

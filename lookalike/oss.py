"""``oss://bucket/key`` objects through ``oss2``: the one OSS client of the server and the trainer.

Only put, get (whole or a byte range), head and delete are used: S3-protocol test servers
(moto) and some OSS-compatible stores do not answer oss2's list and multipart calls, so
callers name every object they need (a manifest) instead of listing.

``OssClient`` takes its endpoint, credentials and URL style as arguments and reads nothing from the
environment: the server passes its ``ServerConfig`` values (``server/app.py`` ``make_oss``), so a flag
such as ``--no-oss-path-style`` always wins. The CLI and the trainer, which have no settings object
for OSS, use ``OssClient.from_env`` / ``OssReader``: ``OSS_ENDPOINT`` (e.g.
``https://oss-cn-hangzhou-internal.aliyuncs.com``) names the endpoint, ``OSS_PATH_STYLE=1`` is for
S3-protocol servers that only speak path-style URLs, and the keys come from ``OSS_ACCESS_KEY_ID`` /
``OSS_ACCESS_KEY_SECRET``. Credentials never go into a config file, a message, or a repr.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEME = "oss://"
# The variables, read by the server's settings (server/config.py) and by ``from_env`` below.
ENDPOINT_ENV = "OSS_ENDPOINT"
PATH_STYLE_ENV = "OSS_PATH_STYLE"
KEY_ID_ENV = "OSS_ACCESS_KEY_ID"
SECRET_ENV = "OSS_ACCESS_KEY_SECRET"
# Defaults of every OssClient; the server's --oss-retries defaults to DEFAULT_RETRIES.
DEFAULT_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.2
DEFAULT_TIMEOUT_S = 30.0
# Statuses a store answers when it is briefly overloaded or restarting; the request is sent again.
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
# oss2 logs every request's headers, the signed Authorization header (with the access key id)
# included, at DEBUG: keep it at WARNING so `--log-level debug` never prints credentials.
logging.getLogger("oss2").setLevel(logging.WARNING)
logger = logging.getLogger(__name__)


def is_oss(ref: str) -> bool:
    return ref.startswith(SCHEME)


def split_oss(ref: str) -> tuple[str, str]:
    """``oss://bucket/a/b.jpg`` -> ``("bucket", "a/b.jpg")``; tolerates ``bucket.endpoint`` hosts.

    The PAI demo lists write ``oss://bucket.oss-cn-hangzhou.aliyuncs.com/key``; the bucket is
    the first label of that host.
    """
    if not is_oss(ref):
        raise ValueError(f"not an oss:// reference: {ref!r}")
    host, _, key = ref[len(SCHEME) :].partition("/")
    bucket = host.split(".", 1)[0]
    if not bucket or not key:
        raise ValueError(f"oss reference {ref!r} must look like oss://bucket/path/to/object")
    return bucket, key


def split_root(ref: str) -> tuple[str, str]:
    """``oss://bucket/prefix/`` -> ``("bucket", "prefix/")``; the prefix may be empty."""
    if not is_oss(ref):
        raise ValueError(f"not an oss:// reference: {ref!r}")
    host, _, prefix = ref[len(SCHEME) :].partition("/")
    bucket = host.split(".", 1)[0]
    if not bucket:
        raise ValueError(f"oss root {ref!r} must look like oss://bucket/prefix/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


class OssStatusError(OSError):
    """OSS answered with an error status (``status``); the text names the status and the store's error code only."""

    def __init__(self, message: str, status: int | str) -> None:
        super().__init__(message)
        self.status = status


def _safe_code(code: object) -> str:
    """An OSS error code (``AccessDenied``): a short identifier, never more of what the remote end sent."""
    text = str(code or "")
    return text if text.isalnum() and len(text) <= 64 else ""


@dataclass(frozen=True)
class OssCredentials:
    key_id: str = field(repr=False)
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return "OssCredentials(<hidden>)"

    @classmethod
    def find(
        cls, key_id: str | None = None, secret: str | None = None, credentials_file: str | Path | None = None
    ) -> OssCredentials | None:
        """The given keys, else a file of ``OSS_ACCESS_KEY_ID=...`` / ``OSS_ACCESS_KEY_SECRET=...`` lines."""
        if (not key_id or not secret) and credentials_file:
            values: dict[str, str] = {}
            for line in Path(credentials_file).read_text().splitlines():
                name, sep, value = line.partition("=")
                if sep:
                    values[name.strip()] = value.strip()
            key_id = key_id or values.get(KEY_ID_ENV)
            secret = secret or values.get(SECRET_ENV)
        if not key_id or not secret:
            return None
        return cls(key_id, secret)

    @classmethod
    def from_env(
        cls, credentials_file: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> OssCredentials | None:
        """For the CLI and the trainer: the environment's keys first, then ``credentials_file``."""
        env = os.environ if environ is None else environ
        return cls.find(env.get(KEY_ID_ENV), env.get(SECRET_ENV), credentials_file)


class OssClient:
    """oss2 buckets opened lazily per name; errors become OSError/FileNotFoundError without secrets.

    Everything comes from the arguments, never the environment (``from_env`` is the door for that).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        credentials: OssCredentials | None = None,
        *,
        path_style: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    ) -> None:
        if retries < 0 or retry_backoff_s < 0:
            raise ValueError(f"OSS retries ({retries}) and their backoff ({retry_backoff_s}s) must be >= 0")
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.endpoint = endpoint
        self._credentials = credentials
        self.path_style = path_style
        self.timeout_s = timeout_s
        self._buckets: dict[str, Any] = {}

    @classmethod
    def from_env(
        cls,
        endpoint: str | None = None,
        credentials: OssCredentials | None = None,
        *,
        path_style: bool | None = None,
        environ: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> OssClient:
        """For the CLI and the trainer: what is not given comes from ``OSS_ENDPOINT``, ``OSS_PATH_STYLE`` and
        ``OSS_ACCESS_KEY_ID`` / ``OSS_ACCESS_KEY_SECRET``. The server never calls this (its values are settings)."""
        env = os.environ if environ is None else environ
        if path_style is None:
            path_style = env.get(PATH_STYLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        return cls(endpoint or env.get(ENDPOINT_ENV) or None, credentials or OssCredentials.from_env(environ=env),
                   path_style=path_style, **kw)  # fmt: skip

    def __repr__(self) -> str:
        return f"OssClient(endpoint={self.endpoint!r})"

    @property
    def configured(self) -> bool:
        """An endpoint and credentials are set: oss:// access can work."""
        return bool(self.endpoint) and self._credentials is not None

    def __getstate__(self) -> dict[str, Any]:  # picklable into DataLoader workers, without open buckets
        return {**self.__dict__, "_buckets": {}}

    def bucket(self, name: str) -> Any:
        bucket = self._buckets.get(name)
        if bucket is not None:
            return bucket
        import oss2

        credentials = self._credentials
        if credentials is None or not self.endpoint:
            raise ValueError(
                f"OSS access needs {KEY_ID_ENV}, {SECRET_ENV} and {ENDPOINT_ENV} "
                "in the environment (or --oss-endpoint and --oss-credentials-file); credentials are never "
                "read from config files"
            )
        bucket = oss2.Bucket(
            oss2.Auth(credentials.key_id, credentials.secret),
            self.endpoint,
            name,
            is_path_style=self.path_style,
            connect_timeout=self.timeout_s,
        )
        self._buckets[name] = bucket
        return bucket

    def _call(self, what: str, ref: str, fn: Any) -> Any:
        """``fn`` with errors mapped; a 5xx answer is sent again ``retries`` times (every call here is idempotent).

        A dropped connection is not retried here: log shipping backs off for longer and writes go on locally.
        """
        import oss2
        import requests

        for attempt in range(self.retries + 1):
            try:
                return fn()
            except oss2.exceptions.NoSuchKey as exc:
                raise FileNotFoundError(f"{ref} does not exist") from exc
            except oss2.exceptions.OssError as exc:
                # OssError's text carries request ids and what the store sent: keep the status (the code: log only).
                status, code = getattr(exc, "status", "?"), _safe_code(getattr(exc, "code", ""))
                if status == -2 or isinstance(exc, oss2.exceptions.RequestError):
                    raise ConnectionError(f"{what} {ref}: OSS endpoint unreachable") from None
                if status not in TRANSIENT_STATUSES or attempt == self.retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    if code:  # the store's code is for the operator's log; callers see the status only
                        logger.warning("%s %s: OSS answered %s %s", what, ref, status, code)
                    raise OssStatusError(f"{what} {ref}: OSS error {status}{tries}", status) from None
                logger.warning("%s %s: OSS answered %s, retry %d of %d", what, ref, status, attempt + 1, self.retries)
                time.sleep(self.retry_backoff_s * 2**attempt)
            except requests.RequestException:
                raise ConnectionError(f"{what} {ref}: OSS endpoint unreachable") from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Whole object, or the inclusive ``byte_range`` of it."""
        ref = f"{SCHEME}{bucket}/{key}"
        return self._call("reading", ref, lambda: self.bucket(bucket).get_object(key, byte_range=byte_range).read())

    def put(self, bucket: str, key: str, data: bytes | memoryview) -> None:
        ref = f"{SCHEME}{bucket}/{key}"
        self._call("writing", ref, lambda: self.bucket(bucket).put_object(key, data))

    def exists(self, bucket: str, key: str) -> bool:
        ref = f"{SCHEME}{bucket}/{key}"
        try:
            self._call("checking", ref, lambda: self.bucket(bucket).head_object(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            if " 404 " in f"{exc} ":
                return False
            raise
        return True

    def delete(self, bucket: str, key: str) -> None:
        ref = f"{SCHEME}{bucket}/{key}"
        self._call("deleting", ref, lambda: self.bucket(bucket).delete_object(key))

    def read(self, ref: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """``oss://bucket/key``, whole or the inclusive ``byte_range``."""
        bucket, key = split_oss(ref)
        return self.get(bucket, key, byte_range)


@dataclass
class OssReader:
    """Read-only ``oss://`` access for the trainer; safe to pickle into DataLoader workers."""

    endpoint: str | None = None
    path_style: bool | None = None
    _client: OssClient | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "path_style": self.path_style, "_client": None}

    def read(self, ref: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Whole object, or the inclusive ``byte_range`` of it. Raises ``OSError`` on failure."""
        if self._client is None:
            self._client = OssClient.from_env(self.endpoint, path_style=self.path_style)
        return self._client.read(ref, byte_range)

"""Read ``oss://bucket/key`` objects with ``oss2``, credentials from the environment only.

Credentials never go into a config file (the resolved config is written next to the outputs)
nor into any message. Set ``OSS_ACCESS_KEY_ID``, ``OSS_ACCESS_KEY_SECRET`` and ``OSS_ENDPOINT``
(e.g. ``https://oss-cn-hangzhou-internal.aliyuncs.com``); ``OSS_PATH_STYLE=1`` for S3-protocol
test servers that only speak path-style URLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

SCHEME = "oss://"


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


@dataclass
class OssReader:
    """Lazily opened ``oss2.Bucket`` per bucket name; safe to pickle into DataLoader workers."""

    endpoint: str | None = None
    path_style: bool | None = None
    _buckets: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "path_style": self.path_style, "_buckets": {}}

    def _bucket(self, name: str) -> Any:
        bucket = self._buckets.get(name)
        if bucket is not None:
            return bucket
        import oss2

        key_id = os.environ.get("OSS_ACCESS_KEY_ID")
        secret = os.environ.get("OSS_ACCESS_KEY_SECRET")
        endpoint = self.endpoint or os.environ.get("OSS_ENDPOINT")
        if not key_id or not secret or not endpoint:
            raise ValueError(
                "reading oss:// images needs OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET and OSS_ENDPOINT "
                "in the environment (credentials are never read from config files)"
            )
        path_style = self.path_style
        if path_style is None:
            path_style = os.environ.get("OSS_PATH_STYLE", "") not in ("", "0", "false")
        bucket = oss2.Bucket(oss2.Auth(key_id, secret), endpoint, name, is_path_style=path_style)
        self._buckets[name] = bucket
        return bucket

    def read(self, ref: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Whole object, or the inclusive ``byte_range`` of it. Raises ``OSError`` on failure."""
        import oss2

        name, key = split_oss(ref)
        try:
            result = self._bucket(name).get_object(key, byte_range=byte_range)
            return result.read()
        except oss2.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"{ref} does not exist") from exc
        except oss2.exceptions.OssError as exc:
            # OssError's text carries request ids, never the secret.
            status, code = getattr(exc, "status", "?"), getattr(exc, "code", "")
            raise OSError(f"{ref}: OSS error {status} {code}") from exc

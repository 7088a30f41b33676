"""The trainer reads ``oss://`` images through the one shared OSS client (``lookalike.oss``)."""

from __future__ import annotations

from lookalike.oss import SCHEME, OssReader, is_oss, split_oss

__all__ = ["SCHEME", "OssReader", "is_oss", "split_oss"]

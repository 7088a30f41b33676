"""Bytes on disk and in OSS: the write-ahead log, checksummed segment files, manifests.

This layer knows frames, files and JSON; it does not know databases or images. The core
decides what to write (``server/core/persistence.py``) and hands it here as bytes and arrays.
"""

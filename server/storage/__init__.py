"""Bytes on disk, in OSS and in Milvus: the write-ahead log (``wal.py``), checksummed segment
files and manifests (``segments.py``), blob stores (``blobs.py``: local directory or OSS), the
OSS mirror of a data directory (``shipping.py``) and Milvus collections (``milvus_store.py``).

This layer knows frames, files, JSON and rows; it does not know databases' types beyond what
it persists. The backends decide what to write and hand it here as bytes and arrays.
May import: ``lookalike.oss``, oss2, crc32c, pymilvus. Never ``server.core``.
"""

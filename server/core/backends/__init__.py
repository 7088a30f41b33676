"""Where databases live. ``api.py`` is the contract: the protocols the service calls, the value
types (``Key``, ``Hit``, ``Entry``, request and result types), one builder per shared error,
the model-identity rule, the retry-window semantics and the export format's reader and writer.

``builtin/`` keeps databases in this process (native exact scan, HNSW, WAL and snapshots);
``milvus/`` keeps them in Milvus collections shared by stateless replicas. A new backend is a
new folder implementing ``api.IndexBackend`` and passing ``tests/server/backends/``.
May import: ``server.core.errors``, ``server.core.validation``, ``server.storage``. Never
the service, the embedding package or a transport; one backend never imports the other.
"""

"""The Milvus backend: one collection per database, a catalog collection for names, id leases
and the retry window, so any number of stateless replicas serve the same databases.

``catalog.py`` (the backend), ``intra_leases.py`` (automatic intra_ids unique across replicas),
``requests.py`` (the retry window in the catalog collection). Milvus calls and filter
expressions live in ``server/storage/milvus_store.py``.
May import: ``backends.api``, ``server.core.errors``/``validation``, ``server.storage``.
"""

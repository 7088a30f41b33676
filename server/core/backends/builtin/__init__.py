"""The built-in store: databases in this process, durable through the WAL and snapshots.

``catalog.py`` (the backend: plan, log, apply under one write lock), ``commands.py`` (every
mutation as a loggable command), ``database.py`` (one database: planning and applying),
``records.py`` (group and row bookkeeping), ``search.py`` (exact scan, filter mask, HNSW
tier and graph build), ``snapshot.py`` (a database's consistent picture and its rebuild),
``snapshot_files.py`` (that picture as checksummed files; exports), ``persistence.py`` (log,
checkpoints, the OSS mirror), ``index.py``/``chunks.py`` (vector rows and the native kernel),
``hnsw.py`` (usearch graphs), ``requests.py`` (the retry window), ``memory.py``.
May import: ``backends.api``, ``server.core.errors``/``validation``, ``server.storage``,
``lookalike.native``.
"""

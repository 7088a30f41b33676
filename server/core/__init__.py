"""The core: everything the server does, without any wire.

Owns ``service.py`` (the one door: every operation of every transport is one method there,
validated there once), ``errors.py`` (``LookalikeError``: a kind, a stable reason, a message),
``validation.py`` (names, ids, vectors, attributes), ``locations.py`` (where a request may read, write
and connect: export root, ``oss://`` prefixes, endpoints), ``image_lists.py`` (image lists, streamed) and
``paging.py``.
Sub-packages: ``embedding/`` (images to vectors) and ``backends/`` (where databases live).
May import: ``lookalike.modelfile``, ``lookalike.native``, ``server.storage``. Never grpc or
the HTTP framework; never ``server.transport``.
"""

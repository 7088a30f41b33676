"""Where a request may read and write, and the calls that move databases in and out: export, import, load.

Mixed into ``LookalikeService`` (the one door). Locations are checked by ``locations.py``;
kept images travel beside the vectors (``keeping.py``). An import or a load binds the new
database to the loaded model whose vectors the export holds.
"""

from __future__ import annotations

import secrets
from typing import Any

from lookalike.server.core.backends.api import DatabaseHandle, SnapshotInfo
from lookalike.server.core.backends.exports import read_export_for
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.locations import oss_failure, oss_not_configured
from lookalike.server.core.validation import LOAD_PREFIX, check_database_name, check_new_database_name


class Transfers:
    """Locations, OSS reads, export, import and load (``self`` is the service)."""

    # -- where a request may read and write (server/core/locations.py) ----------------------
    def location(self, location: str, field: str, *, oss: Any = None, create: bool = False) -> str:
        """A local location under the export root (as an absolute path) or an allowed ``oss://`` prefix."""
        remote = isinstance(location, str) and location.startswith("oss://")
        if remote and not getattr(oss or self.oss, "configured", False):
            raise oss_not_configured(field)
        return self.boundaries.location(location, field, create=create and not remote)

    def check_endpoint(self, endpoint: str, field: str) -> str:
        """An OSS endpoint a request names, if the operator allowed it (its normalised URL)."""
        return self.boundaries.check_endpoint(endpoint, field)

    def read_oss(self, ref: str, field: str, *, oss: Any = None, max_bytes: int | None = None) -> bytes:
        """An ``oss://`` object (an image, a list) under an allowed prefix; at most ``max_bytes`` (default: an
        image's largest)."""
        client = oss or self.oss
        if not getattr(client, "configured", False):
            raise oss_not_configured(field)
        self.boundaries.oss_object(ref, field)
        limit = self.embedder.max_image_bytes if max_bytes is None else max_bytes  # the default model's limits
        try:
            data = client.read(ref, (0, limit))  # one byte over the limit tells a larger object
        except FileNotFoundError:
            raise invalid("IMAGE_NOT_FOUND", f"{field}: the object does not exist") from None
        except (OSError, ValueError) as exc:
            raise oss_failure(exc, field) from None
        if len(data) > limit:
            raise invalid("OBJECT_TOO_LARGE", f"{field} is over {limit} bytes")
        return data

    def export_database(self, name: str, destination: str, *, oss: Any = None) -> SnapshotInfo:
        """``oss``: the client for oss:// locations when not the server's own (PAI ``init``)."""
        check_database_name(name)
        self.catalog.get(name, usable=False)  # no folder is made for a database that is not there
        location = self.location(destination, "destination", oss=oss, create=True)
        info = self.catalog.export(name, location, oss or self.oss)
        self.keeper.export(self.catalog.get(name, usable=False), location, oss or self.oss)
        return info

    def import_database(self, name: str, source: str, *, oss: Any = None) -> DatabaseHandle:
        """A new database from an export; an existing name is refused (``load`` replaces one)."""
        check_new_database_name(name)
        location = self.location(source, "source", oss=oss)
        exported = read_export_for(location, oss or self.oss, self.catalog.loaded)
        with self.keeper.import_(exported, location, oss or self.oss):
            return self.catalog.import_(name, exported)

    def load_database(self, name: str, source: str, *, oss: Any = None) -> DatabaseHandle:
        """Replace ``name`` with an export, atomically: the live database changes only if the whole load worked.

        The export is read and verified (checksums, model) first, imported under a temporary
        name, then swapped in with one logged step. Any failure before the swap leaves the live
        database exactly as it was and removes the partial copy.
        """
        check_database_name(name)
        self.reindexer.refuse_while_running(name, "replaced")
        location = self.location(source, "source", oss=oss)
        exported = read_export_for(location, oss or self.oss, self.catalog.loaded)
        staging = f"{LOAD_PREFIX}{secrets.token_hex(4)}-{name}"
        try:
            with self.keeper.import_(exported, location, oss or self.oss):
                self.catalog.import_(staging, exported)
            loaded = self.catalog.get(staging, usable=False)
            if loaded.size != exported.size:
                raise LookalikeError(
                    ErrorKind.INTERNAL, "LOAD_INCOMPLETE",
                    f"the load read {exported.size} images but stored {loaded.size}; {name!r} was not changed",
                )  # fmt: skip
            return self.catalog.replace(name, staging)
        except BaseException:
            try:
                self.catalog.delete(staging)
            except LookalikeError:
                pass  # never created, or already swapped in
            raise

"""Records and vectors in Milvus, through pymilvus' ``MilvusClient``: collections, rows, filters.

This layer knows Milvus and the row layout it persists (key, group, intra id, time, request
id, attributes, vector) and nothing of the server core. Every call has a timeout; a Milvus
that cannot be reached raises ``MilvusUnavailable`` (never a hang), one that refuses a request
raises ``MilvusRejected`` with Milvus' own message. Filter expressions are built only here,
from escaped literals, so a user's string can never become expression syntax.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
from lookalike.server import defaults

log = logging.getLogger(__name__)
T = TypeVar("T")
RELOAD_HINTS = ("released", "not loaded", "load()")


def tame_pymilvus_logging() -> None:
    """pymilvus installs its own console handler; route its records through ours instead.

    Connection retries are logged by pymilvus with a traceback each; the server reports an
    outage itself (UNAVAILABLE / MILVUS_UNAVAILABLE), so those are kept to errors. milvus-lite
    hands out no MVCC timestamp for iterators, and pymilvus' per-page warning about it is dropped.
    """
    root = logging.getLogger("pymilvus")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.WARNING)
    logging.getLogger("pymilvus.client.connection_manager").setLevel(logging.ERROR)
    logging.getLogger("pymilvus.decorators").setLevel(logging.ERROR)
    logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(lambda r: "mvccTs" not in r.getMessage())


KEY_SEPARATOR = "\x1f"  # below every printable character: key order = (group_id, intra_id) order
META_DIM = 2  # Milvus wants a vector field in every collection; the catalog's is a placeholder
MAX_KEY_BYTES = 2048
ROW_FIELDS = ["pk", "group_id", "intra_id", "update_time", "request_id", "attributes"]
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class MilvusUnavailable(OSError):
    """Milvus did not answer (down, unreachable, timed out): the call may be retried."""


class MilvusRejected(ValueError):
    """Milvus answered with an error for this request."""


def literal(text: str) -> str:
    """A double-quoted Milvus string literal holding exactly ``text``."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in text) + '"'


def row_key(group_id: str, intra_id: int) -> str:
    """Primary key of an image; zero-padded so key order is (group_id, intra_id) order."""
    return f"{group_id}{KEY_SEPARATOR}{intra_id:020d}"


def attribute_equals(where: dict[str, str]) -> str:
    return " and ".join(f"attributes[{literal(k)}] == {literal(v)}" for k, v in sorted(where.items()))


def group_prefix_range(prefix: str) -> str:
    """Group ids that start with ``prefix``, as a range (LIKE has no portable escape for % and _)."""
    return f"(group_id >= {literal(prefix)} and group_id < {literal(prefix + chr(0x10FFFF))})"


def after_key(group_id: str, intra_id: int) -> str:
    return f"pk > {literal(row_key(group_id, intra_id))}"


def collection_name(prefix: str, database: str) -> str:
    """Injective mapping of a collection id ([A-Za-z0-9_~-]) onto Milvus' [A-Za-z0-9_]."""
    return prefix + database.replace("_", "_5f").replace("-", "_2d").replace("~", "_7e")


class MilvusStore:
    """One connection to Milvus; collections ``<prefix><database>`` plus ``<prefix>_catalog``."""

    def __init__(
        self,
        uri: str,
        *,
        token: str = "",
        db_name: str = "",
        prefix: str = defaults.MILVUS_PREFIX,
        timeout_s: float = defaults.MILVUS_TIMEOUT_S,
        consistency: str = defaults.MILVUS_CONSISTENCY,
    ) -> None:
        self.uri = uri
        self._token = token
        self._db_name = db_name
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.consistency = consistency
        self.meta = prefix + "_catalog"
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"Milvus at {self.uri}" + (f" (database {self._db_name})" if self._db_name else "")

    # -- calls -----------------------------------------------------------------------------
    def _connect(self) -> Any:
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                tame_pymilvus_logging()

                self._client = MilvusClient(
                    uri=self.uri, token=self._token, db_name=self._db_name, timeout=self.timeout_s
                )
            return self._client

    def call(self, fn: Callable[[Any], T], collection: str | None = None) -> T:
        """Run ``fn(client)``, mapping pymilvus' failures onto the two errors callers handle.

        A collection found released (a Milvus that restarted without reloading it) is loaded
        and the call retried once.
        """
        import grpc
        from pymilvus.exceptions import MilvusException

        for attempt in (0, 1):
            try:
                return fn(self._connect())
            except MilvusException as exc:
                text = str(getattr(exc, "message", "") or exc)
                if _unreachable(exc.code, text):
                    self._reset()
                    raise MilvusUnavailable(f"{self.description} is unavailable: {_clean(text, self._token)}") from None
                if attempt == 0 and collection is not None and any(h in text for h in RELOAD_HINTS):
                    log.info("loading %s in %s (it was released)", collection, self.description)
                    self.call(lambda c: c.load_collection(collection, timeout=self.timeout_s))
                    continue
                raise MilvusRejected(_clean(text, self._token)) from None
            except grpc.RpcError as exc:
                self._reset()
                raise MilvusUnavailable(f"{self.description} is unavailable: {exc.code().name}") from None
            except (ConnectionError, TimeoutError) as exc:
                self._reset()
                raise MilvusUnavailable(f"{self.description} is unavailable: {type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                pass

    # -- the catalog collection (databases and id leases) ------------------------------------
    def ensure_catalog(self) -> None:
        from pymilvus import DataType, MilvusClient

        def make(c: Any) -> None:
            if c.has_collection(self.meta, timeout=self.timeout_s):
                return
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_KEY_BYTES)
            schema.add_field("kind", DataType.VARCHAR, max_length=32)
            schema.add_field("db", DataType.VARCHAR, max_length=128)
            schema.add_field("grp", DataType.VARCHAR, max_length=MAX_KEY_BYTES)
            schema.add_field("block", DataType.INT64)
            schema.add_field("info", DataType.JSON)
            schema.add_field("v", DataType.FLOAT_VECTOR, dim=META_DIM)
            index = c.prepare_index_params()
            index.add_index(field_name="v", index_type="FLAT", metric_type="L2")
            c.create_collection(self.meta, schema=schema, index_params=index, consistency_level=self.consistency,
                                timeout=self.timeout_s)  # fmt: skip

        self.call(make)

    def put_meta(self, rows: list[dict[str, Any]]) -> None:
        full = [{"grp": "", "block": 0, "info": {}, "v": [0.0] * META_DIM, **r} for r in rows]
        self.call(lambda c: c.upsert(self.meta, full, timeout=self.timeout_s), self.meta)

    def meta_rows(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        return self.call(lambda c: c.query(self.meta, filter=expr, output_fields=fields, timeout=self.timeout_s,
                                           consistency_level=self.consistency), self.meta)  # fmt: skip

    def meta_scan(self, expr: str, fields: list[str], batch: int = 1000) -> Iterable[list[dict[str, Any]]]:
        """Catalog rows matching ``expr``, a batch at a time (the retry window's trimming)."""
        return self._iterate(self.meta, expr, fields, batch)

    def delete_meta(self, expr: str) -> None:
        self.call(lambda c: c.delete(self.meta, filter=expr, timeout=self.timeout_s), self.meta)

    # -- image collections -------------------------------------------------------------------
    def create_images(
        self, name: str, dimension: int, index_type: str, index_params: dict[str, Any], metric: str = "IP"
    ) -> None:
        from pymilvus import DataType, MilvusClient

        coll = collection_name(self.prefix, name)

        def make(c: Any) -> None:
            if c.has_collection(coll, timeout=self.timeout_s):  # left by a create that never finished
                c.drop_collection(coll, timeout=self.timeout_s)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_KEY_BYTES)
            schema.add_field("group_id", DataType.VARCHAR, max_length=MAX_KEY_BYTES)
            schema.add_field("intra_id", DataType.INT64)
            schema.add_field("update_time", DataType.DOUBLE)
            schema.add_field("request_id", DataType.VARCHAR, max_length=512)
            schema.add_field("attributes", DataType.JSON)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
            index = c.prepare_index_params()
            index.add_index(field_name="vector", index_type=index_type, metric_type=metric, params=index_params)
            c.create_collection(coll, schema=schema, index_params=index, consistency_level=self.consistency,
                                timeout=self.timeout_s)  # fmt: skip

        self.call(make)

    def drop_images(self, name: str) -> None:
        coll = collection_name(self.prefix, name)
        self.call(lambda c: c.drop_collection(coll, timeout=self.timeout_s))

    def upsert(self, name: str, rows: list[dict[str, Any]]) -> None:
        coll = collection_name(self.prefix, name)
        self.call(lambda c: c.upsert(coll, rows, timeout=self.timeout_s), coll)

    def delete(self, name: str, expr: str) -> None:
        coll = collection_name(self.prefix, name)
        self.call(lambda c: c.delete(coll, filter=expr, timeout=self.timeout_s), coll)

    def query(self, name: str, expr: str, fields: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        coll = collection_name(self.prefix, name)
        options: dict[str, Any] = {"limit": limit} if limit is not None else {}
        return self.call(lambda c: list(c.query(coll, filter=expr, output_fields=fields, timeout=self.timeout_s,
                                                consistency_level=self.consistency, **options)), coll)  # fmt: skip

    def count(self, name: str, expr: str = "") -> int:
        rows = self.query(name, expr, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def page(self, name: str, expr: str, fields: list[str], limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` rows by key among those matching ``expr`` (a key-ordered iterator)."""
        coll = collection_name(self.prefix, name)

        def first(c: Any) -> list[dict[str, Any]]:
            it = c.query_iterator(coll, batch_size=limit, limit=limit, filter=expr, output_fields=fields,
                                  timeout=self.timeout_s, consistency_level=self.consistency)  # fmt: skip
            try:
                return list(it.next())
            finally:
                it.close()

        rows = self.call(first, coll)
        return sorted(rows, key=lambda r: r["pk"])

    def scan(self, name: str, fields: list[str], batch: int = 1000) -> Iterable[list[dict[str, Any]]]:
        """Every row, in key order, a batch at a time (exports)."""
        return self._iterate(collection_name(self.prefix, name), "", fields, batch)

    def _iterate(self, coll: str, expr: str, fields: list[str], batch: int) -> Iterator[list[dict[str, Any]]]:
        it = self.call(
            lambda c: c.query_iterator(coll, batch_size=batch, filter=expr, output_fields=fields,
                                       timeout=self.timeout_s, consistency_level=self.consistency),
            coll,
        )  # fmt: skip
        try:
            while rows := self.call(lambda _c: list(it.next())):
                yield rows
        finally:
            it.close()

    def search(
        self,
        name: str,
        query: np.ndarray,
        k: int,
        expr: str,
        fields: list[str],
        *,
        group_by: str | None = None,
        params: dict[str, Any] | None = None,
        metric: str = "IP",
    ) -> list[dict[str, Any]]:
        coll = collection_name(self.prefix, name)
        options: dict[str, Any] = {"group_by_field": group_by} if group_by else {}

        def run(c: Any) -> list[dict[str, Any]]:
            found = c.search(
                coll, data=[query.astype(np.float32).tolist()], limit=k, filter=expr, output_fields=fields,
                search_params={"metric_type": metric, "params": params or {}}, timeout=self.timeout_s,
                consistency_level=self.consistency, **options,
            )  # fmt: skip
            return list(found[0]) if found else []

        return self.call(run, coll)

    def flush(self, name: str) -> None:
        coll = collection_name(self.prefix, name)
        self.call(lambda c: c.flush(coll, timeout=self.timeout_s), coll)

    def close(self) -> None:
        self._reset()


def _unreachable(code: int, text: str) -> bool:
    lowered = text.lower()
    return code in (1, 2) and any(
        s in lowered for s in ("unavailable", "connect", "deadline", "timeout", "timed out", "closed", "refused")
    )


def _clean(text: str, token: str) -> str:
    """Milvus' message without the token, should a server ever echo it."""
    return text.replace(token, "***") if token else text

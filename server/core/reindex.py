"""ReindexDatabase: re-embed a database with another loaded model from what it kept, without re-uploading.

The loop the product promises (train, serve the new model, keep every catalogue) ends here.
A reindex is a long-running operation (``operations.py``). It fills a shadow database
(``~reindex-<op>-NAME``) bound to the new model from each image's kept original, else its kept
thumbnail, else (``keep: none``) its ``source`` where the server may read it; while it runs,
the old database keeps answering searches and every write to it also goes to the shadow
(``Mirror``), so nothing written meanwhile is missed. The copy loop and the writers meet on
one gate per database: a copied row is written only if the old row is still what was
embedded, and a write updates both databases together. Before switching, the two are compared
row by row (keys and attributes, which name the content), so a write that slipped between a
restart and the resume is caught too. Then the name switches in one logged step
(``NAME`` -> ``NAME@previous``, shadow -> ``NAME``); ``rollback`` swaps them back. A restart
resumes from the last key copied (``reindex.json`` in the operation's folder).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lookalike.server.core.backends.api import DatabaseHandle, Entry, Key, SetRequest, describe_model
from lookalike.server.core.embedding.background import Embedded
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid, not_found
from lookalike.server.core.keeping import VIEWS
from lookalike.server.core.operations import Context, Operation
from lookalike.server.core.reindex_mirror import Mirror, MirrorWrites
from lookalike.server.core.validation import PREVIOUS_SUFFIX, REINDEX_PREFIX, check_database_name

if TYPE_CHECKING:
    from lookalike.server.core.service import LookalikeService

log = logging.getLogger(__name__)
KIND = "reindex"
PAGE = 64  # images re-embedded per step (one model call; a checkpoint after each)
IN_FLIGHT = 2  # pages sent to the model at once: the next is decoded while this one runs
LIST_PAGE = 1000
MAX_LISTED_MISSING = 1000
DEFAULT_SAMPLE = 200
COMPARE_PASSES = 3  # comparisons beside the writers before the last one, under the gate
STATE = "reindex.json"
SOURCE_ATTRIBUTE = "source"  # where `lookalike add` read the file (the importer sets it)


def previous_name(name: str) -> str:
    return name + PREVIOUS_SUFFIX


def shadow_name(operation_id: str, name: str) -> str:
    return f"{REINDEX_PREFIX}{operation_id[:8]}-{name}"


class Reindexer(MirrorWrites):
    """Starts, runs and resumes reindex operations, and mirrors writes while one runs."""

    def __init__(self, service: LookalikeService) -> None:
        self.service = service
        self.mirrors: dict[str, Mirror] = {}
        # name -> the database a reindex switched away from (weak: dropping NAME@previous frees it)
        self.switched: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    # -- the calls ---------------------------------------------------------------------------
    def request(
        self, name: str, model: str = "", allow_missing: bool = False, sample_queries: int = 0
    ) -> dict[str, Any]:
        """The checked request, as the operation keeps it."""
        check_database_name(name)
        if name.endswith(PREVIOUS_SUFFIX):
            base = name[: -len(PREVIOUS_SUFFIX)]
            raise invalid("DATABASE_NAME_INVALID", f"{name!r} is a copy kept by a reindex; reindex {base!r}")
        s = self.service
        db = s.catalog.get(name, usable=False)
        model = s.models.resolve(model)
        if s.models.find(db.model, db.dimension) == model:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "REINDEX_SAME_MODEL",
                                 f"database {name!r} already holds vectors of model {model!r}; name another loaded "
                                 "model (lookalike models), e.g. one served with --model NAME=PATH")  # fmt: skip
        if not 0 <= sample_queries <= 10000:
            raise invalid("SAMPLE_QUERIES_INVALID", f"sample_queries {sample_queries} is out of range; use 0-10000")
        running = self.mirrors.get(name)
        if running is not None:
            raise LookalikeError(ErrorKind.ALREADY_EXISTS, "REINDEX_RUNNING",
                                 f"database {name!r} is being reindexed by operations/{running.operation}; wait for "
                                 "it or cancel it (lookalike ops cancel)",
                                 operation=f"operations/{running.operation}")  # fmt: skip
        return {"database": name, "model": model, "allow_missing": bool(allow_missing),
                "sample_queries": int(sample_queries or DEFAULT_SAMPLE)}  # fmt: skip

    def start(self, request: dict[str, Any]) -> Operation:
        with self._lock:
            if request["database"] in self.mirrors:
                raise LookalikeError(ErrorKind.ALREADY_EXISTS, "REINDEX_RUNNING",
                                     f"database {request['database']!r} is being reindexed")  # fmt: skip
            op = self.service.operations.start(KIND, request["database"], request)
            name = request["database"]  # mirrored from now on: a second reindex of it is refused at once
            self.mirrors.setdefault(name, Mirror(op.id, name, shadow_name(op.id, name), request["model"]))
        return op

    def switched_from(self, name: str) -> DatabaseHandle | None:
        """The database the last reindex of ``name`` replaced (a writer pinned to it goes again), if any."""
        return self.switched.get(name)

    def refuse_while_running(self, name: str, what: str) -> None:
        mirror = self.mirrors.get(name)
        if mirror is not None:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "REINDEX_RUNNING",
                                 f"database {name!r} is being reindexed by operations/{mirror.operation}, so it cannot "
                                 f"be {what} now; cancel the reindex first (lookalike ops cancel)")  # fmt: skip

    def operation_of(self, name: str) -> str:
        mirror = self.mirrors.get(name)
        return f"operations/{mirror.operation}" if mirror is not None else ""

    def rollback(self, name: str) -> tuple[DatabaseHandle, DatabaseHandle]:
        """Swap NAME and NAME@previous in one logged step (rolling back twice restores the reindexed one)."""
        check_database_name(name)
        if name.endswith(PREVIOUS_SUFFIX):
            raise invalid("DATABASE_NAME_INVALID", f"roll back {name[: -len(PREVIOUS_SUFFIX)]!r}, not its copy")
        s = self.service
        s.catalog.get(name, usable=False)
        previous = previous_name(name)
        try:
            s.catalog.get(previous, usable=False)
        except LookalikeError:
            raise not_found("PREVIOUS_NOT_FOUND", f"database {name!r} has no {previous!r} to roll back to: only a "
                            "finished reindex keeps one, until it is dropped") from None  # fmt: skip
        if name in self.mirrors:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "REINDEX_RUNNING",
                                 f"database {name!r} is being reindexed; cancel that first")  # fmt: skip
        s.catalog.rename([(name, previous), (previous, name)])
        log.info("rolled back %r: it and %r swapped names", name, previous)
        return s.catalog.get(name, usable=False), s.catalog.get(previous, usable=False)

    # -- the operation -----------------------------------------------------------------------
    def run(self, ctx: Context) -> dict[str, Any]:
        req = ctx.request
        name, model = req["database"], req["model"]
        s = self.service
        state = self._load(ctx)
        shadow = state.setdefault("shadow", shadow_name(ctx.op.id, name))
        with self._lock:
            mirror = self.mirrors.get(name)
            if mirror is None or mirror.operation != ctx.op.id:  # resumed after a restart
                mirror = self.mirrors[name] = Mirror(ctx.op.id, name, shadow, model)
        try:
            primary = s.catalog.get(name, usable=False)
            try:
                s.catalog.get(shadow, usable=False)
            except LookalikeError:
                if state.get("started") and s.models.find(primary.model, primary.dimension) == model:
                    return self._switched_before(ctx, mirror, state)  # a restart after the switch was logged
                storage = primary.storage if primary.storage in ("f32", "f16", "bf16", "i8") else ""
                s.catalog.create(
                    shadow, storage, primary.keep, (s.models.identity(model), s.models.get(model).dimension)
                )
            state["started"] = True
            self._save(ctx, state)
            self._copy(ctx, mirror, state)
            return self._finish(ctx, mirror, state)
        except BaseException:
            if not ctx.op.done and not s.operations.stopping.is_set():  # cancelled or failed: the shadow goes
                self._drop(shadow)
            raise
        finally:
            with self._lock:
                if self.mirrors.get(name) is mirror:
                    del self.mirrors[name]

    def _drop(self, shadow: str) -> None:
        try:
            self.service.catalog.delete(shadow)
        except LookalikeError:
            pass

    def _copy(self, ctx: Context, mirror: Mirror, state: dict[str, Any]) -> None:
        """Every row of the old database, in key order from where the last run stopped, into the shadow.

        The new model embeds in the background (``Embedder.background``: on a CPU, a child process at idle priority
        with its own interpreter lock); the next page is read and sent while this one is embedded (``IN_FLIGHT``)."""
        s = self.service
        worker = s.models.get(mirror.model).background()
        cursor = tuple(state["after"]) if state.get("after") else None
        flight: deque[tuple[list[Entry], list[tuple[bytes | None, str]], Future[Embedded]]] = deque()
        more = True
        while True:
            while more and len(flight) < IN_FLIGHT:
                ctx.check()
                primary = s.catalog.get(mirror.database, usable=False)
                page, more = primary.list(group_id=None, after=cursor, limit=PAGE)  # type: ignore[arg-type]
                if not page:
                    more = False
                    break
                images = [self._bytes_of(e) for e in page]
                flight.append((page, images, worker.submit([data for data, _ in images])))
                cursor = (page[-1].group_id, page[-1].intra_id)
            if not flight:
                break
            page, images, future = flight.popleft()
            embedded = self._wait(ctx, future)
            for k, reason in embedded.errors.items():
                images[k] = (None, reason)
            by_row = {k: embedded.vectors[j] for j, k in enumerate(embedded.rows)}
            primary = s.catalog.get(mirror.database, usable=False)
            with mirror.gate:  # a row written since it was read is the writers' business (they mirror it)
                fresh, rows = [], []
                for k, entry in enumerate(page):
                    if k not in by_row:
                        continue
                    try:
                        now = primary.get(entry.group_id, entry.intra_id)
                    except LookalikeError:
                        continue
                    if now.attributes == entry.attributes:
                        fresh.append(SetRequest(entry.group_id, entry.intra_id, "", dict(entry.attributes)))
                        rows.append(by_row[k])
                if fresh:
                    s.catalog.set_images(mirror.shadow, fresh, np.stack(rows))
            state["reindexed"] = int(state.get("reindexed", 0)) + len(fresh)
            for k, (data, reason) in enumerate(images):
                if data is None:
                    self._note_missing(state, page[k], reason)
            state["after"] = [page[-1].group_id, page[-1].intra_id]  # a resume embeds the pages in flight again
            self._save(ctx, state)
            done = int(state["reindexed"]) + int(state.get("missing_count", 0))
            ctx.report(done, max(done, primary.size), unit="images", stage="re-embedding")

    @staticmethod
    def _wait(ctx: Context, future: Future[Embedded]) -> Embedded:
        """The page's vectors, checking for a cancel while the model works."""
        while True:
            ctx.check()
            try:
                return future.result(timeout=0.25)
            except FutureTimeout:
                continue

    def _bytes_of(self, entry: Entry) -> tuple[bytes | None, str]:
        """The best kept bytes of a row (original, thumbnail, readable source) and, when none, why."""
        attrs = entry.attributes
        keeper = self.service.keeper
        for view in ("original", "thumbnail"):
            digest = attrs.get(VIEWS[view])
            if digest:
                try:
                    return keeper.store.get(digest), ""
                except KeyError:
                    reason = "IMAGE_BYTES_MISSING"
                    break
        else:
            reason = "IMAGE_NOT_KEPT" if attrs.get("lookalike.sha256") else "VECTOR_ONLY"
        source = attrs.get(SOURCE_ATTRIBUTE, "")
        if source and reason != "VECTOR_ONLY":
            try:
                return self._read_source(source), ""
            except LookalikeError:
                reason = "SOURCE_UNREADABLE"
        return None, reason

    def _read_source(self, source: str) -> bytes:
        """A ``source`` the server may read: ``oss://`` under --oss-allow, or a file under the export root."""
        s = self.service
        if source.startswith("oss://"):
            return s.read_oss(source, "source")
        path = Path(s.location(source, "source"))
        limit = s.embedder.max_image_bytes
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError:
            raise not_found("SOURCE_UNREADABLE", f"source {source[:200]!r} cannot be read") from None
        if len(data) > limit:
            raise invalid("OBJECT_TOO_LARGE", f"source {source[:200]!r} is over {limit} bytes")
        return data

    @staticmethod
    def _note_missing(state: dict[str, Any], entry: Entry, reason: str) -> None:
        state["missing_count"] = int(state.get("missing_count", 0)) + 1
        listed = state.setdefault("missing", [])
        if len(listed) < MAX_LISTED_MISSING:
            listed.append([entry.group_id, entry.intra_id, entry.attributes.get(SOURCE_ATTRIBUTE, ""), reason])

    def _finish(self, ctx: Context, mirror: Mirror, state: dict[str, Any]) -> dict[str, Any]:
        """Compare the two databases until a comparison sees no write beside it (at most ``COMPARE_PASSES``: under
        a steady stream of writes the last one runs under the gate, writes waiting); then switch, under the gate."""
        s = self.service
        for _ in range(COMPARE_PASSES):
            ctx.check()
            seen = mirror.writes
            ctx.report(1, 1, unit="images", stage="comparing", fraction=0.99)
            missing = self._reconcile(mirror)
            if mirror.writes == seen:
                break
        quality = self._quality(mirror, int(ctx.request["sample_queries"]))
        if missing and not ctx.request["allow_missing"]:
            first = ", ".join(f"{g}/{i} ({r})" for g, i, _, r in missing[:5])
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "REINDEX_INCOMPLETE",
                                 f"{len(missing)} images of {mirror.database!r} could not be re-embedded ({first}); "
                                 "nothing was switched. Re-run with allow_missing (lookalike db reindex --allow-missing"
                                 ", or --from-folder DIR to upload them by their source)")  # fmt: skip
        ctx.check()
        with mirror.gate:
            if mirror.writes != seen:
                missing = self._reconcile(mirror, gated=True)
            primary = s.catalog.get(mirror.database, usable=False)
            previous = previous_name(mirror.database)
            s.catalog.rename([(mirror.database, previous), (mirror.shadow, mirror.database)])
            mirror.switched = True
            self.switched[mirror.database] = primary  # a stream pinned to it starts its chunk again
        log.info("reindex of %r with model %r switched the name (old kept as %r)", mirror.database, mirror.model,
                 previous)  # fmt: skip
        listed = [{"key": [g, i], "source": src, "reason": r} for g, i, src, r in missing[:MAX_LISTED_MISSING]]
        copied = int(state.get("reindexed", 0)) + mirror.mended
        return {"database": mirror.database, "previous": previous, "model": mirror.model,
                "previous_model": describe_model(primary.model), "reindexed_count": copied,
                "concurrent_writes": mirror.writes, "missing_count": len(missing),
                "missing": listed, "switched": True, **quality}  # fmt: skip

    def _switched_before(self, ctx: Context, mirror: Mirror, state: dict[str, Any]) -> dict[str, Any]:
        """The switch was logged before a restart: report it (the old database is NAME@previous)."""
        s = self.service
        previous = previous_name(mirror.database)
        old = s.catalog.get(previous, usable=False)
        mirror.switched = True
        listed = [{"key": [g, i], "source": src, "reason": r} for g, i, src, r in state.get("missing", [])]
        return {"database": mirror.database, "previous": previous, "model": mirror.model,
                "previous_model": describe_model(old.model), "reindexed_count": s.catalog.get(mirror.database,
                usable=False).size, "concurrent_writes": 0, "missing_count": int(state.get("missing_count", 0)),
                "missing": listed, "switched": True, "overlap_at_10": 0.0, "same_nearest_group": 0.0,
                "sampled_queries": 0}  # fmt: skip

    def _keys(self, db: DatabaseHandle) -> Iterator[Entry]:
        after: Key | None = None
        while True:
            page, more = db.list(group_id=None, after=after, limit=LIST_PAGE)
            yield from page
            if not more or not page:
                return
            after = (page[-1].group_id, page[-1].intra_id)

    def _reconcile(self, mirror: Mirror, *, gated: bool = False) -> list[list[Any]]:
        """Mend the shadow where it differs from the old database (a write that slipped past the mirror); returns
        the rows that cannot be re-embedded (group, intra, source, reason). ``gated``: the caller holds the gate."""
        s = self.service
        primary = s.catalog.get(mirror.database, usable=False)
        shadow = s.catalog.get(mirror.shadow, usable=False)
        theirs = {(e.group_id, e.intra_id): e.attributes for e in self._keys(shadow)}
        stale, missing = [], []
        for entry in self._keys(primary):
            key = (entry.group_id, entry.intra_id)
            if theirs.pop(key, None) != entry.attributes:
                stale.append(entry)
        for key in theirs:  # deleted from the old one while copying
            self._forget(mirror, key)
        embedder = s.models.get(mirror.model)
        for entry in stale:
            data, reason = self._bytes_of(entry)
            if data is not None:
                try:
                    vector = embedder.embed([data], field="image")[0]
                except LookalikeError as err:
                    data, reason = None, err.reason
            with nullcontext() if gated else mirror.gate:
                if data is None:
                    self._forget(mirror, (entry.group_id, entry.intra_id))
                    missing.append([entry.group_id, entry.intra_id, entry.attributes.get(SOURCE_ATTRIBUTE, ""), reason])
                else:
                    request = SetRequest(entry.group_id, entry.intra_id, "", dict(entry.attributes))
                    s.catalog.set_images(mirror.shadow, [request], vector[np.newaxis])
                    mirror.mended += 1
        return missing

    def _quality(self, mirror: Mirror, samples: int) -> dict[str, Any]:
        """overlap@10 of the old and new neighbourhoods, and how often the nearest other group stayed."""
        s = self.service
        old = s.catalog.get(mirror.database, usable=False)
        new = s.catalog.get(mirror.shadow, usable=False)
        keys = [(e.group_id, e.intra_id) for e in self._keys(new)]
        if len(keys) < 2:
            return {"overlap_at_10": 0.0, "same_nearest_group": 0.0, "sampled_queries": 0}
        picks = [keys[int(i)] for i in np.linspace(0, len(keys) - 1, min(samples, len(keys))).round()]
        overlaps, same = [], []
        for key in dict.fromkeys(picks):
            try:
                a = old.search_tier(old.get(*key).vector, 10, exclude=key, with_attributes=False)[0]
                b = new.search_tier(new.get(*key).vector, 10, exclude=key, with_attributes=False)[0]
            except LookalikeError:
                continue
            ka, kb = {(h.group_id, h.intra_id) for h in a}, {(h.group_id, h.intra_id) for h in b}
            overlaps.append(len(ka & kb) / max(1, min(len(ka), len(kb), 10)))
            ga = next((h.group_id for h in a if h.group_id != key[0]), None)
            gb = next((h.group_id for h in b if h.group_id != key[0]), None)
            same.append(ga == gb)
        n = len(overlaps)
        return {"overlap_at_10": float(np.mean(overlaps)) if n else 0.0,
                "same_nearest_group": float(np.mean(same)) if n else 0.0, "sampled_queries": n}  # fmt: skip

    # -- the checkpoint ----------------------------------------------------------------------
    @staticmethod
    def _load(ctx: Context) -> dict[str, Any]:
        try:
            return json.loads((ctx.folder / STATE).read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _save(ctx: Context, state: dict[str, Any]) -> None:
        ctx.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=ctx.folder)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ctx.folder / STATE)

"""FindDuplicates: the self-join of a database as a resumable operation, its clusters as a paged result.

The runner compares blocks of images (``DatabaseJoin.join_block`` on the built-in store: one
native call per block, outside the database lock) and after each block writes the pairs it found
and its position (``checkpoint.json``), so a restart continues at the next block. Block sizes adapt
so one block takes about ``block_seconds``: the job shares the CPU with searches and writes but
never holds anything longer than that. Then the pairs are clustered (``clusters.py``) and written
as one JSON line per cluster with a row of byte offsets, so any page is read without the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from lookalike.server import defaults
from lookalike.server.core.dedup import tiers
from lookalike.server.core.dedup.clusters import Cluster, ItemInfo, KeeperRule, cluster_pairs
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.operations import SUCCEEDED, Context, Operations
from lookalike.server.core.paging import decode_token, encode_token, page_size
from lookalike.server.core.validation import SIZE_ATTRIBUTE, check_database_name

KIND = "find_duplicates"
METHODS = ("exact", "graph")
CHECKPOINT = "checkpoint.json"
RESULT, OFFSETS = "clusters.jsonl", "offsets.npy"
PAIR_DTYPE = np.dtype([("a", "<i8"), ("b", "<i8"), ("score", "<f4")])


@dataclass(frozen=True)
class DedupSettings:
    exact_max_images: int = defaults.DEDUP_EXACT_MAX_IMAGES  # above: each image's HNSW neighbours, not every pair
    graph_neighbours: int = defaults.DEDUP_GRAPH_NEIGHBOURS
    block_seconds: float = defaults.DEDUP_BLOCK_SECONDS  # the longest one block should take
    max_pairs: int = defaults.DEDUP_MAX_PAIRS  # pairs one job may find before it stops and asks for a higher threshold
    threads: int = 0  # kernel threads per block (0: the server's budget)


def database_replaced(database: str) -> LookalikeError:
    return LookalikeError(ErrorKind.FAILED_PRECONDITION, "DATABASE_REPLACED",
                          f"database {database!r} was deleted or re-created while its duplicates were being found; "
                          "start again on the database as it is now")  # fmt: skip


def dedup_unsupported(database: str) -> LookalikeError:
    return LookalikeError(ErrorKind.FAILED_PRECONDITION, "DEDUP_UNSUPPORTED",
                          f"database {database!r} lives in Milvus; finding duplicates needs the built-in store's "
                          "self-join (export it and import it into a built-in server to run it)")  # fmt: skip


def too_many_pairs(found: int, threshold: float) -> LookalikeError:
    return LookalikeError(ErrorKind.RESOURCE_EXHAUSTED, "TOO_MANY_PAIRS",
                          f"more than {found} pairs score at or above {threshold:.4f}; that is not duplicates but "
                          "most of the catalogue: raise the threshold or use a stricter tier "
                          "(--dedup-max-pairs)")  # fmt: skip


class DuplicateFinder:
    """Starts FindDuplicates operations, runs them, and reads their clusters back a page at a time."""

    def __init__(
        self, database: Callable[[str], Any], model_tiers: Callable[[str], tuple[dict[str, float] | None, str]],
        settings: DedupSettings | None = None,
    ) -> None:  # fmt: skip
        """``database(name)`` is the backend's handle; ``model_tiers(name)`` its model's (tiers, name)."""
        self.database = database
        self.model_tiers = model_tiers
        self.settings = settings or DedupSettings()
        self.operations: Operations | None = None  # set by the service once the registry exists

    # -- the call ----------------------------------------------------------------------------
    def request(self, database: str, *, tier: str = "", threshold: float | None = None, no_chaining: bool = False,
                keeper: str = "", method: str = "") -> dict[str, Any]:  # fmt: skip
        """The checked request with its defaults filled in, as the operation keeps it."""
        check_database_name(database)
        db = self.database(database)
        if not hasattr(db, "join_block"):
            raise dedup_unsupported(database)
        model_tiers, model_name = self.model_tiers(database)
        value, tier_name = tiers.resolve(model_tiers, model_name, tier, threshold)
        try:
            rule = KeeperRule.parse(keeper or "central")
        except ValueError as exc:
            raise invalid("KEEPER_INVALID", str(exc)) from None
        if method and method not in METHODS:
            raise invalid(
                "METHOD_INVALID", f"method {method!r} is not one of {', '.join(METHODS)} (or empty: automatic)"
            )
        return {"database": database, "threshold": value, "tier": tier_name, "no_chaining": bool(no_chaining),
                "keeper": keeper or rule.kind, "method": method}  # fmt: skip

    # -- the runner ----------------------------------------------------------------------------
    def run(self, ctx: Context) -> dict[str, Any]:
        req, s = ctx.request, self.settings
        db = self.database(req["database"])
        state = self._checkpoint(ctx)
        if state is None:
            end_id, live = db.join_scope()
            method = req["method"] or ("exact" if live <= s.exact_max_images else "graph")
            state = {"end_id": end_id, "next_id": 0, "files": [], "pairs": 0, "method": method, "block_rows": 256,
                     "seconds": 0.0, "images": live, "incarnation": getattr(db, "incarnation", 0)}  # fmt: skip
            self._save(ctx, state)
        state.setdefault("incarnation", getattr(db, "incarnation", 0))  # a checkpoint from before it was kept
        if getattr(db, "incarnation", 0) != state["incarnation"]:
            raise database_replaced(req["database"])
        threshold, method = float(req["threshold"]), state["method"]
        while state["next_id"] < state["end_id"]:
            ctx.check()
            db = self.database(req["database"])  # the current one: deleted or re-created meanwhile ends the job
            if getattr(db, "incarnation", 0) != state["incarnation"]:
                raise database_replaced(req["database"])
            started = time.monotonic()
            rows = int(state["block_rows"])
            try:
                if method == "graph":
                    block = db.graph_block(
                        state["next_id"], state["end_id"], rows, threshold, s.graph_neighbours, s.threads
                    )
                else:
                    block = db.join_block(state["next_id"], state["end_id"], rows, threshold, s.threads)
            except ValueError as exc:  # the kernel's bound on one block's pairs: the threshold keeps most pairs
                if "max_pairs" not in str(exc):
                    raise
                why = f"one block of images already has too many pairs at or above {threshold:.4f} ({str(exc)[:200]})"
                raise LookalikeError(ErrorKind.RESOURCE_EXHAUSTED, "TOO_MANY_PAIRS",
                                     f"{why}: raise the threshold or use a stricter tier") from None  # fmt: skip
            took = time.monotonic() - started
            if len(block.scores):
                name = f"pairs-{len(state['files']):06d}.npy"
                pairs = np.empty(len(block.scores), PAIR_DTYPE)
                pairs["a"], pairs["b"], pairs["score"] = block.ids_a, block.ids_b, block.scores
                self._ops().files.put(f"{ctx.op.id}/{name}", pairs.tobytes())
                state["files"].append(name)
                state["pairs"] += len(pairs)
                if state["pairs"] > s.max_pairs:
                    raise too_many_pairs(s.max_pairs, threshold)
            state["next_id"], state["seconds"] = block.next_id, state["seconds"] + took
            state["block_rows"] = int(np.clip(rows * s.block_seconds / max(took, 1e-3), 16, 16384)) if took else rows
            self._save(ctx, state)
            scope = max(block.scope_rows, 1)
            left = (scope - block.done_rows) / scope
            ctx.report(block.done_rows, block.scope_rows, unit="images", stage="comparing",
                       fraction=1.0 - left * left if method == "exact" else 1.0 - left)  # fmt: skip
        ctx.check()
        ctx.report(state["images"], state["images"], unit="images", stage="clustering", fraction=1.0)
        started = time.monotonic()
        summary = self._cluster(ctx, db, state, threshold, req)
        seconds = state["seconds"] + time.monotonic() - started
        summary.update(threshold=threshold, tier=req["tier"], method=method, image_count=state["images"],
                       seconds=seconds, no_chaining=req["no_chaining"])  # fmt: skip
        return summary

    def _cluster(self, ctx: Context, db: Any, state: dict[str, Any], threshold: float, req: dict[str, Any]) -> dict:
        files = self._ops().files
        parts = [np.frombuffer(files.get(f"{ctx.op.id}/{f}"), PAIR_DTYPE) for f in state["files"]]
        pairs = np.concatenate(parts) if parts else np.empty(0, PAIR_DTYPE)
        lo, hi = np.minimum(pairs["a"], pairs["b"]), np.maximum(pairs["a"], pairs["b"])
        key = np.stack([lo, hi], axis=1)
        key, first = np.unique(key, axis=0, return_index=True) if len(pairs) else (key, np.zeros(0, np.int64))
        scores = pairs["score"][first]
        ids = np.unique(key.reshape(-1))
        records = db.describe_ids(ids)
        present = np.array([k is not None for k in records.keys], bool)
        index = np.cumsum(present) - 1  # id position -> item number among present ones
        a_pos, b_pos = np.searchsorted(ids, key[:, 0]), np.searchsorted(ids, key[:, 1])
        keep = present[a_pos] & present[b_pos] if len(ids) else np.zeros(0, bool)
        items = ids[present]
        keys = [k for k in records.keys if k is not None]
        attrs = [a for a, ok in zip(records.attributes, present.tolist(), strict=True) if ok]

        def vectors(chosen: np.ndarray) -> np.ndarray:
            return db.vectors_of_ids(items[chosen])

        info = ItemInfo(time=records.times[present], pixels=_pixels(attrs),
                        attribute=lambda i, k: attrs[i].get(k))  # fmt: skip
        clusters = cluster_pairs(len(items), index[a_pos[keep]], index[b_pos[keep]], scores[keep], threshold,
                                 vectors, info, chaining=not req["no_chaining"],
                                 keeper=KeeperRule.parse(req["keeper"]))  # fmt: skip
        lines, offsets, total = [], [0], 0
        for n, c in enumerate(clusters):
            line = json.dumps(_describe(n, c, keys, attrs), separators=(",", ":")).encode() + b"\n"
            lines.append(line)
            total += len(line)
            offsets.append(total)
        files.put(f"{ctx.op.id}/{RESULT}", b"".join(lines))
        files.put(f"{ctx.op.id}/{OFFSETS}", np.asarray(offsets, "<i8").tobytes())
        clustered = sum(len(c.members) for c in clusters)
        return {"pair_count": int(keep.sum()), "cluster_count": len(clusters), "clustered_image_count": clustered,
                "removable_count": clustered - len(clusters)}  # fmt: skip

    # -- reading the result ----------------------------------------------------------------------
    def clusters(self, name: str, size: int, token: str) -> tuple[list[dict[str, Any]], str, int]:
        """A page of a finished job's clusters (largest first), the next token and the total."""
        ops = self._ops()
        op = ops.get(name)
        if op.kind != KIND:
            raise invalid("OPERATION_NAME_INVALID", f"{op.name} is a {op.kind} operation, not find_duplicates")
        if op.state != SUCCEEDED:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "OPERATION_NOT_DONE",
                                 f"{op.name} is {op.state.lower()}; clusters are read once it has succeeded "
                                 "(wait for it: lookalike ops wait)")  # fmt: skip
        size = page_size(size)
        start = decode_token(token) or 0
        if not isinstance(start, int) or start < 0:
            raise invalid("PAGE_TOKEN_INVALID", "page_token is not one this server issued")
        offsets = np.frombuffer(ops.files.get(f"{op.id}/{OFFSETS}"), "<i8")
        count = len(offsets) - 1
        end = min(start + size, count)
        if start >= end:
            return [], "", count
        raw = ops.files.get_range(f"{op.id}/{RESULT}", int(offsets[start]), int(offsets[end] - offsets[start]))
        page = [json.loads(line) for line in raw.splitlines()]
        return page, (encode_token(end) if end < count else ""), count

    # -- files -------------------------------------------------------------------------------------
    def _ops(self) -> Operations:
        assert self.operations is not None, "the service sets DuplicateFinder.operations"
        return self.operations

    def _checkpoint(self, ctx: Context) -> dict[str, Any] | None:
        files = self._ops().files
        name = f"{ctx.op.id}/{CHECKPOINT}"
        return json.loads(files.get(name)) if files.exists(name) else None

    def _save(self, ctx: Context, state: dict[str, Any]) -> None:
        self._ops().files.put(f"{ctx.op.id}/{CHECKPOINT}", json.dumps(state).encode())


def _pixels(attrs: list[dict[str, str]]) -> np.ndarray:
    out = np.zeros(len(attrs), np.int64)
    for i, a in enumerate(attrs):
        size = a.get(SIZE_ATTRIBUTE, "")
        if "x" in size:
            w, h = size.split("x", 1)
            out[i] = int(w) * int(h) if w.isdigit() and h.isdigit() else 0
    return out


def _describe(n: int, c: Cluster, keys: list[Any], attrs: list[dict[str, str]]) -> dict[str, Any]:
    """One cluster as its JSON line: keys instead of item numbers, each member's similarity to the centre."""

    def pair(p: tuple[int, int, float]) -> list[Any]:
        return [*keys[p[0]], *keys[p[1]], float(p[2])]

    members = np.asarray(c.members, np.int64).tolist()
    to_centre = np.asarray(c.to_centre, np.float64).tolist()
    return {"index": n, "members": [[*keys[m], s, attrs[m]] for m, s in zip(members, to_centre, strict=True)],
            "centre": list(keys[c.centre]), "keeper": list(keys[c.keeper]), "keeper_reason": c.keeper_reason,
            "closest": pair(c.closest), "farthest": pair(c.farthest), "exact_pairs": bool(c.exact_pairs)}  # fmt: skip

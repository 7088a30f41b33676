"""Bulk import for ``lookalike add``: files, folders, image lists and oss:// objects.

Sources become ``(source, group_id, intra_id)`` items; files are read by a few threads with a
bounded number of images in flight, sent in BulkSetImages streams of ``batch`` items, each
item carrying a request id derived from (database, source) so a stream retried after a
transient failure (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) stores nothing twice.
The source path is stored as the ``source`` attribute; ``--resume`` skips sources already there.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.client.client import ClientError, LookalikeClient

from lookalike.oss import OssReader, is_oss

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
LIST_SUFFIXES = {".txt", ".lst", ".list", ".csv"}
TRANSIENT = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED"}


@dataclass(frozen=True)
class Source:
    ref: str  # a local path or oss://bucket/key
    group_id: str
    intra_id: int | None = None


@dataclass
class ImportSummary:
    received: int = 0
    succeeded: int = 0
    skipped: int = 0
    keys: list[tuple[str, int]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _group_of(ref: str, group_from: str) -> str:
    path = Path(ref.split("://", 1)[-1])
    return path.parent.name if group_from == "parent" and path.parent.name else path.stem


def read_list(ref: str, oss: OssReader, group_from: str) -> Iterator[Source]:
    """PAI-style image list: ``path[,group_id[,intra_id]]`` per line (commas or tabs); '#' comments."""
    text = oss.read(ref).decode() if is_oss(ref) else Path(ref).read_text()
    base = ref.rsplit("/", 1)[0] + "/" if is_oss(ref) else str(Path(ref).parent) + "/"
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.replace("\t", ",").split(",")]
        path = parts[0] if is_oss(parts[0]) or parts[0].startswith("/") else base + parts[0]
        group = parts[1] if len(parts) > 1 and parts[1] else _group_of(path, group_from)
        try:
            intra = int(parts[2]) if len(parts) > 2 and parts[2] else None
        except ValueError:
            raise SystemExit(f"lookalike: {ref}:{number}: intra_id {parts[2]!r} is not an integer") from None
        yield Source(path, group, intra)


def sources(inputs: list[str], *, group: str | None = None, group_from: str = "name",
            oss: OssReader | None = None) -> Iterator[Source]:  # fmt: skip
    """Every image the inputs name: files, folders (recursive, sorted), image lists, oss:// objects or lists."""
    oss = oss or OssReader()
    for item in inputs:
        if is_oss(item):
            if Path(item).suffix.lower() in LIST_SUFFIXES:
                found = read_list(item, oss, group_from)
            elif item.endswith("/"):
                raise SystemExit(
                    f"lookalike: {item} is a prefix; pass an image list (one oss:// path per line) so nothing "
                    "has to be listed"
                )
            else:
                found = iter([Source(item, _group_of(item, group_from))])
        else:
            p = Path(item)
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
                found = (Source(str(f), _group_of(str(f), group_from)) for f in files)
            elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
                found = read_list(item, oss, group_from)
            elif p.is_file():
                found = iter([Source(str(p), _group_of(str(p), group_from))])
            else:
                raise SystemExit(f"lookalike: {p} does not exist")
        for s in found:
            yield Source(s.ref, group or s.group_id, s.intra_id) if group else s


def request_id(database: str, ref: str) -> str:
    return "import-" + hashlib.sha256(f"{database}\0{ref}".encode()).hexdigest()[:40]


def registered_sources(client: LookalikeClient, database: str) -> set[str]:
    images = client.list_images(database, page_size=1000)
    return {img.attributes["source"] for img in images if "source" in img.attributes}


def run_import(
    client: LookalikeClient,
    database: str,
    items: Iterable[Source],
    *,
    batch: int = 64,
    in_flight: int = 256,
    workers: int = 4,
    retries: int = 4,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    oss: OssReader | None = None,
    streams: int = 2,
) -> ImportSummary:
    """Read ahead and send ``batch``-item streams, ``streams`` of them at once.

    Two streams keep the server busy: one stream's images decode while the other's run through the
    model, and neither waits for the client between streams. A stream whose images get automatic
    intra_ids in a group that an unfinished stream also numbers waits for it, so ids within a group
    still follow the order of the sources. Results are merged in source order.
    """
    oss = oss or OssReader()
    summary = ImportSummary()
    started = time.monotonic()
    done = registered_sources(client, database) if resume else set()
    todo = []
    for s in items:
        summary.received += 1
        if s.ref in done:
            summary.skipped += 1
        else:
            todo.append(s)
    if progress is not None and summary.skipped:
        progress(summary.skipped)

    def load(s: Source) -> bytes | Exception:
        try:
            return oss.read(s.ref) if is_oss(s.ref) else Path(s.ref).read_bytes()
        except (OSError, ValueError) as exc:
            return exc

    def send(part: list[tuple[Source, Any]]) -> ImportSummary:
        result = ImportSummary()
        _send(client, database, part, result, retries)
        if progress is not None:
            progress(len(part))
        return result

    def numbered(part: list[tuple[Source, Any]]) -> set[str]:
        return {s.group_id for s, _ in part if s.intra_id is None}

    pending: deque[tuple[Future[ImportSummary], set[str]]] = deque()

    def merge_oldest() -> None:
        fut, _ = pending.popleft()
        r = fut.result()
        summary.succeeded += r.succeeded
        summary.keys += r.keys
        summary.failures += r.failures

    with (
        ThreadPoolExecutor(workers, thread_name_prefix="read") as pool,
        ThreadPoolExecutor(max(1, streams), thread_name_prefix="send") as senders,
    ):
        reads: dict[int, Future[bytes | Exception]] = {}
        next_read = 0
        for b in range(0, len(todo), batch):
            while next_read < len(todo) and next_read < b + batch + in_flight:  # at most in_flight read ahead
                reads[next_read] = pool.submit(load, todo[next_read])
                next_read += 1
            part = [(todo[i], reads.pop(i).result()) for i in range(b, min(b + batch, len(todo)))]
            groups = numbered(part)
            while pending and (len(pending) >= max(1, streams) or any(groups & g for _, g in pending)):
                merge_oldest()
            pending.append((senders.submit(send, part), groups))
        while pending:
            merge_oldest()
    summary.seconds = time.monotonic() - started
    return summary


def _send(client: LookalikeClient, database: str, part: list[tuple[Source, Any]], summary: ImportSummary,
          retries: int) -> None:  # fmt: skip
    sendable = []
    for s, content in part:
        if isinstance(content, Exception):
            summary.failures.append({"source": s.ref, "reason": "UNREADABLE", "message": str(content)})
        else:
            sendable.append((s, content))
    if not sendable:
        return
    items = [(s.group_id, s.intra_id, content, s.ref, {"source": s.ref}, request_id(database, s.ref))
             for s, content in sendable]  # fmt: skip
    for attempt in range(retries + 1):
        try:
            r = client.bulk_set(database, items)
            break
        except ClientError as err:
            if err.code not in TRANSIENT or attempt == retries:
                for s, _ in sendable:
                    summary.failures.append({"source": s.ref, "reason": err.reason, "message": err.message})
                return
            time.sleep(min(8.0, 0.25 * 2**attempt))
    summary.succeeded += r.succeeded_count
    summary.keys += [(k.group_id, k.intra_id) for k in r.keys]
    for f in r.failures:
        summary.failures.append({"source": f.client_ref, "reason": f.reason, "message": f.message})


def progress_bar(total: int, quiet: bool) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """A tqdm bar with images/s and an ETA on a terminal; nothing under --json or without tqdm."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=total, unit="img", desc="registering", file=sys.stderr)
    return bar.update, bar.close

"""Bulk import for ``lookalike add``: files, folders, image lists and oss:// objects.

Sources become ``(source, group_id, intra_id)`` items; files are read by a few threads with a
bounded number of images in flight, sent in BulkSetImages streams of ``batch`` items. Each item
carries a request id made from what it asks for, not how its path is spelled: the database's
incarnation (its create time), the group, the intra_id (or "auto") and the sha256 of the bytes.
So a stream retried after a transient failure (UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED) stores nothing twice, the same file added to another group is a new image,
and a re-run answers "already present" for what the server still remembers. ``--resume`` goes
by content too: the server keeps each image's digest as the ``lookalike.sha256`` attribute, and
an image whose group already holds those bytes is skipped, however its folder was spelled.
The resolved path is stored as the ``source`` attribute.
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

from lookalike.client.client import BulkItem, ClientError, LookalikeClient

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
    """What an import did: ``registered`` images newly stored, ``already_present`` ones that were
    there before (found by ``--resume``, or a retry the server answered from its retry window),
    ``failures`` with their reasons; ``keys`` of every image now there, in source order."""

    received: int = 0
    registered: int = 0
    already_present: int = 0
    keys: list[tuple[str, int]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # skipped by --skip-duplicates: source, existing


class ImportInterrupted(Exception):
    """Ctrl-C during an import; ``summary`` holds what was finished before it (every stream sent
    before the interrupt is either wholly registered or not at all)."""

    def __init__(self, summary: ImportSummary) -> None:
        super().__init__(f"{summary.registered} of {summary.received} registered")
        self.summary = summary


def _group_of(ref: str, group_from: str) -> str:
    path = Path(ref.split("://", 1)[-1])
    return path.parent.name if group_from == "parent" and path.parent.name else path.stem


MAX_LIST_ITEMS = 1_000_000  # entries of one image list: the server's default --max-stream-items


def read_list(ref: str, oss: OssReader, group_from: str, max_items: int = MAX_LIST_ITEMS) -> Iterator[Source]:
    """PAI-style image list: ``path[,group_id[,intra_id]]`` per line (commas or tabs); '#' comments.

    A list of more than ``max_items`` entries is refused before any image is read (split it).
    """
    text = oss.read(ref).decode() if is_oss(ref) else Path(ref).read_text()
    entries = sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if entries > max_items:
        raise SystemExit(f"lookalike: {ref} has {entries} entries; one list may have at most {max_items}: split it")
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


DIGEST_ATTRIBUTE = "lookalike.sha256"  # set by the server on every image registered from its bytes


def request_id(incarnation: str, group_id: str, intra_id: int | None, digest: str) -> str:
    """One id per (database incarnation, group, intra_id or "auto", content): a retry, never a spelling."""
    intra = "auto" if intra_id is None else str(intra_id)
    return "import-" + hashlib.sha256(f"{incarnation}\0{group_id}\0{intra}\0{digest}".encode()).hexdigest()[:40]


def incarnation(client: LookalikeClient, database: str) -> str:
    """Which database of this name: its create time (a re-created database is another one).

    Raises ClientError DATABASE_NOT_FOUND before anything is read when the database is missing.
    """
    created = client.get_database(database).create_time
    return f"{database}@{created.seconds}.{created.nanos:09d}"


def present_images(client: LookalikeClient, database: str) -> set[tuple[str, str]]:
    """(group_id, sha256) of every image the database holds (for ``--resume``)."""
    images = client.list_images(database, page_size=1000)
    return {
        (img.key.group_id, img.attributes[DIGEST_ATTRIBUTE]) for img in images if DIGEST_ATTRIBUTE in img.attributes
    }


def _source_attribute(ref: str) -> str:
    if is_oss(ref):
        return ref
    try:
        return str(Path(ref).resolve())
    except OSError:
        return ref


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
    duplicates: Any = None,
) -> ImportSummary:
    """Read ahead and send ``batch``-item streams, ``streams`` of them at once.

    Two streams keep the server busy: one stream's images decode while the other's run through the
    model, and neither waits for the client between streams. A stream whose images get automatic
    intra_ids in a group that an unfinished stream also numbers waits for it, so ids within a group
    still follow the order of the sources. Results are merged in source order. ``duplicates`` (a
    ``DuplicateCheck``, ``duplicate_check("SKIP")``) asks the server to skip images it already holds a
    duplicate of: they are listed in ``summary.duplicates`` with the image they duplicate.
    """
    oss = oss or OssReader()
    summary = ImportSummary()
    started = time.monotonic()
    database_at = incarnation(client, database)
    present = present_images(client, database) if resume else set()
    todo = list(items)
    summary.received = len(todo)

    def load(s: Source) -> tuple[bytes, str] | Exception:
        try:
            data = oss.read(s.ref) if is_oss(s.ref) else Path(s.ref).read_bytes()
        except (OSError, ValueError) as exc:
            return exc
        return data, hashlib.sha256(data).hexdigest()

    def send(part: list[tuple[Source, Any]]) -> ImportSummary:
        result = ImportSummary()
        _send(client, database, database_at, part, present, result, retries, duplicates)
        if progress is not None:
            progress(len(part))
        return result

    def numbered(part: list[tuple[Source, Any]]) -> set[str]:
        return {s.group_id for s, _ in part if s.intra_id is None}

    pending: deque[tuple[Future[ImportSummary], set[str]]] = deque()

    def merge(r: ImportSummary) -> None:
        summary.registered += r.registered
        summary.already_present += r.already_present
        summary.keys += r.keys
        summary.failures += r.failures
        summary.duplicates += r.duplicates

    reads_pool = ThreadPoolExecutor(workers, thread_name_prefix="read")
    senders = ThreadPoolExecutor(max(1, streams), thread_name_prefix="send")
    try:
        reads: dict[int, Future[tuple[bytes, str] | Exception]] = {}
        next_read = 0
        for b in range(0, len(todo), batch):
            while next_read < len(todo) and next_read < b + batch + in_flight:  # at most in_flight read ahead
                reads[next_read] = reads_pool.submit(load, todo[next_read])
                next_read += 1
            part = [(todo[i], reads.pop(i).result()) for i in range(b, min(b + batch, len(todo)))]
            groups = numbered(part)
            while pending and (len(pending) >= max(1, streams) or any(groups & g for _, g in pending)):
                merge(pending.popleft()[0].result())
            pending.append((senders.submit(send, part), groups))
        while pending:
            merge(pending.popleft()[0].result())
    except KeyboardInterrupt:
        # Ctrl-C: read and send nothing more; the streams already sent finish (at most ``streams``
        # of ``batch`` images) and are counted, so the count is exact. A second Ctrl-C stops the
        # counting there (those streams still finish before the process ends).
        reads_pool.shutdown(wait=False, cancel_futures=True)
        try:
            while pending:
                fut = pending.popleft()[0]
                if not fut.cancel():
                    merge(fut.result())
        except KeyboardInterrupt:
            pass
        raise ImportInterrupted(summary) from None
    finally:
        reads_pool.shutdown(wait=False, cancel_futures=True)
        senders.shutdown(wait=True, cancel_futures=True)
        summary.seconds = time.monotonic() - started
    return summary


def _send(
    client: LookalikeClient,
    database: str,
    database_at: str,
    part: list[tuple[Source, Any]],
    present: set[tuple[str, str]],
    summary: ImportSummary,
    retries: int,
    duplicates: Any = None,
) -> None:
    sendable = []
    for s, content in part:
        if isinstance(content, Exception):
            summary.failures.append({"source": s.ref, "reason": "UNREADABLE", "message": str(content)})
        elif (s.group_id, content[1]) in present:
            summary.already_present += 1
        else:
            sendable.append((s, content))
    if not sendable:
        return
    items = [BulkItem(s.group_id, image=data, intra_id=s.intra_id, client_ref=s.ref,
                      attributes={"source": _source_attribute(s.ref)},
                      request_id=request_id(database_at, s.group_id, s.intra_id, digest), duplicates=duplicates)
             for s, (data, digest) in sendable]  # fmt: skip
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
    summary.registered += r.succeeded_count - r.replayed_count - r.skipped_duplicate_count
    summary.already_present += r.replayed_count
    summary.duplicates += [{"source": d.client_ref, "group_id": d.existing.group_id, "intra_id": d.existing.intra_id,
                            "score": d.score} for d in r.skipped_duplicates]  # fmt: skip
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

"""Registering an image list from OSS (PAI ``set``: ``path[,group_id[,intra_id]]`` per line) as a stream.

The list is read (at most ``MAX_LIST_BYTES``) and counted first: one of more than ``--max-list-items``
entries is refused with LIST_TOO_LONG before any image is read. Then the images are fetched a few
at a time (``READ_AHEAD`` in flight) and registered by the service's ``bulk_set`` a chunk at a
time, each chunk durable before the next is read: memory holds one chunk and the read-ahead,
never the list's images. Every image must lie under an allowed ``oss://`` prefix; a line's
failure names its line number and reason, never the line's text or what the store answered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lookalike.server.core.calls import BulkItem, BulkResult
from lookalike.server.core.errors import LookalikeError, invalid, not_found
from lookalike.server.core.validation import MAX_LOCATION_LEN

if TYPE_CHECKING:
    from lookalike.server.core.service import LookalikeService

MAX_LIST_BYTES = 64 << 20  # the list's own text
READ_AHEAD = 4  # images fetched ahead of the chunk being registered


@dataclass(frozen=True)
class ListLine:
    number: int
    path: str
    group_id: str
    intra_id: int | None


@dataclass
class ListFailure:
    line: int
    reason: str
    message: str


@dataclass
class ListResult:
    result: BulkResult
    failures: list[ListFailure] = field(default_factory=list)  # in line order; the first MAX_FAILURES_LISTED
    failed: int = 0  # every line that was not registered


MAX_FAILURES_LISTED = 1000


def entries(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_line(number: int, line: str, base: str) -> ListLine:
    parts = [x.strip() for x in line.replace("\t", ",").split(",")]
    if not parts[0] or len(parts[0]) > MAX_LOCATION_LEN or not parts[0].isprintable():
        raise invalid("PATH_INVALID", f"line {number}: the path is empty, too long or not printable")
    path = parts[0] if parts[0].startswith("oss://") else base + parts[0].lstrip("/")
    group = parts[1] if len(parts) > 1 and parts[1] else path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    try:
        intra = int(parts[2]) if len(parts) > 2 and parts[2] else None
    except ValueError:
        raise invalid("INTRA_ID_INVALID", f"line {number}: intra_id is not an integer") from None
    return ListLine(number, path, group, intra)


def register_list(service: LookalikeService, database: str, filelist: str, *, oss: Any = None) -> ListResult:
    """Register every image an ``oss://`` list names, relative paths against the list's folder."""
    limit = service.limits.max_list_items
    try:
        raw = service.read_oss(filelist, "filelist", oss=oss, max_bytes=MAX_LIST_BYTES)
    except LookalikeError as err:
        if err.reason == "IMAGE_NOT_FOUND":
            raise not_found("FILELIST_NOT_FOUND", "filelist: the object does not exist") from None
        if err.reason == "OBJECT_TOO_LARGE":
            raise invalid("LIST_TOO_LONG", f"filelist is over {MAX_LIST_BYTES} bytes: split it") from None
        raise
    try:
        lines = entries(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise invalid("LIST_INVALID", "filelist is not UTF-8 text: one path[,group_id[,intra_id]] a line") from None
    del raw
    if len(lines) > limit:
        raise invalid("LIST_TOO_LONG", f"filelist has {len(lines)} entries; the limit is {limit} (--max-list-items): "
                      "split it into several lists")  # fmt: skip
    service.get_database(database)  # a missing database fails before any image is read
    base = filelist.rsplit("/", 1)[0] + "/"
    failures: list[ListFailure] = []
    numbers: list[int] = []  # the line of each item handed to bulk_set, by its index there

    def fetch(line: ListLine) -> bytes:
        return service.read_oss(line.path, f"line {line.number}", oss=oss)

    def items() -> Iterator[BulkItem]:
        with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="list-read") as pool:
            pending: deque[tuple[ListLine, Future[bytes]]] = deque()
            todo = iter(enumerate(lines, start=1))
            try:
                while True:
                    while len(pending) < READ_AHEAD:
                        nxt = next(todo, None)
                        if nxt is None:
                            break
                        try:
                            parsed = parse_line(nxt[0], nxt[1], base)
                        except LookalikeError as err:
                            failures.append(ListFailure(nxt[0], err.reason, err.message))
                            continue
                        pending.append((parsed, pool.submit(fetch, parsed)))
                    if not pending:
                        return
                    line, future = pending.popleft()
                    try:
                        image = future.result()
                    except LookalikeError as err:
                        failures.append(ListFailure(line.number, err.reason, err.message))
                        continue
                    numbers.append(line.number)
                    yield BulkItem(line.group_id, line.intra_id, image=image, client_ref=str(line.number),
                                   attributes={"source": line.path})  # fmt: skip
                    del image
            finally:
                for _, future in pending:
                    future.cancel()

    try:
        result = service.bulk_set(database, items())
    except LookalikeError as err:
        if err.reason != "STREAM_EMPTY":
            raise
        result = BulkResult()
    for f in result.failures:
        failures.append(ListFailure(numbers[f.index], f.reason, f.message))
    failures.sort(key=lambda f: f.line)
    failed = len(failures) - len(result.failures) + result.failed
    return ListResult(result, failures[:MAX_FAILURES_LISTED], failed)

"""The duplicate check of a write (``if_duplicate``): which items of a set call match an image already stored.

Both backends call ``screen`` where their write is serialised (the built-in store under its
write lock, so two writers of one image cannot both pass), after the retry window and before
planning keys. An item matches its best stored image at or above the threshold other than the
key it writes (an upsert of a key with a look-alike of itself is an update, not a duplicate),
or an earlier item of the same call that is itself written. SKIP answers with the matched key
and stores nothing; REJECT answers ALREADY_EXISTS / DUPLICATE_IMAGE naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lookalike.server.core.backends.api import Key, SetRequest, SetResult
from lookalike.server.core.errors import ErrorKind, LookalikeError


@dataclass(frozen=True)
class DuplicateCheck:
    """Check each item first; ``reject`` refuses a duplicate instead of skipping it."""

    threshold: float
    reject: bool = False


@dataclass
class Screened:
    """The items left to write, the answers of stored duplicates, and the in-call ones (resolved after the write)."""

    todo: list[int]
    answers: dict[int, SetResult | LookalikeError]
    later: dict[int, tuple[int, float]]  # position -> (position of the earlier written item it matches, score)

    def resolve(self, written: dict[int, SetResult], checks: Sequence[DuplicateCheck | None], database: str) -> None:
        """Answer the items that matched an earlier item of the call, now that its key is known."""
        for k, (first, score) in self.later.items():
            check = checks[k]
            assert check is not None
            self.answers[k] = answer(written[first].key, score, check, database)
        written.update(self.answers)  # type: ignore[arg-type]  # settle takes results and errors alike


def duplicate_image(database: str, key: Key, score: float) -> LookalikeError:
    return LookalikeError(
        ErrorKind.ALREADY_EXISTS, "DUPLICATE_IMAGE",
        f"the image duplicates {key[0]!r}/{key[1]} of database {database!r} (cosine {score:.4f}); nothing was "
        "stored. Send it with if_duplicate ALLOW to store it anyway, or SKIP to get the existing key back",
        group_id=key[0], intra_id=str(key[1]), score=f"{score:.6f}",
    )  # fmt: skip


def answer(key: Key, score: float, check: DuplicateCheck, database: str) -> SetResult | LookalikeError:
    if check.reject:
        return duplicate_image(database, key, score)
    return SetResult(key, False, duplicate_score=score)


def screen(
    db: Any, database: str, requests: list[SetRequest], vectors: np.ndarray, todo: list[int],
    checks: Sequence[DuplicateCheck | None],
) -> Screened:  # fmt: skip
    """Split ``todo`` into items to write and items that duplicate a stored image or an earlier written item
    (``checks[k]``: item k's check, None for none)."""
    out = Screened([], {}, {})
    kept: list[int] = []  # positions written so far in this call, in order
    for k in todo:
        r, check = requests[k], checks[k]
        if check is None:
            out.todo.append(k)
            kept.append(k)
            continue
        own = (r.group_id, r.intra_id) if r.intra_id is not None else None
        best: tuple[float, Key | None, int] = (-2.0, None, -1)
        for hit in db.search_tier(vectors[k], 2, min_score=check.threshold, with_attributes=False)[0]:
            if (hit.group_id, hit.intra_id) != own:
                best = (hit.score, (hit.group_id, hit.intra_id), -1)
                break
        if kept:
            sims = vectors[kept] @ vectors[k]
            j = int(np.argmax(sims))
            same_key = own is not None and requests[kept[j]].intra_id is not None and (
                requests[kept[j]].group_id, requests[kept[j]].intra_id) == own  # fmt: skip
            if sims[j] >= check.threshold and sims[j] > best[0] and not same_key:
                best = (float(sims[j]), None, kept[j])
        if best[1] is not None:
            out.answers[k] = answer(best[1], best[0], check, database)
        elif best[2] >= 0:
            out.later[k] = (best[2], best[0])
        else:
            out.todo.append(k)
            kept.append(k)
    return out

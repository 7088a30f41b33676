"""A tally of images that could not be read, with a few examples for the log."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_EXAMPLES = 10


@dataclass
class SkipLog:
    """Counts unreadable images; keeps the first ``MAX_EXAMPLES`` ``(ref, reason)`` pairs.

    Kept as plain data (not a logger) so that DataLoader workers can send their part back to
    the main process inside a batch and prep can write it into its manifest.
    """

    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, ref: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((ref, reason))

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        for ref, reason in items:
            self.add(ref, reason)

    def summary(self) -> str:
        """One line for the log: how many, and the first example."""
        if not self.count:
            return "no unreadable images"
        ref, reason = self.examples[0]
        return f"skipped {self.count} unreadable image(s), e.g. {ref}: {reason}"

    def to_dict(self) -> dict[str, object]:
        return {"count": self.count, "examples": [list(e) for e in self.examples]}

"""Duplicates as a person meets them: ``lookalike dedup``, ``add --skip-duplicates``, ``ops``, ``models``.

Every journey drives the real CLI (``python -m lookalike``) against a real server subprocess:

- a folder of real photos and a folder of re-encoded / resized copies under other names: ``dedup``
  pairs each copy with its original and nothing else, ``--keep largest`` keeps the most pixels,
  ``--csv`` and ``--json`` say the same as the text; deleting what it suggests leaves no cluster;
- ``add --skip-duplicates`` of the copies stores none of them and names the original of each;
- ``kill -9`` of the server in the middle of a job (twice): it resumes from its checkpoint and
  finds exactly the pairs a brute-force numpy join finds, the same clusters as a run never killed;
- Ctrl-C of ``lookalike dedup`` cancels the job on the server and says so in one line;
- two jobs at once agree with one alone; ``--max-operations 1`` refuses the second clearly;
- ``ops list``, ``ops get`` and ``models`` print lines a person can read.

The threshold comes from the model itself: its calibrated ``duplicate`` tier when ``lookalike
models`` shows one, else the middle of the gap this test measures between the copies' similarity
to their originals and the distinct photos' similarity to each other.
"""

from __future__ import annotations

import csv
import json
import random
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli import LOOKALIKE, run, serving, stored_keys
from lookalike.client import BulkItem, LookalikeClient
from lookalike.v1.operation_pb2 import OPERATION_STATE_CANCELLED, OPERATION_STATE_SUCCEEDED
from photos import PHOTO_NAMES, encode, photo, resize
from PIL import Image

DIM = 1280  # the default model's output dimension: databases of raw vectors must match it
VECTOR_THRESHOLD = 0.9  # planted copies score ~0.96-0.98, near misses ~0.8, random pairs below 0.2

# (file in the copies folder, the photo it copies, scale, format, JPEG quality): scales differ from 1 so
# that every cluster has one largest image (the upscaled astronaut beats its original).
COPIES = [
    ("mug.jpg", "coffee", 0.9, "JPEG", 40),
    ("coffee-small.jpg", "coffee", 0.5, "JPEG", 75),
    ("big-astronaut.jpg", "astronaut", 1.5, "JPEG", 90),
    ("launch.jpg", "rocket", 0.9, "JPEG", 40),
    ("cam.png", "camera", 0.6, "PNG", None),
    ("kitty.jpg", "chelsea", 0.8, "JPEG", 40),
]

SUMMARY = re.compile(r"found (\d+) clusters of duplicates \((\d+) images, (\d+) removable\) among (\d+) images "
                     r"at cosine >= ([\d.]+)(?: \(tier (\w+)\))?, (exact|graph)(, no chaining)?, [\d.]+ s")  # fmt: skip
CLUSTER = re.compile(r"cluster (\d+): (\d+) images, keep ([^/\s]+)/(\d+) \[(.*)\]; least alike pair ([\d.]+)")
MEMBER = re.compile(r"  (keep|dup )\t([^/\s]+)/(\d+)\t([\d.]+)\t(.+)")
OP_LINE = re.compile(r"(operations/[0-9a-f]{16})\tfind_duplicates\t(\S+)\t(RUNNING|SUCCEEDED|FAILED|CANCELLED)\t"
                     r"(\d+)%(\t.*)?")  # fmt: skip


# -- the photos ----------------------------------------------------------------------------------
@dataclass
class Photos:
    originals: Path  # folder
    copies: Path  # folder
    truth: dict[str, str]  # resolved path -> the photo it shows
    pixels: dict[str, tuple[int, int]]  # resolved path -> (width, height)
    sims: dict[tuple[str, str], float]  # (path, path) -> cosine, measured with the server's model
    threshold: float  # the cosine the journeys use
    tier: str  # "duplicate" when the model has calibrated tiers, else ""

    @property
    def paths(self) -> list[str]:
        return sorted(self.truth)

    def copies_of(self, name: str) -> list[str]:
        return [p for p in self.paths if self.truth[p] == name and Path(p).parent == self.copies]

    def original(self, name: str) -> str:
        return str((self.originals / f"{name}.jpg").resolve())

    def expected_clusters(self) -> set[frozenset[str]]:
        """Connected components of the pairs at or above the threshold, from the measured similarities."""
        parent = {p: p for p in self.paths}

        def root(p: str) -> str:
            while parent[p] != p:
                p = parent[p]
            return p

        for (a, b), s in self.sims.items():
            if s >= self.threshold:
                parent[root(a)] = root(b)
        groups: dict[str, set[str]] = {}
        for p in self.paths:
            groups.setdefault(root(p), set()).add(p)
        return {frozenset(g) for g in groups.values() if len(g) > 1}

    def dedup_args(self) -> list[str]:
        return ["--tier", self.tier] if self.tier else ["--threshold", f"{self.threshold:.6f}"]


def write_photos(folder: Path) -> tuple[Path, Path, dict[str, str]]:
    originals, copies = folder / "photos", folder / "copies"
    originals.mkdir()
    copies.mkdir()
    truth: dict[str, str] = {}
    seen: list[np.ndarray] = []
    for name in PHOTO_NAMES:
        arr = photo(name)
        if any(a.shape == arr.shape and np.array_equal(a, arr) for a in seen):
            continue  # skimage's "cat" is "chelsea", pixel for pixel: one photo, not two
        seen.append(arr)
        path = originals / f"{name}.jpg"
        path.write_bytes(encode(arr, quality=95))
        truth[str(path.resolve())] = name
    for file, name, scale, fmt, quality in COPIES:
        path = copies / file
        params = {"quality": quality} if quality else {}
        path.write_bytes(encode(resize(photo(name), scale), fmt, **params))
        truth[str(path.resolve())] = name
    return originals, copies, truth


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def photo_server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("photo-server") / "data") as (_, address):
        yield address


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_server) -> Photos:
    originals, copies, truth = write_photos(tmp_path_factory.mktemp("pictures"))
    paths = sorted(truth)
    with LookalikeClient(photo_server, timeout=120) as c:
        emb = unit(np.array([list(e.values) for e in c.embed([Path(p).read_bytes() for p in paths]).embeddings]))
    gram = emb @ emb.T
    sims = {(a, b): float(gram[i, j]) for i, a in enumerate(paths) for j, b in enumerate(paths) if i < j}
    same = [s for (a, b), s in sims.items() if truth[a] == truth[b]]
    other = [s for (a, b), s in sims.items() if truth[a] != truth[b]]
    # The model tells the copies from the distinct photos by a wide margin, or no threshold could.
    assert min(same) > max(other) + 0.3, (min(same), max(other))

    models = run("models", "--json", "--server", photo_server)
    assert models.returncode == 0, models.stderr
    tiers = json.loads(models.stdout)[0]["tiers"]
    # Calibrated: the journeys use a tier, and expect what the measured similarities say of it. A tier that a
    # pair scores within 1e-3 of is skipped (which side such a pair falls is luck), the next one tried.
    choices = [(name, float(tiers[name])) for name in ("duplicate", "near")] if tiers else []
    choices.append(("", round((min(same) + max(other)) / 2, 4)))
    tier, threshold = next((n, t) for n, t in choices if all(abs(s - t) >= 1e-3 for s in sims.values()))
    near = [s for s in sims.values() if abs(s - threshold) < 1e-3]
    assert not near, f"a pair scores {near} against the threshold {threshold}: which side it falls is luck"
    pixels = {p: Image.open(p).size for p in paths}
    got = Photos(originals, copies, truth, pixels, sims, threshold, tier)
    found = sum(len(c) for c in got.expected_clusters())
    assert found >= 6, f"the threshold {threshold} ({tier or 'measured'}) makes duplicates of only {found} images"
    return got


def parse_dedup(text: str) -> tuple[re.Match, list[dict]]:
    """The summary line and each printed cluster: keeper key, reason, least alike score, members (in order)."""
    lines = text.strip().splitlines()
    summary = SUMMARY.fullmatch(lines[0])
    assert summary, lines[0]
    clusters: list[dict] = []
    for line in lines[1:]:
        if m := CLUSTER.fullmatch(line):
            assert int(m.group(1)) == len(clusters) + 1, line
            clusters.append({"size": int(m.group(2)), "keep": (m.group(3), int(m.group(4))), "reason": m.group(5),
                             "farthest": float(m.group(6)), "members": []})  # fmt: skip
        elif m := MEMBER.fullmatch(line):
            clusters[-1]["members"].append({"role": m.group(1).strip(), "key": (m.group(2), int(m.group(3))),
                                            "score": float(m.group(4)), "source": m.group(5)})  # fmt: skip
        else:
            assert line.startswith("wrote "), f"unexpected line in the dedup output: {line!r}"
    for cl in clusters:
        assert len(cl["members"]) == cl["size"], cl
    return summary, clusters


def dedup(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    out = run("dedup", *args, "--server", address)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out


# -- 1. find duplicates as a user would ------------------------------------------------------------------
def test_dedup_of_a_photo_folder_and_its_copies_then_deleting_the_suggested_ones_leaves_none(
    photo_server, photos, tmp_path
):
    srv = ("--server", photo_server)
    assert run("db", "create", "dups", *srv).returncode == 0
    added = run("add", "--db", "dups", str(photos.originals), str(photos.copies), *srv)
    assert added.returncode == 0, added.stderr
    total = len(photos.paths)
    assert f"registered {total} of {total} images" in added.stdout
    expected = photos.expected_clusters()
    clustered = sum(len(c) for c in expected)

    # The text a person reads: every copy with its original, no two photos mixed, nothing else clustered.
    summary, clusters = parse_dedup(dedup(photo_server, "--db", "dups", *photos.dedup_args()).stdout)
    assert summary.group(1, 2, 3, 4) == (str(len(expected)), str(clustered), str(clustered - len(expected)),
                                         str(total))  # fmt: skip
    assert float(summary.group(5)) == pytest.approx(photos.threshold, abs=1e-4)
    assert (summary.group(6) or "") == photos.tier
    printed = {frozenset(m["source"] for m in cl["members"]) for cl in clusters}
    assert printed == expected
    for cl in clusters:
        assert len({photos.truth[m["source"]] for m in cl["members"]}) == 1, f"a cluster mixes photos: {cl}"
        assert [m["role"] for m in cl["members"]] == ["keep"] + ["dup"] * (len(cl["members"]) - 1)
        assert cl["members"][0]["key"] == cl["keep"]
        assert "most central" in cl["reason"]  # the default keeper
        members = [m["source"] for m in cl["members"]]
        least = min(photos.sims[tuple(sorted((a, b)))] for a in members for b in members if a < b)
        assert cl["farthest"] == pytest.approx(least, abs=2e-4)
    for name in {photos.truth[p] for p in photos.paths}:
        together = [cl for cl in printed if photos.original(name) in cl]
        for copy in photos.copies_of(name):
            if photos.sims[tuple(sorted((copy, photos.original(name))))] >= photos.threshold:
                assert together and copy in together[0], f"{copy} is not with its original {name}"
    for name in ("hubble_deep_field", "immunohistochemistry"):  # no copies: in no cluster
        assert not any(photos.original(name) in cl for cl in printed)

    # --keep largest with --csv: the largest image of each cluster is kept, by the size the server stored.
    table = tmp_path / "dups.csv"
    out = dedup(photo_server, "--db", "dups", *photos.dedup_args(), "--keep", "largest", "--csv", str(table))
    summary, largest = parse_dedup(out.stdout)
    assert f"wrote {len(expected)} clusters to {table}" in out.stdout
    keepers = set()
    for cl in largest:
        members = [m["source"] for m in cl["members"]]
        biggest = max(members, key=lambda p: photos.pixels[p][0] * photos.pixels[p][1])
        w, h = photos.pixels[biggest]
        assert members[0] == biggest, f"kept {members[0]}, not the largest {biggest}"
        assert cl["reason"] == f"largest ({w * h} px)"
        keepers.add(biggest)
    assert str((photos.copies / "big-astronaut.jpg").resolve()) in keepers  # an upscaled copy outranks its original
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["cluster", "role", "group_id", "intra_id", "score_to_centre", "source", "keeper_reason"]
    assert len(rows) == clustered
    by_cluster: dict[str, list[dict]] = {}
    for r in rows:
        by_cluster.setdefault(r["cluster"], []).append(r)
    assert sorted(by_cluster, key=int) == [str(n + 1) for n in range(len(largest))]
    for n, cl in enumerate(largest):
        rs = by_cluster[str(n + 1)]
        assert [r["source"] for r in rs] == [m["source"] for m in cl["members"]]
        assert [(r["group_id"], int(r["intra_id"])) for r in rs] == [m["key"] for m in cl["members"]]
        assert [r["role"] for r in rs] == ["keep"] + ["duplicate"] * (len(rs) - 1)
        assert rs[0]["keeper_reason"] == cl["reason"] and not any(r["keeper_reason"] for r in rs[1:])
        for r, m in zip(rs, cl["members"], strict=True):
            assert float(r["score_to_centre"]) == pytest.approx(m["score"], abs=1e-4)

    # --json: the same clusters, the sizes the server stored, scores the model gives.
    data = json.loads(dedup(photo_server, "--db", "dups", *photos.dedup_args(), "--keep", "largest", "--json").stdout)
    result = data["result"]
    assert data["operation"].startswith("operations/")
    assert (result["cluster_count"], result["clustered_image_count"], result["removable_count"],
            result["image_count"]) == (len(expected), clustered, clustered - len(expected), total)  # fmt: skip
    assert result["threshold"] == pytest.approx(photos.threshold, abs=1e-6) and result["tier"] == photos.tier
    assert result["method"] == "exact"
    assert len(data["clusters"]) == len(largest)
    removable = []
    for cl, shown in zip(data["clusters"], largest, strict=True):
        sources = [m["attributes"]["source"] for m in cl["members"]]
        assert sources == [m["source"] for m in shown["members"]]
        assert cl["keeper"] == cl["members"][0]["key"] and cl["keeper_reason"] == shown["reason"]
        centre = next(m["attributes"]["source"] for m in cl["members"] if m["key"] == cl["centre"])
        for m, source in zip(cl["members"], sources, strict=True):
            w, h = photos.pixels[source]
            assert m["attributes"]["lookalike.size"] == f"{w}x{h}"
            expected_score = 1.0 if source == centre else photos.sims[tuple(sorted((source, centre)))]
            assert m["score_to_centre"] == pytest.approx(expected_score, abs=2e-4)
        removable += [(m["key"]["group_id"], m["key"]["intra_id"]) for m in cl["members"][1:]]
    assert len(removable) == result["removable_count"]

    # Delete what it suggests (the CLI deletes databases, not single images: the Python client does).
    before = stored_keys(photo_server, "dups")
    with LookalikeClient(photo_server) as c:
        for group_id, intra_id in removable:
            c.delete_image("dups", group_id, intra_id)
    assert stored_keys(photo_server, "dups") == sorted(set(before) - set(removable))
    again = dedup(photo_server, "--db", "dups", *photos.dedup_args())
    summary, clusters = parse_dedup(again.stdout)
    assert clusters == [] and summary.group(1, 2, 3, 4) == ("0", "0", "0", str(total - len(removable)))
    data = json.loads(dedup(photo_server, "--db", "dups", *photos.dedup_args(), "--json").stdout)
    assert data["clusters"] == [] and data["result"]["cluster_count"] == 0


# -- 2. skip duplicates at add -------------------------------------------------------------------
def expected_skips(photos: Photos, copies: list[str], stored: set[str]) -> dict[str, tuple[str, float]]:
    """What ``add --skip-duplicates`` of ``copies`` (in the importer's order) should skip, with the image each
    duplicates (its group_id: the file's stem) and the score: the best of the images stored and of the copies
    this call stores before it, if at or above the threshold. Copies already stored are replayed, not screened."""
    held, out = set(stored), {}
    for copy in copies:
        if copy in held:
            continue
        scores = [(photos.sims[tuple(sorted((copy, o)))], o) for o in held]
        score, of = max(scores)
        if score >= photos.threshold:
            out[copy] = (Path(of).stem, score)
        else:
            held.add(copy)
    return out


def test_add_skip_duplicates_stores_no_copy_and_names_each_ones_original(photo_server, photos):
    srv = ("--server", photo_server)
    assert run("db", "create", "skip", *srv).returncode == 0
    assert run("add", "--db", "skip", str(photos.originals), *srv).returncode == 0
    originals = stored_keys(photo_server, "skip")
    copies = [p for p in photos.paths if Path(p).parent == photos.copies]  # sorted, as `add` sends a folder
    stored = {p for p in photos.paths if Path(p).parent == photos.originals}
    by = ["--duplicate-tier", photos.tier] if photos.tier else ["--duplicate-threshold", f"{photos.threshold:.6f}"]
    skip = ["--skip-duplicates", *by]
    for attempt in range(2):  # the second run skips the same and stores nothing new
        expected = expected_skips(photos, copies, stored)
        assert expected, "no copy is a duplicate at this threshold"
        new = [c for c in copies if c not in stored and c not in expected]
        out = run("add", "--db", "skip", str(photos.copies), *skip, *srv)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        present = len([c for c in copies if c in stored])
        head = f"registered {len(new)} of {len(copies)} images" + (f" ({present} already present)" if present else "")
        assert lines[0].startswith(f"{head} ({len(expected)} skipped as duplicates)"), (attempt, lines[0])
        named = {}
        for line in lines[1:]:
            m = re.fullmatch(r"  duplicate (.+): of ([^/\s]+)/0 \(([\d.]+)\)", line)
            assert m, line
            named[str(Path(m.group(1)).resolve())] = (m.group(2), float(m.group(3)))
        assert set(named) == set(expected)
        for copy, (group, score) in named.items():
            assert group == expected[copy][0], f"{copy} named {group}, not {expected[copy][0]}"
            assert photos.truth[copy] == photos.truth[str(next(p for p in photos.paths if Path(p).stem == group))]
            assert score == pytest.approx(expected[copy][1], abs=2e-4)
        stored |= set(new)
        assert len(stored_keys(photo_server, "skip")) == len(stored), f"attempt {attempt + 1} stored a duplicate"

    data = json.loads(run("add", "--db", "skip", str(photos.copies), *skip, "--json", *srv).stdout)
    named = {str(Path(d["source"]).resolve()): d["group_id"] for d in data["duplicates"]}
    assert named == {c: g for c, (g, _) in expected_skips(photos, copies, stored).items()}

    # Without the flag the same copies are stored; a second time nothing new.
    out = run("add", "--db", "skip", str(photos.copies), *srv)
    assert out.returncode == 0 and "skipped" not in out.stdout, out.stdout + out.stderr
    assert len(stored_keys(photo_server, "skip")) == len(originals) + len(copies)
    out = run("add", "--db", "skip", str(photos.copies), *srv)
    assert out.stdout.startswith(f"registered 0 of {len(copies)} images ({len(copies)} already present)"), out.stdout
    assert len(stored_keys(photo_server, "skip")) == len(originals) + len(copies)


def test_skip_duplicates_is_a_flag_before_the_folder(photo_server, photos):
    srv = ("--server", photo_server)
    assert run("db", "create", "skip-order", *srv).returncode == 0
    out = run("add", "--db", "skip-order", "--skip-duplicates", str(photos.originals), *srv)
    assert out.returncode == 0 and out.stdout.startswith("registered "), out.stdout + out.stderr
    out = run("add", "--db", "skip-order", "--duplicate-tier", "near", str(photos.originals), *srv)
    assert out.returncode == 64 and "go with --skip-duplicates" in out.stderr, out.stderr


# -- vectors with planted copies ---------------------------------------------------------------
@dataclass
class Planted:
    vectors: np.ndarray  # [n, DIM] unit rows; row i is image ("v{i:05d}", 0)
    groups: list[list[int]]  # rows that are copies of each other

    @staticmethod
    def key(row: int) -> str:
        return f"v{row:05d}"

    def load(self, address: str, db: str) -> None:
        with LookalikeClient(address, timeout=300) as c:
            c.create_database(db)
            for s in range(0, len(self.vectors), 4000):
                rows = range(s, min(s + 4000, len(self.vectors)))
                r = c.bulk_set(db, (BulkItem(self.key(i), intra_id=0, vector=self.vectors[i].tolist()) for i in rows))
                assert r.succeeded_count == len(rows) and not r.failures, r

    def brute_force(self) -> tuple[int, set[frozenset[str]]]:
        """(pairs at or above the threshold, their connected components as key sets), by numpy alone."""
        x, pairs = self.vectors, []
        for s in range(0, len(x), 1024):
            block = x[s : s + 1024] @ x[s:].T
            i, j = np.nonzero(block >= VECTOR_THRESHOLD)
            keep = j > i  # the upper triangle: each pair once, no image with itself
            pairs += list(zip((i[keep] + s).tolist(), (j[keep] + s).tolist(), strict=True))
            close = np.abs(block - VECTOR_THRESHOLD) < 0.01
            assert not close.any(), "a pair scores within 0.01 of the threshold: the answer would be luck"
        parent = {}

        def root(p: int) -> int:
            while parent.setdefault(p, p) != p:
                p = parent[p]
            return p

        for a, b in pairs:
            parent[root(a)] = root(b)
        comps: dict[int, set[str]] = {}
        for p in parent:
            comps.setdefault(root(p), set()).add(self.key(p))
        return len(pairs), {frozenset(c) for c in comps.values()}


def planted(n: int, groups: int, seed: int) -> Planted:
    """Random unit vectors (any two score about 0 +- 0.03); ``groups`` of them get 1-3 noisy copies (cosine ~0.98
    to the original, ~0.96 to each other) and 10 more a near miss (cosine ~0.8, below the threshold)."""
    rng = np.random.default_rng(seed)
    x = unit(rng.standard_normal((n, DIM), dtype=np.float32))
    rows = rng.permutation(n).tolist()
    out = []
    for g in range(groups):
        base, copies = rows.pop(), [rows.pop() for _ in range(1 + g % 3)]
        x[copies] = unit(x[base] + 0.2 * unit(rng.standard_normal((len(copies), DIM), dtype=np.float32)))
        out.append([base, *copies])
    for _ in range(10):
        base, miss = rows.pop(), rows.pop()
        x[miss] = unit(x[base] + 0.75 * unit(rng.standard_normal(DIM, dtype=np.float32)))
    return Planted(np.ascontiguousarray(x, np.float32), out)


class Server:
    """A ``lookalike serve`` on a data directory that a test may kill -9 and start again."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data, self.extra, self._stack = data, extra, ExitStack()

    def start(self) -> None:
        self.proc, self.address = self._stack.enter_context(serving(self.data, *self.extra))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._stack.close()

    def stop(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def vectors() -> Planted:
    return planted(12_000, 60, seed=11)


@pytest.fixture(scope="module")
def vector_server(tmp_path_factory, vectors):
    """Small blocks, so a job of 12k vectors takes seconds in many checkpoints; one operation at a time."""
    server = Server(tmp_path_factory.mktemp("vector-server") / "data", "--dedup-block-seconds", "0.05",
                    "--max-operations", "1")  # fmt: skip
    server.start()
    try:
        vectors.load(server.address, "vec")
        yield server
    finally:
        server.stop()


def cluster_keys(c: LookalikeClient, name: str) -> list[frozenset[str]]:
    return [frozenset(m.key.group_id for m in cl.members) for cl in c.duplicate_clusters(name)]


def run_until(c: LookalikeClient, name: str, fraction: float, timeout: float = 120) -> tuple[object, list[int]]:
    """Poll until the job's progress reaches ``fraction`` (or it ends); also each ``completed`` seen, in order."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        op = c.get_operation(name)
        if not seen or seen[-1] != op.progress.completed:
            seen.append(op.progress.completed)
        if op.done or op.progress.fraction >= fraction:
            return op, seen
        time.sleep(0.01)
    raise AssertionError(f"{name} did not reach {fraction:.0%} in {timeout} s")


def resumed_after(seen: list[int], done: int) -> bool:
    """Whether a resumed job went on from where it was killed: the first value read may be the progress the
    server last saved (it saves progress about once a second, each block's checkpoint always); every later
    one, the runner's own reports after the restart, is past the kill. A job started over reports small
    numbers first."""
    return all(v > done for v in seen[1:])


# -- 3. kill -9 during a dedup job --------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_during_a_dedup_job_resumes_and_finds_what_an_uninterrupted_run_finds(vector_server, vectors):
    numpy = ThreadPoolExecutor(1)
    truth = numpy.submit(vectors.brute_force)  # numpy's answer, worked out while the server works
    seed = random.SystemRandom().randrange(10**6)
    rnd = random.Random(seed)
    first, second = rnd.uniform(0.1, 0.4), rnd.uniform(0.55, 0.75)
    with LookalikeClient(vector_server.address, timeout=60) as c:
        name = c.find_duplicates("vec", threshold=VECTOR_THRESHOLD).name
        op, _ = run_until(c, name, first)
        vector_server.kill9()
    assert not op.done and 0.1 <= op.progress.fraction <= 0.8, (seed, op)
    killed_at = op.progress.completed

    vector_server.start()
    with LookalikeClient(vector_server.address, timeout=60) as c:
        op, seen = run_until(c, name, second)
        assert op.resumed_count == 1, op
        assert resumed_after(seen, killed_at), f"killed at {killed_at} images done, then {seen} (seed {seed})"
        killed_again = not op.done
        if killed_again:  # a second kill, later in the same job
            vector_server.kill9()
            again_at = op.progress.completed
    if killed_again:
        vector_server.start()
    with LookalikeClient(vector_server.address, timeout=60) as c:
        if killed_again:
            op, seen = run_until(c, name, 1.0)
            assert resumed_after(seen, again_at), f"killed at {again_at} images done, then {seen} (seed {seed})"
        op = c.wait_done(name)
        assert op.state == OPERATION_STATE_SUCCEEDED, op
        assert op.resumed_count == (2 if killed_again else 1), op
        assert op.find_duplicates.image_count == len(vectors.vectors)
        resumed = cluster_keys(c, name)

        # The same job never killed finds the same: same clusters, same order, same keepers.
        fresh = c.wait_done(c.find_duplicates("vec", threshold=VECTOR_THRESHOLD).name)
        assert fresh.resumed_count == 0
        assert list(c.duplicate_clusters(fresh.name)) == list(c.duplicate_clusters(name))
        for field in ("pair_count", "cluster_count", "clustered_image_count", "removable_count", "image_count"):
            assert getattr(fresh.find_duplicates, field) == getattr(op.find_duplicates, field), field
    pair_count, clusters = truth.result()
    numpy.shutdown()
    assert op.find_duplicates.pair_count == pair_count
    assert set(resumed) == clusters and len(resumed) == len(clusters)
    for group in vectors.groups:  # each planted copy is with its original, and nothing else with them
        assert frozenset(vectors.key(r) for r in group) in resumed


@pytest.fixture(scope="module")
def pairs(photo_server) -> Planted:
    """20k vectors in database "pairs" of the photo server: default blocks of about 0.25 s (a job takes a few
    seconds in ~20 of them, long enough for a Ctrl-C to land with the faster AVX-512 tile), two jobs at once."""
    vectors = planted(20_000, 60, seed=5)
    vectors.load(photo_server, "pairs")
    return vectors


# -- 4. Ctrl-C of lookalike dedup ------------------------------------------------------------------
def test_ctrl_c_of_dedup_cancels_the_job_and_says_so_in_one_line(photo_server, pairs):
    address = photo_server
    argv = [*LOOKALIKE, "dedup", "--db", "pairs", "--threshold", str(VECTOR_THRESHOLD), "--server", address]
    with LookalikeClient(address) as c:
        before = {o.name for o in c.list_operations("pairs")}
        cli = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline, started = time.monotonic() + 60, []
        while not started and time.monotonic() < deadline and cli.poll() is None:
            started = [o for o in c.list_operations("pairs") if o.name not in before and o.progress.fraction > 0.02]
            time.sleep(0.02)
        assert started and not started[0].done, f"the job did not get going: {cli.poll()}"
        name = started[0].name
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
        now = c.get_operation(name)  # the moment it said so: a block of ~0.25 s may still have been running
    assert cli.returncode == 130, (out, err)
    assert out == "" and "Traceback" not in err
    assert err.strip().splitlines() == [f"lookalike: interrupted: cancelled {name}"]
    assert now.done and now.state == OPERATION_STATE_CANCELLED, now

    got = run("ops", "get", name, "--server", address)
    assert got.returncode == 0, got.stderr
    line = OP_LINE.fullmatch(got.stdout.strip())
    assert line and line.group(1, 2, 3) == (name, "pairs", "CANCELLED"), got.stdout
    # (its progress may read 100%: a cancel that lands after the last block stops it before the clustering)
    state = json.loads(run("ops", "get", name, "--json", "--server", address).stdout)
    assert state["state"] == "CANCELLED" and state["done"] is True and state["find_duplicates"] is None, state
    read = run("dedup", "--operation", name, "--server", address)  # a cancelled job has no clusters to read
    assert read.returncode == 2 and "cancelled" in read.stderr, read.stderr


# -- 5. two dedup jobs at once ----------------------------------------------------------------------
def test_two_dedup_jobs_at_once_find_what_one_alone_finds(photo_server, pairs):
    argv = [*LOOKALIKE, "dedup", "--db", "pairs", "--threshold", str(VECTOR_THRESHOLD), "--json", "--quiet",
            "--server", photo_server]  # fmt: skip
    alone = json.loads(run(*argv[len(LOOKALIKE) :]).stdout)
    both = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    results = [json.loads(out) for out, _ in outs]

    with LookalikeClient(photo_server) as c:
        ops = {o.name: o for o in c.list_operations("pairs")}
    one, two = (ops[r["operation"]] for r in results)
    ran_at_once = one.create_time.ToNanoseconds() < two.update_time.ToNanoseconds() and (
        two.create_time.ToNanoseconds() < one.update_time.ToNanoseconds())  # fmt: skip
    assert ran_at_once, "the two jobs did not overlap, so this proves nothing"
    _, truth = pairs.brute_force()
    assert {frozenset(m["key"]["group_id"] for m in cl["members"]) for cl in alone["clusters"]} == truth
    for r in results:
        assert r["clusters"] == alone["clusters"]
        assert {k: v for k, v in r["result"].items() if k != "seconds"} == {
            k: v for k, v in alone["result"].items() if k != "seconds"
        }


def test_max_operations_1_refuses_a_second_job_clearly(vector_server):
    address = vector_server.address
    with LookalikeClient(address) as c:
        # The CLI takes about a second to start; on a loaded machine the first job may end before it asks (then
        # the CLI runs its own job to the end): start again, the race is the machine's, not the product's.
        for _attempt in range(3):
            first = c.find_duplicates("vec", threshold=VECTOR_THRESHOLD).name
            refused = run("dedup", "--db", "vec", "--threshold", str(VECTOR_THRESHOLD), "--server", address)
            if refused.returncode != 0:
                break
    assert refused.returncode == 2, refused.stderr  # refused while the first ran (one operation at a time)
    assert refused.stdout == ""
    said = refused.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("lookalike: RESOURCE_EXHAUSTED TOO_MANY_OPERATIONS: "), said
    assert "--max-operations" in said[0] and "cancel" in said[0]
    cancel = run("ops", "cancel", first, "--server", address)
    assert cancel.returncode == 0, cancel.stderr
    line = OP_LINE.fullmatch(cancel.stdout.strip())
    # CANCELLED, or SUCCEEDED when the job finished before `ops cancel` started (the Ctrl-C test covers the rest);
    # either way the line is the operation's final state, as `ops get` shows it.
    assert line and line.group(1) == first and line.group(3) in ("CANCELLED", "SUCCEEDED"), cancel.stdout
    assert run("ops", "get", first, "--server", address).stdout.strip() == cancel.stdout.strip()
    started = run("dedup", "--db", "vec", "--threshold", str(VECTOR_THRESHOLD), "--detach", "--server", address)
    assert started.returncode == 0, started.stderr  # the slot is free again
    name = re.fullmatch(r"started (operations/[0-9a-f]{16}); follow it: lookalike ops wait \1", started.stdout.strip())
    assert name, started.stdout
    assert run("ops", "cancel", name.group(1), "--server", address).returncode == 0


# -- 6. ops and models, for a person --------------------------------------------------------------
def test_ops_list_get_and_models_read_well(photo_server, photos):
    srv = ("--server", photo_server)
    assert run("db", "create", "readable", *srv).returncode == 0
    assert run("add", "--db", "readable", photos.original("coffee"), *photos.copies_of("coffee"), *srv).returncode == 0
    name = json.loads(dedup(photo_server, "--db", "readable", *photos.dedup_args(), "--json").stdout)["operation"]

    listed = run("ops", "list", *srv)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    parsed = [OP_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    as_json = json.loads(run("ops", "list", "--json", *srv).stdout)
    assert [m.group(1) for m in parsed] == [o["name"] for o in as_json]  # newest first, the same in both
    assert parsed[0].group(1, 2, 3, 4) == (name, "readable", "SUCCEEDED", "100")
    only = run("ops", "list", "--db", "readable", *srv).stdout.strip().splitlines()
    assert [OP_LINE.fullmatch(line).group(1) for line in only] == [name]
    missing = run("ops", "get", "operations/0123456789abcdef", *srv)
    assert missing.returncode == 2 and "OPERATION_NOT_FOUND" in missing.stderr, missing.stderr
    assert "lookalike ops list" in missing.stderr  # what to do about it
    bad = run("ops", "get", "nonsense", *srv)
    assert bad.returncode == 2 and "operations/0123456789abcdef" in bad.stderr, bad.stderr
    assert run("ops", "get", *srv).returncode == 64

    models = run("models", *srv)
    assert models.returncode == 0, models.stderr
    info = json.loads(run("models", "--json", *srv).stdout)
    assert len(info) == 1 and info[0]["is_default"] and info[0]["dimension"] == DIM
    lines = models.stdout.strip().splitlines()
    assert lines[0] == f"{info[0]['identity']} (default)" and info[0]["name"] in lines[0]
    tiers = info[0]["tiers"]
    if tiers:
        assert lines[1] == (f"  tiers: duplicate >= {tiers['duplicate']:.4f}, near >= {tiers['near']:.4f}, "
                            f"similar >= {tiers['similar']:.4f}")  # fmt: skip
    else:
        assert lines[1] == "  tiers: no calibrated tiers (lookalike calibrate MODEL)"
        no_tier = run("dedup", "--db", "readable", *srv)  # without tiers a threshold is needed, and it says so
        assert no_tier.returncode == 2 and "no calibrated similarity tiers; give a threshold" in no_tier.stderr
    with LookalikeClient(photo_server) as c:
        databases = {d.name for d in c.list_databases()}
    assert lines[2].startswith("  databases: ") and set(lines[2].removeprefix("  databases: ").split(", ")) == (
        databases) and "readable" in databases  # fmt: skip
    assert len(lines) == 3

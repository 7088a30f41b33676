"""The bench harness: what every bench script shares, and the list of what each one measures.

Scripts run as ``python bench/NAME.py``, so Python puts ``bench/`` on the path and ``import harness``
finds this file (no path edits). It holds:

- results: :func:`arguments` (a script's parser with the shared ``--json`` / ``--out PATH``) and
  :class:`Results` (``--json``: one JSON line per row on stdout, no table; ``--out PATH``: the same
  lines written to PATH, the table still printed), :func:`markdown` for tables, :func:`read_rows`;
- data: clustered unit vectors (:func:`clustered`, :class:`SlicedClustered` for sizes that do not fit
  in memory at once), random unit vectors, exact top-k truth, :func:`recall`, :func:`p50_p99` and
  :func:`median_ms` timings;
- photos: the scikit-image photos (:func:`photo`), the tests' photo set (:func:`test_photos`), Debian
  ``mate-backgrounds`` (:func:`mate_photos`), :func:`encode` / :func:`jpeg` and :func:`jpeg_folder`;
- memory: :func:`proc_status` (VmRSS, RssAnon, RssFile, VmHWM), :func:`rss`, :func:`mem_available`, :func:`du`;
- servers, started the way the tests start them: :func:`server` (``create_server(ServerConfig(port=0,
  ...))`` in this process) and :class:`ServeProcess` (``lookalike serve --port 0`` as a child process);
  :func:`grpc_searches` times Search calls against one and scores their recall;
- :func:`from_tests`: a helper module of ``tests/`` (the Milvus and S3 servers the tests use), loaded
  from its file.

    python bench/harness.py          # every script: what it measures and an example command (make bench)
"""

from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import importlib.util
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
Row = dict[str, Any]


# ----------------------------------------------------------------------------- arguments and results


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser: its docstring as the description, and the ``--json`` / ``--out`` every script shares."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON lines on stdout (one object per row) instead of the table; "
                         "notes go to stderr")  # fmt: skip
    ap.add_argument("--out", type=Path, metavar="PATH", help="also write the results to PATH as JSON lines")
    return ap


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: numpy scalars and arrays, paths."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


class Results:
    """Where a script's rows go. ``--json``: each row as a JSON line on stdout (the script leaves its table
    out, notes go to stderr as ``# ...``); ``--out PATH``: each row as a JSON line in PATH too. Without
    ``--json``, ``show(row)`` (when given) prints each row as a table line. ``with_load``: each row gets
    ``load``, the 1-minute load average when it was added (the machine may be shared)."""

    def __init__(self, args: argparse.Namespace, show: Callable[[Row], str] | None = None,
                 with_load: bool = False) -> None:  # fmt: skip
        self.json = bool(args.json)
        self.show = show
        self.with_load = with_load
        self.rows: list[Row] = []
        self.file = None
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(args.out, "w")  # open for the whole run, closed at exit
            atexit.register(self.file.close)

    @property
    def table(self) -> bool:
        """True where the script prints its human-readable table (no ``--json``)."""
        return not self.json

    def add(self, row: Row | None = None, **fields: Any) -> Row:
        row = {**(row or {}), **fields}
        if self.with_load:
            row["load"] = round(os.getloadavg()[0], 2)
        self.rows.append(row)
        line = json.dumps(row, default=_plain)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()
        if self.json:
            print(line, flush=True)
        elif self.show is not None:
            print(self.show(row), flush=True)
        return row

    def say(self, text: str) -> None:
        """A note: on stdout beside the table, on stderr (``# text``) beside JSON lines."""
        print(f"# {text}" if self.json else text, file=sys.stderr if self.json else sys.stdout, flush=True)

    def print_table(self, text: str) -> None:
        """The script's human-readable table, on stdout without ``--json`` (left out with it)."""
        if self.table:
            print(text, flush=True)


def markdown(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def read_rows(path: Path | str) -> list[Row]:
    """The rows of a ``--out`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def key_values(row: Row) -> str:
    return "  ".join(f"{k}={v}" for k, v in row.items())


# ----------------------------------------------------------------------------- data


def centres(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """The cluster centres of an n x d set: n/1000 of them (at least 16)."""
    return rng.standard_normal((max(16, n // 1000), d), np.float32)


def clustered(rng: np.random.Generator, rows: int, d: int, centres: np.ndarray, spread: float = 0.6) -> np.ndarray:
    """Unit vectors around random centres (the shape of real image embeddings), built in slices (bounded memory)."""
    out = np.empty((rows, d), np.float32)
    for a in range(0, rows, 65536):
        b = min(rows, a + 65536)
        x = centres[rng.integers(0, centres.shape[0], b - a)] + spread * rng.standard_normal((b - a, d), np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def clustered_set(n: int, d: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n clustered vectors and m queries from the same distribution."""
    rng = np.random.default_rng(seed)
    c = centres(rng, n, d)
    return clustered(rng, n, d, c), clustered(rng, m, d, c)


class SlicedClustered:
    """Clustered vectors regenerated slice by slice from the seed (slice i is always the same): sizes that
    are never held whole."""

    SLICE = 50_000

    def __init__(self, n: int, d: int, seed: int = 0) -> None:
        self.n, self.d, self.seed = n, d, seed
        self.centres = centres(np.random.default_rng(seed), n, d)

    def slices(self) -> int:
        return -(-self.n // self.SLICE)

    def slice(self, i: int) -> np.ndarray:
        return clustered(np.random.default_rng((self.seed, i)), min(self.SLICE, self.n - i * self.SLICE), self.d,
                         self.centres)  # fmt: skip

    def queries(self, m: int) -> np.ndarray:
        return clustered(np.random.default_rng((self.seed, 10**9)), m, self.d, self.centres)

    def truth(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Exact float32 top-k ids over all n (the native kernel), slice by slice."""
        from lookalike import native

        best_s = np.full((len(queries), k), -np.inf, np.float32)
        best_i = np.full((len(queries), k), -1, np.int64)
        for i in range(self.slices()):
            s, ids = native.topk(self.slice(i), queries, k)
            s2, i2 = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids + i * self.SLICE], 1)
            order = np.argsort(-s2, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(s2, order, 1), np.take_along_axis(i2, order, 1)
        return best_i


def unit_vectors(rng: np.random.Generator | int, n: int, d: int) -> np.ndarray:
    """n random (unclustered) float32 unit vectors."""
    v = np.random.default_rng(rng).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_topk(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by float64 numpy (the reference for every other kernel)."""
    scores = queries.astype(np.float64) @ x.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_per_query(ids: np.ndarray | Sequence[Sequence[int]], truth: np.ndarray) -> np.ndarray:
    """Per query: the share of its true top-k (ids >= 0) found in ``ids`` (-1 pads a short answer)."""
    return np.array([len(set(np.asarray(a).tolist()) & set(b.tolist()) - {-1}) / max(1, int((b >= 0).sum()))
                     for a, b in zip(ids, truth, strict=True)])  # fmt: skip


def recall(ids: np.ndarray | Sequence[Sequence[int]], truth: np.ndarray) -> float:
    """recall@k: the true top-k ids found, over all queries."""
    hits = sum(len(set(np.asarray(a).tolist()) & set(b.tolist()) - {-1}) for a, b in zip(ids, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def p50_p99(seconds: Sequence[float]) -> tuple[float, float]:
    """Median and 99th percentile, in milliseconds (NaN when nothing was timed)."""
    ms = np.asarray(seconds, np.float64) * 1e3 if len(seconds) else np.array([np.nan])
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls, in milliseconds."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


# ----------------------------------------------------------------------------- photos

MATE_PHOTOS = Path("/usr/share/backgrounds/mate/nature")  # Debian mate-backgrounds


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as contiguous RGB uint8 (grey stacked, alpha dropped, other types scaled to 0-255)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    arr = np.asarray(arr[0] if isinstance(arr, tuple) else arr)  # stereo_motorcycle: (left, right, disparity)
    if arr.dtype != np.uint8:
        arr = (255 * (arr.astype(np.float32) / max(float(arr.max()), 1e-6))).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def photos(names: Sequence[str], *, skip_missing: bool = False) -> list[np.ndarray]:
    """:func:`photo` of each name; ``skip_missing``: leave out a photo this scikit-image build cannot give."""
    out = []
    for name in names:
        try:
            out.append(photo(name))
        except Exception:
            if not skip_missing:
                raise
    return out


def test_photos() -> list[np.ndarray]:
    """The photos the tests use (``tests/photos.py``: ``PHOTO_NAMES``)."""
    return photos(from_tests("photos").PHOTO_NAMES)


def fit(img: Any, max_side: int) -> Any:
    """A PIL image with its longer side at most ``max_side``."""
    from PIL import Image

    if max(img.size) <= max_side:
        return img
    s = max_side / max(img.size)
    return img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)


def mate_photos(max_side: int = 800) -> list[tuple[str, Any]]:
    """The Debian ``mate-backgrounds`` nature photos as (name, RGB PIL image); none where not installed."""
    from PIL import Image

    out = []
    for path in sorted(MATE_PHOTOS.glob("*.jpg")) if MATE_PHOTOS.is_dir() else []:
        with Image.open(path) as img:
            img.draft("RGB", (max_side, max_side))
            out.append((path.stem, fit(img.convert("RGB"), max_side)))
    return out


def encode(image: np.ndarray | Any, fmt: str = "JPEG", size: tuple[int, int] | None = None, **params: Any) -> bytes:
    """An array or PIL image as encoded bytes (``size``: resized first, bicubic)."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if size is not None:
        img = img.resize(size, Image.BICUBIC)
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(image: np.ndarray | Any, size: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    return encode(image, "JPEG", size, quality=quality)


def jpeg_folder(folder: Path, n: int, arrays: Sequence[np.ndarray], size: tuple[int, int] = (640, 480),
                seed: int = 0) -> list[Path]:  # fmt: skip
    """``n`` JPEGs of ``size`` in ``folder``, each a random 3/4 crop of one of ``arrays`` (in turn)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        arr = arrays[i % len(arrays)]
        h, w = arr.shape[:2]
        y, x = int(rng.integers(0, h // 4)), int(rng.integers(0, w // 4))
        path = folder / f"p{i:05d}.jpg"
        path.write_bytes(jpeg(arr[y : y + 3 * h // 4, x : x + 3 * w // 4], size))
        out.append(path)
    return out


# ----------------------------------------------------------------------------- memory


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """Bytes of a process's VmRSS, RssAnon, RssFile and VmHWM (``/proc/PID/status``)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def rss(pid: int | str = "self") -> int:
    """Resident memory of a process, bytes."""
    return proc_status(pid).get("VmRSS", 0)


def mem_available() -> int:
    """The machine's MemAvailable, bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def du(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- servers


@contextlib.contextmanager
def server(**config: Any) -> Iterator[Any]:
    """A server in this process, as the tests start one: ``create_server(ServerConfig(port=0, **config))``,
    on a temporary data directory unless ``data_dir`` is given; ``.address`` is HOST:PORT. Stopped at once,
    without a final snapshot, on exit."""
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        running = create_server(ServerConfig(port=0, **{"data_dir": Path(tmp), **config}))
        try:
            yield running
        finally:
            running.stop(0, snapshot=False)


class ServeProcess:
    """``lookalike serve --port 0 FLAGS`` as a child process (as ``tests/server/test_crash_recovery.py`` starts
    it): its output goes to ``log`` (a temporary file when none is given); the constructor returns once it
    printed ``lookalike: ready``, with ``address`` (HOST:PORT) and ``ready_s`` (seconds from the start)."""

    def __init__(self, *flags: str, log: Path | None = None, timeout: float = 600.0) -> None:
        self.cmd = [sys.executable, "-m", "lookalike", "serve", "--port", "0", *flags]
        self.own_log = log is None
        self.log = log if log is not None else Path(tempfile.mkstemp(prefix="lookalike-serve-", suffix=".log")[1])
        print("$ " + " ".join(self.cmd), file=sys.stderr, flush=True)
        began = time.perf_counter()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.address = ""
        while not self.address or "lookalike: ready" not in self.log.read_text():
            for line in self.log_lines():
                if line.startswith("lookalike: listening on"):
                    self.address = "127.0.0.1:" + line.rsplit(":", 1)[1].strip()
            if self.proc.poll() is not None or time.perf_counter() - began > timeout:
                tail = "\n".join(self.log_lines()[-30:])
                self.stop(0)
                raise RuntimeError(f"lookalike serve did not start; the end of its output:\n{tail}")
            time.sleep(0.1)
        self.ready_s = time.perf_counter() - began

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def stop(self, timeout: float = 120.0) -> None:
        """SIGINT (a clean shutdown, final snapshot included), then a kill after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.own_log:
            self.log.unlink(missing_ok=True)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def grpc_searches(address: str, db: str, queries: np.ndarray, truth: np.ndarray, per_group: int,
                  warmup: int = 0) -> Row:  # fmt: skip
    """Top-k Search by vector over gRPC for every query (images registered as group ``g{i // per_group}``,
    intra id ``i % per_group``): p50/p99 ms, recall@k against ``truth``, the tier that answered."""
    from lookalike.client import LookalikeClient

    k = truth.shape[1]
    lat, got, index = [], [], ""
    with LookalikeClient(address, timeout=600) as c:
        for q in queries[:warmup]:
            c.search(db, vector=q.tolist(), top_k=k)
        for q in queries:
            began = time.perf_counter()
            r = c.search(db, vector=q.tolist(), top_k=k)
            lat.append(time.perf_counter() - began)
            got.append([int(h.key.group_id[1:]) * per_group + h.key.intra_id for h in r.hits])
            index = r.index
    p50, p99 = p50_p99(lat)
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), f"recall_at_{k}": round(recall(got, truth), 4),
            "index": index}  # fmt: skip


# ----------------------------------------------------------------------------- the tests' helpers


def from_tests(name: str) -> ModuleType:
    """A helper module of ``tests/`` (``milvus_server``, ``moto_s3``, ``photos``), loaded from its file: the
    tests' own servers and photos, not a copy of them (``tests/`` is a folder of test files, not a package)."""
    key = f"lookalike_tests_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "tests" / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ----------------------------------------------------------------------------- the list (make bench)


def scripts() -> list[tuple[str, str, str]]:
    """(script, what it measures, an example command) of every bench script, from its module docstring: the
    first paragraph, and the first line that runs the script."""
    out = []
    for path in sorted(BENCH.glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        lines = [line.strip() for line in doc.splitlines()]
        what = " ".join(lines[: lines.index("")] if "" in lines else lines)  # the first paragraph
        example = next((line for line in lines if f"bench/{path.name}" in line and "python" in line), "")
        out.append((f"bench/{path.name}", what, example))
    return out


def until_graph(client: Any, database: str, query: Any, started: float, timeout: float = 1800.0) -> dict[str, Any]:
    """Search until the HNSW graph answers (it loads in the background after a restart; the exact tier answers
    until then): seconds from ``started`` to the first answer and to the graph's; the first and the last index."""
    vector = list(map(float, query))
    r = client.search(database, vector=vector, top_k=10)
    row = {"first_search_s": time.perf_counter() - started, "first_index": r.index}
    while r.index != "hnsw" and time.perf_counter() - started < timeout:
        time.sleep(0.02)
        r = client.search(database, vector=vector, top_k=10)
    row["graph_s"], row["index"] = time.perf_counter() - started, r.index
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="List the bench scripts: what each measures, an example command.")
    ap.add_argument("--list", action="store_true", help="the default")
    ap.add_argument("--markdown", action="store_true", help="as a Markdown table")
    args = ap.parse_args(argv)
    rows = scripts()
    if args.markdown:
        print("| script | measures | example |\n|---|---|---|")
        for name, what, example in rows:
            print(f"| `{name}` | {what} | `{example}` |")
        return 0
    width = max(len(name) for name, _, _ in rows)
    for name, what, example in rows:
        print(f"{name:<{width}}  {what}")
        if example:
            print(f"{'':<{width}}    {example}")
    print("\nEvery script: --json prints its results as JSON lines on stdout; --out PATH writes them to PATH.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

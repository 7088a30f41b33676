"""Labelled domain benchmark of the README's fine-tune (issue 13; a benchmark, not a CI test).

For each labelled set of ``lookalike.trainer.eval.domains`` (emoji art of two vendors, 30 kinds of
things, and Tabler's outline icons, 25 kinds; install: ``npm install --prefix ~/.cache/lookalike/datasets
emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 @tabler/icons@3.48.0
@tabler/icons-png@3.48.0``), the set's images are written to one folder *without labels*,
the README's command fine-tunes the served model on them, and every model is scored with labels
(leave-one-out mAP, 1-NN accuracy, recall@5 at the served 224 px):

- ``default``: the served model (EfficientNet-Lite0, ImageNet), what a user has before training;
- ``start``: the trainer's start export: the served weights with the set's domain centre alone
  (``export.center_images``, trainer/center.py), no training;
- ``fine-tune``: the last export of ``lookalike train --config finetune`` (default settings);
- ``best``: ``best_export.pt``, picked by the unlabelled self-check (the start included);
- ``epoch_N``: every checkpoint, beside its self-check score, to show whether the signal tracks mAP.

Stages (each prints the exact command it runs)::

    python bench/domains.py train --work runs/domains --set emoji-google --max-minutes 15
    python bench/domains.py eval  --work runs/domains --set emoji-google [--all-checkpoints]
    python bench/domains.py table --work runs/domains [--out runs/domains/table.jsonl]
    python bench/domains.py tracking --work runs/domains [--work runs/other]  # does the self-check pick well?
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRAINABLE = ("emoji-google", "emoji-twitter", "icons-tabler")
METRICS = ("mAP", "knn@1", "recall@5")


def _run(cmd: list[str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def _lookalike() -> list[str]:
    return [sys.executable, "-m", "lookalike.cli"]


def train(work: Path, name: str, max_minutes: float, extra: list[str]) -> None:
    from lookalike.trainer.eval.domains import write_domain_folder

    data = work / name / "images"
    if not data.is_dir():
        write_domain_folder(name, data, labelled=False)
    out = work / name / "finetune"
    budget = ["--max-minutes", str(max_minutes)] if max_minutes > 0 else []  # 0: the schedule's steps, untimed
    _run([*_lookalike(), "train", "--config", "finetune", "--data", str(data), "--output", str(out),
          *budget, "train.progress=false", *extra])  # fmt: skip


def _models(run: Path, all_checkpoints: bool) -> list[tuple[str, str]]:
    from lookalike.modelfile import read_meta

    exports = sorted(run.glob("epoch_*_export.pt"), key=lambda p: int(p.name.split("_")[1]))
    models = [("default", "default")]
    if (run / "start_export.pt").is_file() and read_meta(run / "start_export.pt").center is not None:
        models.append(("start", str(run / "start_export.pt")))  # the served model with the domain centre alone
    if exports:
        models.append(("fine-tune", str(exports[-1])))
    if (run / "best_export.pt").is_file():
        models.append(("best", str(run / "best_export.pt")))
    if all_checkpoints:
        models += [(p.name.removesuffix("_export.pt"), str(p)) for p in exports[:-1]]
    return models


def evaluate(work: Path, name: str, all_checkpoints: bool) -> None:
    import hashlib

    run = work / name / "finetune"
    results = {}
    digests: dict[str, Path] = {}  # best_export.pt is a copy of one export: evaluate each file once
    for label, spec in _models(run, all_checkpoints):
        target = work / name / f"eval_{label}.json"
        digest = hashlib.sha256(Path(spec).read_bytes()).hexdigest() if spec != "default" else "default"
        if not target.is_file() and digest in digests:
            data = json.loads(digests[digest].read_text())
            data["results"][0]["spec"] = spec
            target.write_text(json.dumps(data, indent=2) + "\n")
        digests.setdefault(digest, target)
        if not target.is_file():
            _run([*_lookalike(), "eval", "--model", spec, "--data", name, "--knn-k", "1", "--recall-k", "1,5",
                  "--json", str(target)])  # fmt: skip
        results[label] = json.loads(target.read_text())["results"][0]
    (work / name / "eval.json").write_text(json.dumps(results, indent=2) + "\n")


def _selfcheck(run: Path) -> dict[str, dict[str, Any]]:
    from lookalike.trainer.selfcheck import SelfCheckLog

    return {e["export"]: e for e in SelfCheckLog.load(run).entries}


def _chosen(run: Path) -> dict[str, Any] | None:
    """The self-check entry ``best_export.pt`` is a copy of (the trainer's own rule)."""
    from lookalike.trainer.selfcheck import SelfCheckLog

    return SelfCheckLog.load(run).best


def table(work: Path) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table of every evaluated set under ``work``, and its rows (one per set and model)."""
    lines = [
        "| set | model | mAP | 1-NN | recall@5 | Δ mAP vs default | self-check score |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for folder in sorted(p for p in work.iterdir() if (p / "eval.json").is_file()):
        results = json.loads((folder / "eval.json").read_text())
        checks = _selfcheck(folder / "finetune")
        base = results["default"]["mAP"]
        for label, r in results.items():
            spec = Path(r.get("spec", ""))
            check = checks.get(spec.name) if spec.name != "best_export.pt" else None
            if label == "best":
                best = _chosen(folder / "finetune")
                check = best
                label = f"best ({best['export'].removesuffix('_export.pt')})" if best else label
                # The trainer's rule applied to the log now (a run trained under an earlier rule kept another file).
                same = [x for x in results.values() if best and Path(x.get("spec", "")).name == best["export"]]
                r = same[0] if same else r
            if label == "start" or (label == "default" and "start" not in results):
                check = checks.get("start_export.pt")  # the trainer's export of the served weights
            score = "" if check is None else f"{check['score']:.3f}"
            lines.append(
                f"| {folder.name} | {label} | {100 * r['mAP']:.2f} | {100 * r['knn@1']:.2f} | "
                f"{100 * r['recall@5']:.2f} | {100 * (r['mAP'] - base):+.2f} | {score} |"
            )
            rows.append({"set": folder.name, "model": label, **{k: r[k] for k in METRICS}, "selfcheck": check})
    return "\n".join(lines), rows


def _labelled_by_export(folder: Path) -> dict[str, float]:
    """Labelled mAP of each export of a run folder (without a centred ``start`` row, the start is the default)."""
    results = json.loads((folder / "eval.json").read_text())
    out = {}
    for label, r in results.items():
        if label == "default" and "start" not in results:
            out["start_export.pt"] = r["mAP"]
        elif label not in ("best", "default"):
            out[Path(r.get("spec", "")).name] = r["mAP"]
    return out


def _current_score(entry: dict[str, Any]) -> dict[str, Any]:
    """A check logged by an older trainer (scored by the copies' mAP, no jackknife) under today's score."""
    if entry.get("jackknife"):
        return entry
    return entry | {"score": -(entry["alignment"] + entry["uniformity"])}


def tracking(works: list[Path], tolerance_se: float = 1.0) -> str:
    """How often each rule picks a checkpoint whose labelled mAP is >= the last one's (and >= the start's).

    Rules: ``trainer's pick`` (``SelfCheckLog.best``: the last check when it keeps its copies and is
    clearly above the start, else the next rule), ``latest within noise`` (the third pass's pick: the
    latest check that keeps its copies within ``tolerance_se`` paired SE of the top score), ``top
    score`` (the highest ``-(alignment + uniformity)`` that keeps its copies), ``top copies' mAP``
    (the score of earlier versions), ``last`` (always the last checkpoint). Older logs are re-scored
    (:func:`_current_score`).
    Runs whose checkpoints were not all evaluated (``eval --all-checkpoints``) are skipped.
    """
    from lookalike.trainer.selfcheck import SelfCheckLog

    rules: dict[str, list[tuple[bool, bool]]] = {"trainer's pick": [], "latest within noise": [], "top score": [],
                                                 "top copies' mAP": [], "last": []}  # fmt: skip
    agree: dict[str, list[bool]] = {"score": [], "mAP": []}  # moved with labelled mAP from start to last
    lines = [
        "| run | checks: score (labelled mAP) | trainer's pick | latest within noise | top score | top copies' mAP "
        "| last |",
        "|---|---|---|---|---|---|---|",
    ]
    for work in works:
        for folder in sorted(p for p in work.iterdir() if (p / "eval.json").is_file()):
            log = SelfCheckLog.load(folder / "finetune", tolerance_se)
            log.entries = [_current_score(e) for e in log.entries]
            labelled = _labelled_by_export(folder)
            if len(log.entries) < 2 or any(e["export"] not in labelled for e in log.entries):
                continue
            last, start = log.entries[-1], log.entries[0]
            by_map = max(log.entries, key=lambda e: (e["mAP"], -e["epoch"]))
            picks = {"trainer's pick": log.best, "latest within noise": log.latest_within_noise,
                     "top score": log.top, "top copies' mAP": by_map, "last": last}  # fmt: skip
            gain = labelled[last["export"]] - labelled[start["export"]]
            for signal in agree:
                agree[signal].append((last[signal] - start[signal]) * gain > 0)
            cells = []
            for rule, pick in picks.items():
                ok = labelled[pick["export"]] >= labelled[last["export"]] - 1e-12
                rules[rule].append((ok, labelled[pick["export"]] >= labelled[start["export"]] - 1e-12))
                cells.append(f"{pick['export'].removesuffix('_export.pt')} {100 * labelled[pick['export']]:.2f}")
            checks = ", ".join(
                f"{e['export'].removesuffix('_export.pt')}: {e['score']:.3f} ({100 * labelled[e['export']]:.2f})"
                for e in log.entries
            )
            lines.append(f"| {work.name}/{folder.name} | {checks} | " + " | ".join(cells) + " |")
    summary = [
        f"{rule}: {sum(a for a, _ in v)}/{len(v)} picks >= the last checkpoint's mAP, "
        f"{sum(b for _, b in v)}/{len(v)} >= the start's"
        for rule, v in rules.items()
    ] + [
        f"{name} moved with labelled mAP from the start to the last checkpoint: {sum(v)}/{len(v)} runs"
        for name, v in (("score", agree["score"]), ("copies' mAP", agree["mAP"]))
    ]
    return "\n".join(lines + [""] + summary)


def main(argv: list[str] | None = None) -> int:
    import harness  # here, not at the top: tests/trainer/test_finetune_recipe.py loads this file for tracking()

    p = harness.arguments(__doc__)
    p.add_argument("stage", choices=("train", "eval", "table", "tracking"))
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        action="append",
        help="work folder (tracking: repeat it to pool runs)",
    )
    p.add_argument("--set", dest="name", choices=TRAINABLE, default="emoji-google")
    p.add_argument("--max-minutes", type=float, default=15.0, help="time budget of the fine-tune (0: none)")
    p.add_argument("--all-checkpoints", action="store_true", help="also evaluate every checkpoint")
    p.add_argument("overrides", nargs="*", help="train stage: extra key=value overrides")
    args = p.parse_intermixed_args(argv)  # --json / --out: the table stage's rows
    works = args.work or [Path("runs/domains")]
    args.work = works[0]
    if args.stage == "tracking":
        print(tracking(works))
        return 0
    if args.stage == "train":
        train(args.work, args.name, args.max_minutes, args.overrides)
    elif args.stage == "eval":
        evaluate(args.work, args.name, args.all_checkpoints)
    else:
        text, rows = table(args.work)
        out = harness.Results(args)
        for row in rows:
            out.add(row)
        out.print_table(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

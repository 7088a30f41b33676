"""Fashion-MNIST quality benchmark of the self-supervised trainer (a benchmark, not a CI test).

Trains on the 60,000 Fashion-MNIST training images *without labels*, then measures kNN accuracy,
mAP and recall@k of the exported embedders with the 10,000 test images as queries against the
training images as gallery (``lookalike eval --data fashion-mnist``). Rows: raw pixels (the
~86% 1-NN baseline), the server's default model (EfficientNet-Lite0 ImageNet), MoCo v2 from
scratch, and MoCo fine-tuned from the EfficientNet-Lite0 ImageNet start.

Needs the Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
Stages (each prints and runs the exact ``lookalike`` command it stands for)::

    python bench/fashion_mnist.py data     --work runs/fmnist     # 60k PNGs, list files, prep shards
    python bench/fashion_mnist.py train    --work runs/fmnist --run scratch
    python bench/fashion_mnist.py train    --work runs/fmnist --run finetune
    python bench/fashion_mnist.py eval     --work runs/fmnist --protocol full
    python bench/fashion_mnist.py table    --work runs/fmnist     # markdown table -> WORK/fashion_mnist.md [--json]

The scratch run uses a CIFAR-style ResNet-18 (3x3 stem, no max-pool, width 32) registered
here with timm as ``lookalike_small_resnet18``: timm's ImageNet ResNets shrink a 32 px input to
8 px before the first block, which wastes most of Fashion-MNIST's detail. Training commands
therefore run in this process (after the registration) through ``lookalike.trainer.train_cli``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import harness
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"scratch": "fmnist_scratch", "finetune": "fmnist_finetune"}
SMALL_RESNET = "lookalike_small_resnet18"


# ----------------------------------------------------------------------------- small-input backbone


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))  # [N, C, H', W']
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-18 layout for 28-64 px images: 3x3 stem (stride ``stem_stride``), no max-pool.

    ``forward``: ``[N, 3, S, S]`` -> pooled ``[N, 8 * width]`` (timm's ``num_classes=0`` contract).
    """

    def __init__(self, width: int = 32, stem_stride: int = 1, layers: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        blocks: list[nn.Module] = []
        cin = width
        for i, n in enumerate(layers):
            cout = width * 2**i
            for j in range(n):
                blocks.append(_Block(cin, cout, 2 if j == 0 and i > 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))  # [N, F]


def register_small_resnet() -> None:
    """Make ``lookalike_small_resnet18`` a timm model name (idempotent)."""
    import timm
    from timm.models import register_model

    if timm.is_model(SMALL_RESNET):
        return

    def lookalike_small_resnet18(pretrained: bool = False, num_classes: int = 0, **kwargs: Any) -> nn.Module:
        if pretrained or num_classes:
            raise ValueError(f"{SMALL_RESNET} is a feature extractor without pretrained weights")
        if "img_size" in kwargs:
            raise TypeError(f"{SMALL_RESNET}() got an unexpected keyword argument 'img_size'")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return SmallResNet(**kwargs)

    register_model(lookalike_small_resnet18)


# ----------------------------------------------------------------------------- stages


def _run(module: str, argv: list[str]) -> int:
    """Print the equivalent shell command, then run it in this process."""
    command = {"lookalike.trainer.prep": "prep", "lookalike.trainer.train_cli": "train"}.get(module, "eval")
    print("$ lookalike " + command + " " + shlex.join(argv), flush=True)
    import importlib

    return int(importlib.import_module(module).main(argv))


def stage_data(work: Path, subsets: list[int]) -> int:
    from lookalike.trainer.eval import fashion_mnist as fm
    from PIL import Image

    pixels, _ = fm.load_arrays("train")
    folder = work / "train-png"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{folder.name}/{i:05d}.png" for i in range(len(pixels))]  # relative to the lists' folder
    for name, arr in zip(names, pixels, strict=True):
        path = work / name
        if not path.is_file():
            Image.fromarray(arr).save(path)
    (work / "train_all.txt").write_text("\n".join(names) + "\n")
    for n in subsets:
        (work / f"train_first{n}.txt").write_text("\n".join(names[:n]) + "\n")
    argv = [str(work / "train_all.txt"), "--output", str(work / "shards"),
            "--prefix", "fmnist", "--encoding", "png", "--per-shard", "5000", "--workers", "2", "--quiet"]  # fmt: skip
    return _run("lookalike.trainer.prep", argv)


def stage_train(work: Path, run: str, name: str | None, data: str | None, overrides: list[str]) -> int:
    register_small_resnet()
    source = data or str(work / "shards")
    argv = ["--config", CONFIGS[run], "--data", source, "--output", str(work / (name or run)), *overrides]
    return _run("lookalike.trainer.train_cli", argv)


def _latest_export(folder: Path) -> Path | None:
    exports = sorted(folder.glob("epoch_*_export.pt"), key=lambda p: int(p.name.split("_")[1]))
    return exports[-1] if exports else None


def stage_eval(work: Path, protocol: str, models: list[str], extra: list[str]) -> int:
    specs: list[tuple[str, str, list[str]]] = []  # (model spec, result tag, extra flags)
    for model in models:
        # NAME@SIDE: run the model at another input size; NAME@SIDE-whole: and show it the whole image
        name, _, at = model.partition("@")
        size, _, mode = at.partition("-")
        flags = (["--input-size", size] if size else []) + (["--resize-size", size] if mode == "whole" else [])
        if name in ("pixels", "default"):
            specs.append((name, model, flags))
            continue
        export = _latest_export(work / name)
        if export is None:
            print(f"no export in {work / name}; run the train stage first", file=sys.stderr)
            return 2
        specs.append((str(export), model, flags))
    limits = {"full": [], "subset": ["--gallery-limit", "5000", "--query-limit", "1000"]}[protocol]
    rc = 0
    for spec, tag, size in specs:
        out = work / "eval" / f"{protocol}-{tag}.json"
        argv = ["--model", spec, "--data", "fashion-mnist", *limits, *size, "--near-dup", "--json", str(out), *extra]
        rc = rc or _run("lookalike.trainer.eval_cli", argv)
    return rc


def stage_table(work: Path, out: harness.Results) -> int:
    rows = []
    for path in sorted((work / "eval").glob("*.json")):
        protocol, _, tag = path.stem.partition("-")
        data = json.loads(path.read_text())
        for r in data["results"]:
            rows.append((protocol, tag, r))
    if not rows:
        print(f"no results in {work / 'eval'}; run the eval stage first", file=sys.stderr)
        return 2
    head = "| protocol | model | gallery/queries | kNN@1 | kNN@20 | mAP | R@1 | R@5 | dup-all R@1 | dup-crop R@1 |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for protocol, tag, r in rows:
        dup = r.get("near_dup", {})
        out.add({"protocol": protocol, "tag": tag, **r})

        def pct(v: float | None) -> str:
            return "" if v is None else f"{100 * v:.2f}"

        lines.append(
            f"| {protocol} | {tag} ({r['model']}, {r['dim']}-d) | {r['gallery']}/{r['queries']} | "
            f"{pct(r.get('knn@1'))} | {pct(r.get('knn@20'))} | {pct(r.get('mAP'))} | {pct(r.get('recall@1'))} | "
            f"{pct(r.get('recall@5'))} | {pct(dup.get('all', {}).get('recall@1'))} | "
            f"{pct(dup.get('crop', {}).get('recall@1'))} |"
        )
    table = "\n".join(lines) + "\n"
    (work / "fashion_mnist.md").write_text(table)
    out.print_table(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = harness.arguments(__doc__)  # --json / --out: the table stage's rows
    p.add_argument("stage", choices=["data", "train", "eval", "table"])
    p.add_argument("--work", type=Path, default=Path("runs/fmnist"), help="working folder (never committed)")
    p.add_argument("--run", choices=sorted(CONFIGS), help="train: which configuration")
    p.add_argument("--name", default=None, help="train: output folder name under WORK (default: the run)")
    p.add_argument("--data", default=None, help="train: data source (default: WORK/shards)")
    p.add_argument("--subsets", default="10000", help="data: also write list files of the first N images")
    p.add_argument("--protocol", choices=["full", "subset"], default="full",
                   help="eval: full = 60k gallery / 10k queries; subset = 5k / 1k")  # fmt: skip
    p.add_argument("--models", default="pixels,default,scratch,finetune",
                   help="eval: pixels, default, default@SIZE, or a run name (folder under WORK)")  # fmt: skip
    p.add_argument("rest", nargs="*", help="train: config overrides; eval: extra lookalike eval flags")
    args = p.parse_intermixed_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "data":
        return stage_data(args.work, [int(n) for n in args.subsets.split(",") if n])
    if args.stage == "train":
        if args.run is None:
            p.error("train needs --run scratch or --run finetune")
        return stage_train(args.work, args.run, args.name, args.data, args.rest)
    if args.stage == "eval":
        return stage_eval(args.work, args.protocol, args.models.split(","), args.rest)
    return stage_table(args.work, harness.Results(args))


if __name__ == "__main__":
    sys.exit(main())

"""``lookalike train``: self-supervised training from a YAML config plus command-line overrides.

Examples::

    lookalike train --data images.txt --output runs/df2              # PAI defaults (default.yaml)
    lookalike train --config tiny --data tests/imgs --output /tmp/t  # the tiny CPU configuration
    lookalike train --config finetune --data photos/ --output runs/p --max-minutes 20  # adapt, within 20 min
    lookalike train --config my.yaml optim.lr=0.0005 train.epochs=100 method.name=MOCO_R50
    python -m torch.distributed.run --nproc_per_node 4 -m lookalike.trainer.train_cli --config my.yaml

Re-running the same command after an interruption resumes from ``<output>/last.pth``.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from lookalike.trainer.config import load_config, shipped_configs


def _configs_epilog() -> str:
    """The shipped configs with their one-line summaries, read from the files so the list cannot drift."""
    entries = shipped_configs()
    width = max(len(name) for name, _ in entries) + 2
    lines = ["shipped configs (--config NAME, trainer/configs/NAME.yaml; default.yaml is always the base):"]
    for name, summary in entries:
        text = textwrap.wrap(summary, 100 - width - 2) or [""]
        lines.append(f"  {name.ljust(width)}{text[0]}")
        lines.extend(" " * (width + 2) + more for more in text[1:])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lookalike train",
        description="Train an image embedder without labels (MoCo v2, MoBY, SwAV) and export it for serving.",
        epilog=_configs_epilog()
        + "\n\noverrides are section.key=value pairs, e.g. optim.lr=0.0005 train.precision=bf16\n"
        "method.options={K: 4096}. See trainer/configs/default.yaml for every key.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", "-c", action="append", default=[],
        help="YAML file or shipped config name (listed below); repeat to layer several",
    )  # fmt: skip
    p.add_argument("--data", help="image list, image folder or `lookalike prep` output (data.source)")
    p.add_argument("--output", "-o", help="output folder for checkpoints and exports (train.output_dir)")
    p.add_argument(
        "--max-minutes", type=float, default=None,
        help="time budget (train.max_minutes): one batch is timed first; a budget too short for "
        "train.min_steps steps is refused (exit 2) with the budget that would do, else the schedule is fitted "
        "to it and the run stops with a checkpoint and an export",
    )  # fmt: skip
    p.add_argument(
        "--allow-short", action="store_true",
        help="train even when --max-minutes fits fewer than train.min_steps steps (train.allow_short)",
    )  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.source={json.dumps(args.data)}")  # quoted: paths are not YAML
    if args.output is not None:
        overrides.append(f"train.output_dir={json.dumps(args.output)}")
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    if args.allow_short:
        overrides.append("train.allow_short=true")
    try:
        cfg = load_config(args.config, overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from lookalike.trainer.loop import train

        train(cfg)
    except ValueError as exc:
        print(f"lookalike train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lookalike train: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

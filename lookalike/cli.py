"""``lookalike``: serve, train and query from one command.

Heavy imports (torch, the server) happen only inside the subcommand that needs them,
so client commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

TRAINER_COMMANDS = {
    "train": "lookalike.trainer.train_cli",
    "prep": "lookalike.trainer.prep",
    "eval": "lookalike.trainer.eval_cli",
}


def cmd_serve(args: argparse.Namespace) -> int:
    from lookalike.server.app import serve
    from lookalike.server.config import ServerConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        model=Path(args.model) if args.model else None,
        token=os.environ.get("LOOKALIKE_TOKEN") or None,
        device=args.device,
        persist=not args.in_memory,
        fsync=args.fsync,
        fsync_interval_s=args.fsync_interval_ms / 1000.0,
        snapshot_interval_s=args.snapshot_interval,
        root=args.root,
        oss_endpoint=args.oss_endpoint,
        oss_credentials_file=Path(args.oss_credentials_file) if args.oss_credentials_file else None,
        oss_path_style=True if args.oss_path_style else None,
        ship_interval_s=args.ship_interval,
        repair=args.repair,
    )
    try:
        return serve(config)
    except Exception as exc:  # a clean message instead of a traceback for start-up failures
        from lookalike.modelfile import ModelFileError
        from lookalike.server.storage.segments import CorruptionError

        if isinstance(exc, (ModelFileError, OSError, CorruptionError, ValueError)):
            print(f"lookalike serve: {exc}", file=sys.stderr)
            return 1
        raise


def build_parser() -> argparse.ArgumentParser:
    from lookalike.client.commands import add_client_commands

    parser = argparse.ArgumentParser(prog="lookalike", description="Similar-image matching and retrieval.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gRPC server")
    p.add_argument("--host", default=os.environ.get("LOOKALIKE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("LOOKALIKE_PORT", "50051")))
    p.add_argument("--data-dir", default=os.environ.get("LOOKALIKE_DATA_DIR", "./lookalike-data"))
    p.add_argument(
        "--model",
        default=os.environ.get("LOOKALIKE_MODEL"),
        help="embedder file from `lookalike train` (default: EfficientNet-Lite0 ImageNet)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    env = os.environ.get
    p.add_argument(
        "--fsync",
        default=env("LOOKALIKE_FSYNC", "batch"),
        choices=["always", "batch", "never"],
        help="when an acknowledged write reaches the disk (README: 'Where your data lives'); default batch",
    )
    p.add_argument("--fsync-interval-ms", type=float, default=float(env("LOOKALIKE_FSYNC_INTERVAL_MS", "5")),
                   help="batch mode: fsync the log at least this often (default 5)")  # fmt: skip
    p.add_argument("--snapshot-interval", type=float, default=float(env("LOOKALIKE_SNAPSHOT_INTERVAL", "600")),
                   help="seconds between automatic snapshots; 0 = on request and at shutdown only")  # fmt: skip
    p.add_argument("--root", default=env("LOOKALIKE_ROOT"),
                   help="oss://bucket/prefix/: mirror snapshots and ship the log there")  # fmt: skip
    p.add_argument("--oss-endpoint", default=env("OSS_ENDPOINT"), help="OSS endpoint URL (or OSS_ENDPOINT)")
    p.add_argument("--oss-credentials-file", default=env("LOOKALIKE_OSS_CREDENTIALS_FILE"),
                   help="file of OSS_ACCESS_KEY_ID=... / OSS_ACCESS_KEY_SECRET=... lines")  # fmt: skip
    p.add_argument("--oss-path-style", action="store_true", default=env("OSS_PATH_STYLE", "") not in ("", "0", "false"),
                   help="path-style URLs (S3-protocol test servers)")  # fmt: skip
    p.add_argument("--ship-interval", type=float, default=float(env("LOOKALIKE_SHIP_INTERVAL", "1")),
                   help="seconds between log uploads to the OSS root (default 1)")  # fmt: skip
    p.add_argument("--repair", action="store_true",
                   help="start despite a damaged log or snapshot: drop the damage, log what went")  # fmt: skip
    p.add_argument("--in-memory", action="store_true", help="databases in memory only: nothing survives")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    for name in TRAINER_COMMANDS:
        sub.add_parser(name, help=f"{name} (see `lookalike {name} --help`)", add_help=False)
    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINER_COMMANDS:
        import importlib

        module = importlib.import_module(TRAINER_COMMANDS[argv[0]])
        return int(module.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    from lookalike.client.commands import run_client_command

    return run_client_command(args)


if __name__ == "__main__":
    sys.exit(main())

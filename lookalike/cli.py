"""``lookalike``: serve, train and query from one command.

Heavy imports (torch, the server) happen only inside the subcommand that needs them,
so client commands start fast.
"""

from __future__ import annotations

import argparse
import sys

TRAINER_COMMANDS = {
    "train": "lookalike.trainer.train_cli",
    "prep": "lookalike.trainer.prep",
    "eval": "lookalike.trainer.eval_cli",
}


def cmd_serve(args: argparse.Namespace) -> int:
    from lookalike.server.app import serve
    from lookalike.server.config import ServerConfig
    from lookalike.server.logging_setup import configure_logging

    try:
        config = ServerConfig.from_sources(args)
    except ValueError as exc:
        print(f"lookalike serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
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

    from lookalike.server.config import ServerConfig

    p = sub.add_parser(
        "serve", help="run the gRPC server", description="Run the server. Every option is also an environment "
        "variable (named in its help); flags win. Secrets (the token, OSS keys) come from the environment only.",
    )  # fmt: skip
    ServerConfig.add_arguments(p)
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

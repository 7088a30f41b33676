"""``lookalike``: serve, train and query from one command.

Heavy imports (torch, the server) happen only inside the subcommand that needs them,
so client commands start fast.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_USAGE = 64  # EX_USAGE (sysexits.h); argparse's 2 is what the client commands use for a refused request

TRAINER_COMMANDS = {
    "train": "lookalike.trainer.train_cli",
    "prep": "lookalike.trainer.prep",
    "eval": "lookalike.trainer.eval_cli",
    "calibrate": "lookalike.trainer.calibrate_cli",
}


def cmd_serve(args: argparse.Namespace) -> int:
    from lookalike.server.app import serve
    from lookalike.server.config import ServerConfig
    from lookalike.server.logging_setup import configure_logging

    try:
        config = ServerConfig.from_sources(args)
    except ValueError as exc:  # a bad flag or LOOKALIKE_* value: a usage error like argparse's own
        print(f"lookalike serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
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


def _closest(word: str, candidates: list[str]) -> str | None:
    """The likeliest intended word: swapped letters (``--prot``: ``--port``) first, then difflib's closest."""
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    swapped = [c for c in close if sorted(c) == sorted(word)]
    return (swapped or close or [None])[0]


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors exit 64 in one line and suggest the closest option or choice.

    Every subcommand's parser is one too (``add_subparsers`` makes its parsers of the parent's class).
    A subcommand's parser reports its own unknown options: argparse leaves them to the top parser,
    which knows none of the subcommand's options and so cannot suggest one.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        unknown = [a for a in extras if a.startswith("-") and len(a) > 1]
        if unknown and self._subparsers is None:  # a leaf parser: these options are its business
            self.error(self._unknown_option(unknown[0]))
        return ns, extras

    def _unknown_option(self, arg: str) -> str:
        flag = arg.split("=", 1)[0]
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        close = _closest(flag, options)
        return f"unknown option {flag}" + (f"; did you mean {close}?" if close else "")

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = [c.strip(" '") for c in choice.group(2).split(",")]
            close = _closest(choice.group(1), options)
            if close:
                message += f"; did you mean {close}?"
        elif message.startswith("unrecognized arguments: -"):
            message = self._unknown_option(message.split(": ", 1)[1].split()[0])
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (`{self.prog} --help` shows the usage)\n")

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", type(self))
        return super().add_subparsers(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    from lookalike.client.commands import add_client_commands

    parser = UsageParser(prog="lookalike", description="Similar-image matching and retrieval.")
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
    if not argv or argv[0] != "serve":
        # gRPC's C core (read when grpc is imported) logs a failed TLS handshake at INFO on stderr,
        # above the one line of ours that explains it.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "serve":
            return cmd_serve(args)
        from lookalike.client.commands import run_client_command

        return run_client_command(args)
    except KeyboardInterrupt:  # Ctrl-C while starting up: one line, the shell's code for SIGINT
        print("lookalike: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The client side of the ``lookalike`` CLI: match, db, add, search (dedup, ops, models: dedup_commands.py).

Imports only grpc and the generated stubs, so each command starts in a fraction of a
second; ``--json`` prints machine-readable output for scripts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from lookalike.client.client import CONNECT_REASONS, ClientError, LookalikeClient

DEFAULT_SERVER = "localhost:50051"
EXIT_REFUSED = 2  # the server answered with an error
EXIT_PARTIAL = 3  # `add` registered some images, not all
EXIT_UNREACHABLE = 4  # no server, or the client and the server disagree about TLS
EXIT_USAGE = 64  # EX_USAGE: the command line itself is wrong
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it


class UsageError(Exception):
    """A command line that argparse accepts but that cannot work (exit 64, like argparse's own errors here)."""


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("LOOKALIKE_SERVER", DEFAULT_SERVER),
        help="HOST:PORT of the server, or https://HOST:PORT for TLS (env LOOKALIKE_SERVER; default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call (default %(default)s)")
    parser.add_argument("--token", help="server token (env LOOKALIKE_TOKEN, which keeps it out of ps)")
    parser.add_argument("--token-file", help="read the token from the first line of this file")
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system CAs (env LOOKALIKE_TLS=1)")
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("LOOKALIKE_TLS_CA"),
        help="PEM CA that signed the server's certificate; implies --tls (env LOOKALIKE_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("LOOKALIKE_TLS_CERT"),
        help="PEM client certificate, for servers that require one (env LOOKALIKE_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=os.environ.get("LOOKALIKE_TLS_KEY"),
        help="PEM private key of --tls-cert (env LOOKALIKE_TLS_KEY)",
    )


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token", None):
        return args.token
    if getattr(args, "token_file", None):
        lines = [ln.strip() for ln in _read(args.token_file).decode().splitlines() if ln.strip()]
        if not lines:
            raise SystemExit(f"lookalike: --token-file {args.token_file} is empty")
        return lines[0]
    return os.environ.get("LOOKALIKE_TOKEN") or None


def _client(args: argparse.Namespace) -> LookalikeClient:
    tls = getattr(args, "tls", False) or os.environ.get("LOOKALIKE_TLS", "").lower() in ("1", "true", "yes", "on")
    server = args.server
    if server.startswith("https://"):  # as `lookalike serve` prints its address when it uses TLS
        server, tls = server.removeprefix("https://").rstrip("/"), True
    return LookalikeClient(
        server,
        token=_token(args),
        timeout=args.timeout,
        tls=tls,
        tls_ca=getattr(args, "tls_ca", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
    )


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"lookalike: cannot read {path}: {exc.strerror}") from None


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data) if args.json else human)


def to_json(msg: Message) -> Any:
    """A message as JSON-ready data, the same way for every command: snake_case keys, every field (zero
    values too), int64 as numbers and Timestamps as ISO-8601 strings.

    ``MessageToDict`` follows the proto3 JSON mapping instead, which writes int64 as strings
    (``"image_count": "7"``) and drops zero values, so scripts had to special-case both.
    """
    if msg.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        return msg.ToJsonString()  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: _field_json(value_fd, v) for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_field_json(fd, v) for v in value]
        elif fd.has_presence and not msg.HasField(fd.name):
            out[fd.name] = None
        else:
            out[fd.name] = _field_json(fd, value)
    return out


def _field_json(fd: Any, value: Any) -> Any:
    if fd.message_type is not None:
        return to_json(value)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name if value in fd.enum_type.values_by_number else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def cmd_match(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.match(_read(args.image_a), _read(args.image_b))
    _print(
        args,
        {"similarity": r.similarity, "cosine": r.cosine, "model": r.model},
        f"similarity {r.similarity:.4f} (cosine {r.cosine:.4f}, model {r.model})",
    )
    return 0


def _db_line(d: Any) -> str:
    """One database: sizes, its model (or that its model is not loaded), what it keeps, a running reindex."""
    model = d.model_name or f"NOT LOADED: {d.model}"
    line = f"{d.name}\t{d.image_count} images\t{d.group_count} groups\tdim {d.dimension}\tmodel {model}\tkeeps {d.keep}"
    return line + (f"\treindexing ({d.reindex_operation})" if d.reindex_operation else "")


def cmd_db(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.action == "list":
            dbs = c.list_databases()
            rows = [to_json(d) for d in dbs]
            human = "\n".join(_db_line(d) for d in dbs) or "(no databases)"
            _print(args, rows, human)
            return 0
        if not args.name:
            raise UsageError(f"db {args.action} needs a database NAME: `lookalike db {args.action} NAME`")
        if args.action in ("reindex", "rollback"):
            from lookalike.client import reindex_commands

            if args.action == "reindex":
                return reindex_commands.cmd_reindex(args, c)
            return reindex_commands.cmd_rollback(args, c)
        if args.action == "create":
            d = c.create_database(args.name, storage=args.storage or "", keep=args.keep or "", model=args.model or "")
            _print(args, to_json(d), f"created database {d.name} (dim {d.dimension}, {d.metric}, {d.storage}, "
                   f"keeps {d.keep})")  # fmt: skip
        elif args.action == "get":
            d = c.get_database(args.name)
            _print(args, to_json(d), _db_line(d))
        elif args.action == "delete":
            c.delete_database(args.name)
            _print(args, {"deleted": args.name}, f"deleted database {args.name}")
        elif args.action == "snapshot":
            r = c.snapshot_database(args.name)
            _print(args, to_json(r), f"snapshot of {args.name}: {r.image_count} images, {r.size_bytes} bytes, durable")
        elif args.action in ("export", "import"):
            if not args.location:
                raise UsageError(f"db {args.action} needs NAME and a LOCATION (a directory on the server or oss://...)")
            if args.action == "export":
                r = c.export_database(args.name, args.location)
                _print(args, to_json(r), f"exported {args.name}: {r.image_count} images, {r.size_bytes} bytes "
                       f"to {r.destination}")  # fmt: skip
            else:
                d = c.import_database(args.name, args.location)
                _print(args, to_json(d), f"imported {d.name}: {d.image_count} images from {args.location}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from lookalike.client import importer

    if (args.duplicate_tier or args.duplicate_threshold is not None) and not args.skip_duplicates:
        raise UsageError("--duplicate-tier and --duplicate-threshold go with --skip-duplicates")
    if args.duplicate_tier and args.duplicate_threshold is not None:
        raise UsageError("give --duplicate-tier or --duplicate-threshold, not both")
    found = list(importer.sources(args.images, group=args.group, group_from=args.group_from))
    if not found:
        raise SystemExit("lookalike: no image files found in the given paths")
    if args.intra_id is not None:
        if len(found) != 1:
            raise UsageError("--intra-id applies to one image; omit it to number images automatically")
        found = [importer.Source(found[0].ref, found[0].group_id, args.intra_id)]
    with _client(args) as c:
        c.get_database(args.db)  # a missing database is one clear error, not one failure per image
        update, close = importer.progress_bar(len(found), quiet=args.json or args.quiet)
        try:
            check = None
            if args.skip_duplicates:
                from lookalike.client.duplicates import duplicate_check

                check = duplicate_check("SKIP", args.duplicate_tier or "", args.duplicate_threshold)
            s = importer.run_import(c, args.db, found, batch=args.batch, in_flight=args.in_flight,
                                    retries=args.retries, resume=args.resume, progress=update,
                                    duplicates=check)  # fmt: skip
        except importer.ImportInterrupted as stop:
            close()
            done = stop.summary
            if args.json:
                print(json.dumps({**_add_json(done), "interrupted": True}))
            there = f" ({done.already_present} already present)" if done.already_present else ""
            print(f"lookalike: interrupted: {done.registered} of {done.received} registered{there}; "
                  "re-run with --resume to add the rest", file=sys.stderr)  # fmt: skip
            return EXIT_INTERRUPTED
        finally:
            close()
    _print(args, _add_json(s), _add_human(s))
    return 0 if not s.failures else EXIT_PARTIAL


def _rate(s: Any) -> float:
    """Newly registered images per second (what the server embedded and stored)."""
    return s.registered / s.seconds if s.seconds > 0 else 0.0


def _add_human(s: Any) -> str:
    """``registered 12 of 300 images (288 already present) (41.2 images/s)``, then one line per failure."""
    line = f"registered {s.registered} of {s.received} images"
    if s.already_present:
        line += f" ({s.already_present} already present)"
    if s.duplicates:
        line += f" ({len(s.duplicates)} skipped as duplicates)"
    if s.failures:
        line += f", {len(s.failures)} failed"
    if s.registered:
        line += f" ({_rate(s):.1f} images/s)"
    dups = [f"  duplicate {d['source']}: of {d['group_id']}/{d['intra_id']} ({d['score']:.4f})" for d in s.duplicates]
    return "\n".join([line, *dups] + [f"  failed {f['source']}: {f['reason']}: {f['message']}" for f in s.failures])


def _add_json(s: Any) -> dict[str, Any]:
    return {
        "received": s.received,
        "registered": s.registered,
        "already_present": s.already_present,
        "failed": len(s.failures),
        "images_per_s": _rate(s),
        "keys": [{"group_id": g, "intra_id": int(i)} for g, i in s.keys],
        "failures": [{"source": f["source"], "reason": f["reason"], "message": f["message"]} for f in s.failures],
        "duplicates": s.duplicates,
    }


def crop_argument(text: str) -> tuple[float, float, float, float]:
    """``--crop x,y,w,h``: four fractions of the image (argparse turns the error into a usage error, exit 64)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(parts) != 4 or len(values) != 4 or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a box: give x,y,w,h, four numbers in [0, 1] as fractions of the image "
            "(left, top, width, height), e.g. --crop 0.25,0.25,0.5,0.5 for the middle of the image"
        )
    return values  # type: ignore[return-value]


def cmd_search(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.search(
            args.db,
            image=_read(args.image),
            top_k=args.top_k,
            one_per_group=args.one_per_group,
            min_score=args.min_score,
            min_tier=args.min_tier or "",
            crop=args.crop,
        )
    hits = [
        {
            "group_id": h.key.group_id,
            "intra_id": h.key.intra_id,
            "score": h.score,
            "source": h.attributes.get("source"),
            "attributes": dict(h.attributes),
        }
        for h in r.hits
    ]
    human = "\n".join(
        f"{i + 1}\t{h['score']:.4f}\t{h['group_id']}\t{h['intra_id']}\t{h['source'] or '-'}" for i, h in enumerate(hits)
    )
    _print(args, {"hits": hits, "searched_count": r.searched_count}, human or "(no hits)")
    return 0


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("match", help="compare two images")
    p.add_argument("image_a")
    p.add_argument("image_b")
    add_client_options(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("db", help="create, list, get, delete, snapshot, export, import, reindex or roll back "
                       "databases")  # fmt: skip
    p.add_argument("action", choices=["create", "list", "get", "delete", "snapshot", "export", "import", "reindex",
                                      "rollback"])  # fmt: skip
    p.add_argument("name", nargs="?")
    p.add_argument("location", nargs="?",
                   help="export/import: a directory under the server's --export-root (relative paths are taken "
                   "from it), or oss://bucket/prefix/ under the server's --oss-allow")  # fmt: skip
    p.add_argument("--storage", choices=["f32", "f16", "bf16", "i8"], help="create: how vectors are stored")
    p.add_argument("--keep", choices=["none", "thumbnail", "original"],
                   help="create: what it keeps of each image (default: the server's --keep, thumbnail); kept images "
                   "let `lookalike db reindex` re-embed it with a new model")  # fmt: skip
    from lookalike.client.reindex_commands import add_reindex_options

    add_reindex_options(p)
    add_client_options(p)
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("add", help="register images (files, folders, image lists, oss://) in a database")
    p.add_argument("--db", required=True, help="database name")
    p.add_argument("--group", help="group_id for every image (default: from --group-from)")
    p.add_argument("--group-from", choices=["name", "parent"], default="name",
                   help="group_id from the file name (default) or its folder's name (labelled folders)")  # fmt: skip
    p.add_argument("--intra-id", type=int, help="intra_id (one image only; default: next in the group)")
    p.add_argument("--resume", action="store_true", help="skip sources already registered (by their source attribute)")
    p.add_argument("--batch", type=int, default=64, help="images per stream (default %(default)s)")
    p.add_argument("--in-flight", type=int, default=256, help="images read ahead at most (default %(default)s)")
    p.add_argument("--retries", type=int, default=4, help="retries of a stream after a transient failure")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--skip-duplicates", action="store_true",
                   help="skip images the database already holds a duplicate of (the model's tier)")  # fmt: skip
    p.add_argument("--duplicate-tier", choices=["duplicate", "near", "similar"],
                   help="with --skip-duplicates: the tier that counts as a duplicate (default: duplicate)")  # fmt: skip
    p.add_argument("--duplicate-threshold", type=float, help="with --skip-duplicates: a cosine threshold instead")
    p.add_argument("images", nargs="+",
                   help="image files, folders (recursive), image lists (path[,group_id[,intra_id]] per line), "
                   "oss://bucket/key images or lists")  # fmt: skip
    add_client_options(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("search", help="find the registered images closest to a query image")
    p.add_argument("--db", required=True, help="database name")
    p.add_argument("image")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--one-per-group", action="store_true", help="best image per group only")
    p.add_argument("--min-score", type=float, help="drop hits with cosine below this")
    p.add_argument("--min-tier", choices=["duplicate", "near", "similar"],
                   help="drop hits below the model's calibrated tier")  # fmt: skip
    p.add_argument("--crop", type=crop_argument, metavar="X,Y,W,H",
                   help="search with only this region of the image (a product in a scene): left, top, width, height "
                   "as fractions of the upright image, e.g. 0.25,0.25,0.5,0.5")  # fmt: skip
    add_client_options(p)
    p.set_defaults(func=cmd_search)

    from lookalike.client.dedup_commands import add_dedup_commands

    add_dedup_commands(sub, add_client_options)


def explain(err: ClientError, args: argparse.Namespace) -> ClientError:
    """The error in the CLI's words: the server names RPCs ("CreateDatabase"), a person types commands."""
    if err.reason == "DATABASE_NOT_FOUND":
        name = getattr(args, "db", None) or getattr(args, "name", None) or err.metadata.get("database", "NAME")
        if args.command in ("add", "search", "dedup"):
            message = f"database {name!r} does not exist: create it with `lookalike db create {shlex.quote(name)}`"
        else:  # get, delete, snapshot, export of a database that is not there: nothing to create
            message = f"database {name!r} does not exist (`lookalike db list` shows the databases there are)"
        return ClientError(err.code, err.reason, message, err.metadata)
    return err


def run_client_command(args: argparse.Namespace) -> int:
    """Run one client command; every failure becomes one line on stderr and an exit code, never a traceback."""
    try:
        return args.func(args)
    except ClientError as raw:
        err = explain(raw, args)
        if getattr(args, "json", False):
            print(json.dumps({"error": {"code": err.code, "reason": err.reason, "message": err.message}}))
        print(f"lookalike: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE if err.reason in CONNECT_REASONS else EXIT_REFUSED
    except UsageError as err:
        print(f"lookalike: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"lookalike: interrupted: {args.command} stopped", file=sys.stderr)
        return EXIT_INTERRUPTED

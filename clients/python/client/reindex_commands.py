"""``lookalike db reindex`` and ``lookalike db rollback``: re-embed a database with a new model, or switch back.

The server re-embeds from what the database kept (thumbnails or originals); what it could not
(``keep: none`` with sources it may not read, vectors sent by a client) is listed, and with
``--from-folder DIR`` this command uploads those images from their ``source`` paths (as
``lookalike add`` recorded them) into the reindexed database, keeping their keys and attributes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lookalike.client.client import ClientError
from lookalike.client.duplicates import state_name

SYSTEM_PREFIX = "lookalike."


def _commands() -> Any:
    from lookalike.client import commands

    return commands


def find_source(source: str, folder: Path) -> Path | None:
    """Where an image recorded as ``source`` is now: the path itself, else under ``folder`` by its path's tail
    (the longest that exists: ``a/b/c.jpg`` tries ``folder/a/b/c.jpg``, ``folder/b/c.jpg``, ``folder/c.jpg``)."""
    if source and Path(source).is_file():
        return Path(source)
    parts = Path(source).parts
    for start in range(len(parts)):
        if Path(parts[start]).anchor:  # the root of an absolute path
            continue
        candidate = folder.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    return None


def upload_missing(c: Any, name: str, result: Any, folder: Path) -> tuple[int, list[str]]:
    """Register the images the reindex listed as missing from their sources under ``folder``: (uploaded, problems)."""
    uploaded, problems = 0, []
    for m in result.missing:
        key = (m.key.group_id, m.key.intra_id)
        path = find_source(m.source, folder) if m.source else None
        if path is None:
            problems.append(f"{key[0]}/{key[1]}: {m.reason}, no file for source {m.source or '(none)'!r} in {folder}")
            continue
        try:
            old = c.get_image(result.previous, *key)
            attributes = {k: v for k, v in old.attributes.items() if not k.startswith(SYSTEM_PREFIX)}
        except ClientError:
            attributes = {"source": m.source}
        try:
            c.set_image(name, key[0], intra_id=key[1], image=path.read_bytes(), attributes=attributes)
            uploaded += 1
        except (ClientError, OSError) as err:
            problems.append(f"{key[0]}/{key[1]}: {err}")
    if result.missing_count > len(result.missing):
        problems.append(f"{result.missing_count - len(result.missing)} more missing images were not listed by the "
                        "server; register them again with lookalike add")  # fmt: skip
    return uploaded, problems


def summary(r: Any) -> str:
    lines = [f"reindexed {r.database} with model {r.model}: {r.reindexed_count} images "
             f"({r.concurrent_writes} written meanwhile), {r.missing_count} could not be re-embedded"]  # fmt: skip
    if r.sampled_queries:
        lines.append(f"neighbourhoods: overlap@10 {r.overlap_at_10:.3f} between the old and the new model, nearest "
                     f"other group unchanged for {r.same_nearest_group * 100:.0f}% of {r.sampled_queries} sampled "
                     "images")  # fmt: skip
    lines.append(f"the old database is kept as {r.previous} (lookalike db rollback {r.database} switches back; "
                 f"lookalike db delete {r.previous} frees it)")  # fmt: skip
    return "\n".join(lines)


def cmd_reindex(args: argparse.Namespace, c: Any) -> int:
    from lookalike.client.dedup_commands import _op_json, _wait

    cmds = _commands()
    folder = Path(args.from_folder) if args.from_folder else None
    if folder is not None and not folder.is_dir():
        raise cmds.UsageError(f"--from-folder {args.from_folder!r} is not a folder")
    op = c.reindex_database(args.name, args.model or "", allow_missing=args.allow_missing or folder is not None)
    if args.detach:
        cmds._print(args, _op_json(op), f"started {op.name}; follow it: lookalike ops wait {op.name}")
        return 0
    op = _wait(c, op.name, quiet=args.json or args.quiet, desc=f"reindexing {args.name}")
    if state_name(op.state) != "SUCCEEDED":
        reason = op.error.reason or state_name(op.state)
        raise ClientError("FAILED_PRECONDITION", reason, op.error.message or f"{op.name} ended {reason.lower()}")
    result = op.reindex
    text = summary(result)
    data = _op_json(op)
    if folder is not None and result.missing_count:
        uploaded, problems = upload_missing(c, args.name, result, folder)
        data["uploaded_from_folder"] = uploaded
        data["upload_problems"] = problems
        text += f"\nuploaded {uploaded} of the {result.missing_count} missing images from {folder}"
        text += "".join(f"\n  {p}" for p in problems[:20])
        if problems:
            cmds._print(args, data, text)
            return 1
    elif result.missing_count:
        text += "".join(f"\n  missing {m.key.group_id}/{m.key.intra_id} ({m.reason}) {m.source}"
                        for m in result.missing[:20])  # fmt: skip
        text += "\nregister them again by their source: lookalike db reindex ... --from-folder DIR, or lookalike add"
    cmds._print(args, data, text)
    return 0


def cmd_rollback(args: argparse.Namespace, c: Any) -> int:
    r = c.rollback_database(args.name)
    cmds = _commands()
    cmds._print(args, {"database": cmds.to_json(r.database), "previous": cmds.to_json(r.previous)},
                f"{r.database.name} is back on model {r.database.model_name or r.database.model} "
                f"({r.database.image_count} images); {r.previous.name} now holds the one on "
                f"{r.previous.model_name or r.previous.model}")  # fmt: skip
    return 0


def add_reindex_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="create: the loaded model it is bound to; reindex: the model to re-embed with "
                   "(lookalike models; default: the server's default model)")  # fmt: skip
    p.add_argument("--allow-missing", action="store_true",
                   help="reindex: switch even if some images cannot be re-embedded (they are listed)")  # fmt: skip
    p.add_argument("--from-folder", metavar="DIR",
                   help="reindex: upload the images the server could not re-embed, from their source "
                   "under DIR")  # fmt: skip
    p.add_argument("--detach", action="store_true", help="reindex: start it and return (lookalike ops wait)")
    p.add_argument("--quiet", action="store_true", help="reindex: no progress bar")

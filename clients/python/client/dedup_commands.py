"""``lookalike dedup``, ``lookalike ops`` and ``lookalike models``: duplicates, long-running operations, models."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from lookalike.client.client import ClientError
from lookalike.client.duplicates import state_name

HUMAN_CLUSTERS = 20  # clusters printed without --all (--json and --csv always carry every one)
CANCEL_WAIT_S = 30.0  # the longest Ctrl-C and `ops cancel` wait for a cancelled job to stop (one block)


def _commands() -> Any:
    from lookalike.client import commands

    return commands


def _op_json(op: Any) -> dict[str, Any]:
    data = _commands().to_json(op)
    data["state"] = state_name(op.state)
    return data


def _op_line(op: Any) -> str:
    p = op.progress
    state = state_name(op.state)
    line = f"{op.name}\t{op.kind}\t{op.database}\t{state}\t{p.fraction * 100:.0f}%"
    if op.error.reason:
        line += f"\t{op.error.reason}: {op.error.message}"
    return line


def _member(m: Any) -> str:
    source = m.attributes.get("source", "-")
    return f"{m.key.group_id}/{m.key.intra_id}\t{m.score_to_centre:.4f}\t{source}"


def _summary_line(r: Any) -> str:
    tier = f" (tier {r.tier})" if r.tier else ""
    chaining = ", no chaining" if r.no_chaining else ""
    return (f"found {r.cluster_count} clusters of duplicates ({r.clustered_image_count} images, "
            f"{r.removable_count} removable) among {r.image_count} images at cosine >= {r.threshold:.4f}{tier}, "
            f"{r.method}{chaining}, {r.seconds:.1f} s")  # fmt: skip


def _cancel(c: Any, name: str) -> Any:
    """Cancel and wait for the job to stop (after its current block), so that what is printed next is true:
    CancelOperation returns at once, while the operation is still RUNNING."""
    op = c.cancel_operation(name)
    return op if op.done else c.wait_operation(name, CANCEL_WAIT_S)


def _wait(c: Any, name: str, quiet: bool, desc: str = "finding duplicates") -> Any:
    """Wait for the operation with a progress bar; Ctrl-C cancels it on the server and says so."""
    bar = None
    if not quiet and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=100, unit="%", desc=desc, file=sys.stderr,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")  # fmt: skip
        except ImportError:
            bar = None

    def poll(op: Any) -> None:
        if bar is not None:
            bar.n = round(op.progress.fraction * 100)
            eta = op.progress.eta_seconds
            bar.set_postfix_str(f"{op.progress.stage} {op.progress.completed}/{op.progress.total} "
                                f"{op.progress.unit}" + (f", ETA {eta:.0f} s" if eta else ""))  # fmt: skip

    try:
        return c.wait_done(name, poll)
    except KeyboardInterrupt:
        try:
            op = _cancel(c, name)
            state = state_name(op.state)
            if state == "CANCELLED":
                print(f"lookalike: interrupted: cancelled {name}", file=sys.stderr)
            elif op.done:
                print(f"lookalike: interrupted: {name} had already ended {state.lower()}", file=sys.stderr)
            else:
                print(f"lookalike: interrupted: cancelling {name}; it stops after its current block", file=sys.stderr)
        except ClientError as err:
            print(f"lookalike: interrupted; cancelling {name} failed: {err}", file=sys.stderr)
        raise SystemExit(_commands().EXIT_INTERRUPTED) from None
    finally:
        if bar is not None:
            bar.close()


def cmd_dedup(args: argparse.Namespace) -> int:
    cmds = _commands()
    if args.tier and args.threshold is not None:
        raise cmds.UsageError("give --tier or --threshold, not both")
    if not args.db and not args.operation:
        raise cmds.UsageError("name the database (--db NAME), or an earlier run (--operation operations/...)")
    with cmds._client(args) as c:
        if args.operation:
            name = args.operation
        else:
            op = c.find_duplicates(args.db, tier=args.tier or "", threshold=args.threshold,
                                   no_chaining=args.no_chaining, keeper=args.keep or "",
                                   method=args.method or "")  # fmt: skip
            name = op.name
            if args.detach:
                cmds._print(args, _op_json(op), f"started {name}; follow it: lookalike ops wait {name}")
                return 0
        op = _wait(c, name, quiet=args.json or args.quiet)
        if state_name(op.state) != "SUCCEEDED":
            reason = op.error.reason or state_name(op.state)
            raise ClientError("FAILED_PRECONDITION", reason, op.error.message or f"{name} ended {reason.lower()}")
        clusters = list(c.duplicate_clusters(name, page_size=1000))
    result = op.find_duplicates
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["cluster", "role", "group_id", "intra_id", "score_to_centre", "source", "keeper_reason"])
            for n, cl in enumerate(clusters):
                for m in cl.members:
                    keeper = (m.key.group_id, m.key.intra_id) == (cl.keeper.group_id, cl.keeper.intra_id)
                    w.writerow([n + 1, "keep" if keeper else "duplicate", m.key.group_id, m.key.intra_id,
                                f"{m.score_to_centre:.6f}", m.attributes.get("source", ""),
                                cl.keeper_reason if keeper else ""])  # fmt: skip
    if args.json:
        print(json.dumps({"operation": name, "result": cmds.to_json(result),
                          "clusters": [cmds.to_json(cl) for cl in clusters]}))  # fmt: skip
        return 0
    lines = [_summary_line(result)]
    shown = clusters if args.all else clusters[:HUMAN_CLUSTERS]
    for n, cl in enumerate(shown):
        lines.append(f"cluster {n + 1}: {len(cl.members)} images, keep {cl.keeper.group_id}/{cl.keeper.intra_id} "
                     f"[{cl.keeper_reason}]; least alike pair {cl.farthest.score:.4f}")  # fmt: skip
        lines += [f"  {'keep' if i == 0 else 'dup '}\t{_member(m)}" for i, m in enumerate(cl.members)]
    if len(shown) < len(clusters):
        lines.append(f"... {len(clusters) - len(shown)} more clusters (--all, --json or --csv FILE for every one)")
    if args.csv:
        lines.append(f"wrote {len(clusters)} clusters to {args.csv}")
    print("\n".join(lines))
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    cmds = _commands()
    if args.action != "list" and not args.name:
        raise cmds.UsageError(f"`lookalike ops {args.action}` needs an operation name (lookalike ops list)")
    with cmds._client(args) as c:
        if args.action == "list":
            ops = c.list_operations(args.db or "")
            cmds._print(args, [_op_json(o) for o in ops], "\n".join(_op_line(o) for o in ops) or "(no operations)")
            return 0
        if args.action == "delete":
            c.delete_operation(args.name)
            cmds._print(args, {"deleted": args.name}, f"deleted {args.name}")
            return 0
        if args.action == "wait":
            op = _wait(c, args.name, quiet=args.json)
        else:
            op = c.get_operation(args.name) if args.action == "get" else _cancel(c, args.name)
    cmds._print(args, _op_json(op), _op_line(op))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    cmds = _commands()
    with cmds._client(args) as c:
        models = c.list_models()
    lines = []
    for m in models:
        t = m.tiers
        tiers = (f"duplicate >= {t.duplicate:.4f}, near >= {t.near:.4f}, similar >= {t.similar:.4f}"
                 if m.HasField("tiers") else "no calibrated tiers (lookalike calibrate MODEL)")  # fmt: skip
        state = " (default)" if m.is_default else "" if m.loaded else " (NOT LOADED: its databases are not served)"
        named = m.identity if m.identity.startswith(f"{m.name} (") else f"{m.name}: {m.identity}"  # served as NAME
        lines.append(f"{named}{state}\n  tiers: {tiers}\n"
                     f"  databases: {', '.join(m.databases) or '-'}")  # fmt: skip
    cmds._print(args, [cmds.to_json(m) for m in models], "\n".join(lines))
    return 0


def add_dedup_commands(sub: argparse._SubParsersAction, add_client_options: Any) -> None:
    p = sub.add_parser("dedup", help="find every duplicate in a database, grouped into clusters")
    p.add_argument("--db", help="database name")
    p.add_argument("--tier", choices=["duplicate", "near", "similar"],
                   help="the model's calibrated tier as the threshold (default: duplicate)")  # fmt: skip
    p.add_argument("--threshold", type=float, help="a cosine threshold instead of a tier")
    p.add_argument("--no-chaining", action="store_true",
                   help="every member within the threshold of the cluster's centre and of each other")  # fmt: skip
    p.add_argument("--keep", help="which image to suggest keeping: central (default), largest, earliest, latest, "
                   "attribute:KEY or attribute:KEY:min")  # fmt: skip
    p.add_argument("--method", choices=["exact", "graph"], help="default: exact up to the server's "
                   "--dedup-exact-max-images, HNSW neighbours above")  # fmt: skip
    p.add_argument("--csv", metavar="FILE", help="also write every cluster member as a CSV row")
    p.add_argument("--all", action="store_true", help=f"print every cluster (default: the first {HUMAN_CLUSTERS})")
    p.add_argument("--detach", action="store_true", help="start it and return (follow it with lookalike ops wait)")
    p.add_argument("--operation", help="read the clusters of an earlier run (operations/...) instead of starting one")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_client_options(p)
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("ops", help="list, get, wait for, cancel or delete long-running operations")
    p.add_argument("action", choices=["list", "get", "wait", "cancel", "delete"])
    p.add_argument("name", nargs="?", help="the operation (operations/...)")
    p.add_argument("--db", help="list: only operations on this database")
    add_client_options(p)
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("models", help="the server's models: contract, calibrated tiers, databases")
    add_client_options(p)
    p.set_defaults(func=cmd_models)

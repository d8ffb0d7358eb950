"""`python -m engine history list|show|compare|import|export|delete`, and saving the report of `run`,
`bench` and `sweep` to the history when they end (engine/history.py)."""
from __future__ import annotations

import argparse
import sys

from engine.errors import InputError
from engine.history import History, default_path
from engine.history_compare import compare
from engine.views.history_tables import compare_table, describe, list_table


def add_save_options(command: argparse.ArgumentParser) -> None:
    """--history PATH and --no-history on a command whose report is saved when it ends."""
    group = command.add_mutually_exclusive_group()
    group.add_argument("--history", metavar="PATH", help=f"save the report to this history (default: {default_path()})")
    group.add_argument("--no-history", action="store_true", help="do not save the report to the history")


def keep(args, report: dict, kind: str) -> int | None:
    """Save a finished command's report unless --no-history. Called after its output is printed and
    written: a failure here only warns, on stderr, and changes neither the output nor the exit code."""
    if getattr(args, "no_history", False):
        return None
    history = History(args.history or None)
    try:
        run_id = history.save(report, kind)
    except Exception as error:        # whatever went wrong (disk full, locked too long, a bad path): the run stands
        print(f"warning: the report was not saved to the history {history.path}: {error}", file=sys.stderr)
        return None
    print(f"saved to the history as #{run_id} ({history.path})", file=sys.stderr)
    return run_id


def _run_id(text: str) -> int:
    try:
        value = int(text.lstrip("#"))
    except ValueError:
        raise InputError(f"{text!r} is not a run id: the ids are the numbers `python -m engine history list` "
                         "shows") from None
    return value


def _list(args) -> int:
    history = History(args.history or None)
    entries = history.list(args.preset, args.device, args.variant, args.since)
    print(list_table(entries) if entries else f"no runs saved in {history.path}"
          + (" that match" if any((args.preset, args.device, args.variant, args.since)) else ""))
    return 0


def _show(args) -> int:
    print(describe(History(args.history or None).get(_run_id(args.id))))
    return 0


def _compare(args) -> int:
    history = History(args.history or None)
    ids = list(dict.fromkeys(_run_id(text) for text in args.ids))
    reference = _run_id(args.reference) if args.reference else ids[0]
    if reference not in ids:
        ids.insert(0, reference)
    entries = [history.get(run_id) for run_id in ids]
    compared = compare([entry.report for entry in entries], ids.index(reference))
    print(compare_table(compared, [f"#{run_id}" for run_id in ids]))
    return 0


def _import(args) -> int:
    history = History(args.history or None)
    ids = history.import_file(args.file)
    print(f"imported {args.file} as {', '.join(f'#{i}' for i in ids)} ({history.path})")
    return 0


def _export(args) -> int:
    History(args.history or None).export(_run_id(args.id), args.json)
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _delete(args) -> int:
    history = History(args.history or None)
    run_id = _run_id(args.id)
    history.delete(run_id)
    print(f"deleted #{run_id} from {history.path}")
    return 0


def add_command(sub) -> None:
    """The `history` command and its actions, on the command line's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--history", metavar="PATH", help=f"the history file (default: {default_path()})")
    top = sub.add_parser("history", help="the saved runs: list, show, compare, import, export, delete")
    actions = top.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common], help="the saved runs, newest first")
    listing.add_argument("--preset", help="only this preset's runs")
    listing.add_argument("--device", help="only runs on a device whose name contains this (e.g. H200)")
    listing.add_argument("--variant", help="only runs with this variant")
    listing.add_argument("--since", help="only runs made since this date or time (e.g. 2026-12-01)")
    listing.set_defaults(func=_list)
    show = actions.add_parser("show", parents=[common], help="one run: its provenance and figures")
    show.add_argument("id")
    show.set_defaults(func=_show)
    side = actions.add_parser("compare", parents=[common], help="runs side by side per variant, with the change "
                              "from the reference in percent and whether it is within noise")
    side.add_argument("ids", nargs="+", metavar="ID")
    side.add_argument("--reference", metavar="ID", help="the run the others are compared with (default: the first)")
    side.set_defaults(func=_compare)
    load = actions.add_parser("import", parents=[common], help="keep a report file written by --json")
    load.add_argument("file")
    load.set_defaults(func=_import)
    out = actions.add_parser("export", parents=[common], help="write a run's report as JSON")
    out.add_argument("id")
    out.add_argument("--json", required=True, metavar="PATH", help="the file to write")
    out.set_defaults(func=_export)
    drop = actions.add_parser("delete", parents=[common], help="remove a run")
    drop.add_argument("id")
    drop.set_defaults(func=_delete)

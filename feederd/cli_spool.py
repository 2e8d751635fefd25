"""``feederd spool``: inspect, export and acknowledge the negatives spool.

The subcommand group the laptop's ``feeder-sync pull`` drives over SSH (``export``, ``ack``)
and the owner reads (``ls``, ``stats``, ``show``); apart from :mod:`feederd.cli` so that the
spool's verbs and their arguments sit in one place.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from feederd.cli_common import emit, settings_from_args
from feederd.config import Settings
from feederd.errors import EXIT_OK

logger = logging.getLogger(__name__)


def cmd_spool(args: argparse.Namespace) -> int:
    from feederd.spool import DB_NAME, Spool

    settings = settings_from_args(args)
    if args.spool_cmd in ("ls", "stats") and not (settings.spool_dir / DB_NAME).exists():
        # Nothing stored yet is a state, not an error: a fresh install lists no samples.
        emit([] if args.spool_cmd == "ls" else _no_spool_stats(settings), args.json)
        return EXIT_OK
    spool = Spool(settings.spool_dir, settings.spool, writer=False)
    try:
        if args.spool_cmd == "ls":
            emit([s.manifest() for s in spool.ls(args.since, args.limit)], args.json)
        elif args.spool_cmd == "stats":
            emit(spool.stats(), args.json)
        elif args.spool_cmd == "show":
            emit(spool.get(args.id).manifest(), args.json)
        elif args.spool_cmd == "export":
            last = spool.export(args.since, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            logger.info("exported samples up to sequence %d", last)
        elif args.spool_cmd == "ack":
            emit({"acked": spool.ack(args.seq), "seq": args.seq}, args.json)
    finally:
        spool.close()
    return EXIT_OK


def _no_spool_stats(settings: Settings) -> dict[str, Any]:
    """``spool stats`` before the first sample: zeros, and where the spool will be."""
    return {"spool_id": None, "samples": 0, "bytes": 0, "unsynced": 0, "labelled_user": 0,
            "labelled_pseudo": 0, "last_seq": 0, "max_bytes": settings.spool.max_bytes,
            "max_count": settings.spool.max_count,
            "note": f"no spool in {settings.spool_dir} yet; feederd creates it when it "
                    "stores its first sample"}


def add_spool_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``spool ls | stats | show | export | ack`` under ``sub`` (``common``: --config, --json)."""
    spool = sub.add_parser("spool", help="inspect and export the negatives spool")
    spool.set_defaults(func=cmd_spool)
    ssub = spool.add_subparsers(dest="spool_cmd", required=True, metavar="ACTION")
    ls = ssub.add_parser("ls", parents=[common], help="list samples")
    ls.add_argument("--since", type=int, default=0, help="only sequences above this")
    ls.add_argument("--limit", type=int, default=100)
    ssub.add_parser("stats", parents=[common], help="counts and sizes")
    show = ssub.add_parser("show", parents=[common], help="one sample")
    show.add_argument("id", type=int)
    export = ssub.add_parser("export", parents=[common],
                             help="write a tar stream (manifest.jsonl + JPEGs) to stdout")
    export.add_argument("--since", type=int, required=True, metavar="SEQ")
    ack = ssub.add_parser("ack", parents=[common], help="mark samples up to SEQ as synced")
    ack.add_argument("seq", type=int, metavar="SEQ")


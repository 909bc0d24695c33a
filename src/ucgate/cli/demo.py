"""``ucgate demo``: the gateway in front of the simulated front end (``ucgate.lab.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import LOG_LEVELS


def _cmd_demo(args: argparse.Namespace) -> int:
    # lazy: ucgate.app and gateway/ take ~0.1 s to import; only this command needs them
    from ..app import run, setup_logging
    from ..lab.demo import run_demo

    setup_logging(args.log_level or "info")
    run(lambda: run_demo(Path(args.data_dir).expanduser(), args.host, args.port))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="run the gateway in front of a simulated SfB/Exchange front end")
    d.add_argument("--data-dir", default="~/.local/share/ucgate/demo")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8443)
    d.add_argument("--log-level", choices=LOG_LEVELS)
    d.set_defaults(func=_cmd_demo)

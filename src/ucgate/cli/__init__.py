"""The one command line: ``ucgate serve|demo|check-config|...``."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import ConfigError
from . import admin, check_config, decode, demo, devices, init, kerberos, serve, tokens, vault
from .options import config_parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ucgate", description=__doc__)
    p.add_argument("--version", action="version", version=f"ucgate {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = config_parent()
    serve.register(sub, common)
    check_config.register(sub, common)
    demo.register(sub)
    decode.register(sub)
    init.register(sub)
    admin.register(sub, common)
    devices.register(sub, common)
    kerberos.register(sub, common)
    tokens.register(sub, common)
    vault.register(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"ucgate: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

"""``ucgate serve`` (the gateway) and ``ucgate id-service`` (the id service on its own)."""

from __future__ import annotations

import argparse
import logging

from ..config import load
from ..id.policy_check import device_policy_findings
from .options import LOG_LEVELS


def _cmd_serve(args: argparse.Namespace) -> int:
    # lazy: ucgate.app and gateway/ take ~0.1 s to import; only this command needs them
    from ..app import run, serve, setup_logging

    config = load(args.config)
    setup_logging(args.log_level or config.log_level, config.log_format)
    _log_findings(config)
    run(lambda: serve(config, log_level=args.log_level))
    return 0


def _log_findings(config) -> None:
    for _level, message in device_policy_findings(config):
        logging.getLogger("ucgate.config").warning("%s: %s", config.path, message)


def _cmd_id_service(args: argparse.Namespace) -> int:
    # lazy: ucgate.app and gateway/ take ~0.1 s to import; only this command needs them
    from ..app import run, serve_id_service, setup_logging

    config = load(args.config, role="id-service")
    setup_logging(args.log_level or config.log_level, config.log_format)
    run(lambda: serve_id_service(config))
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[common], help="run the gateway from a configuration file")
    s.add_argument("--log-level", choices=LOG_LEVELS)
    s.set_defaults(func=_cmd_serve)

    i = sub.add_parser(
        "id-service", parents=[common], help="run the id service's HTTP API (LAN side) and the account monitor"
    )
    i.add_argument("--log-level", choices=LOG_LEVELS)
    i.set_defaults(func=_cmd_id_service)

"""``ucgate check-config``: build everything a configuration names, without listening."""

from __future__ import annotations

import argparse
import sys

from ..config import load
from ..id.policy_check import device_policy_findings


def _cmd_check_config(args: argparse.Namespace) -> int:
    # lazy: ucgate.app and gateway/ take ~0.1 s to import; only this command needs them
    from ..app import build_node

    config = load(args.config)
    # Build everything (certificates, TLS contexts, key file, store) without listening: this
    # catches an unreadable key or a key file next to the database too.
    node = build_node(config)
    if node.ids is not None:
        node.ids.close()
    findings = device_policy_findings(config)
    if any(level == "error" for level, _ in findings):
        for level, message in findings:
            print(f"{args.config}: {level.upper()}: {message}", file=sys.stderr)
        print(f"{args.config}: refused: contradictory settings (above)", file=sys.stderr)
        return 2
    print(f"{args.config}: OK")
    print(
        f"  gateway   {'http' if config.gateway.plain_http else 'https'}://"
        f"{config.gateway.listen_host}:{config.gateway.listen_port}"
    )
    for up in config.upstreams.values():
        print(f"  upstream  {up.name}: {up.url}{'' if up.verify else '  (certificate NOT verified)'}")
    # what a client gets: without TLS there is no channel to bind and Basic is refused
    # (gateway.preauth), whatever [auth] says
    plain = config.gateway.plain_http
    methods = [f"{m} (refused: plain HTTP)" if plain and m == "basic" else m for m in config.auth.methods]
    ep = "off (plain HTTP: no TLS channel to bind)" if plain else config.auth.extended_protection
    print(f"  auth      {config.auth.authenticator}: {', '.join(methods)}, extended protection {ep}")
    print(f"  store     {config.store.url}  (key file {config.store.key_file})")
    if config.directory:
        print(f"  directory {', '.join(config.directory.urls)}  base {config.directory.base_dn}")
    for level, message in findings:
        print(f"{args.config}: {level.upper()}: {message}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("check-config", parents=[common], help="validate a configuration file and exit")
    c.set_defaults(func=_cmd_check_config)

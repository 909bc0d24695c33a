"""The one command line: ``ucgate serve|demo|check-config|...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load


def _cmd_serve(args: argparse.Namespace) -> int:
    from .app import run, serve, setup_logging

    config = load(args.config)
    setup_logging(args.log_level or config.log_level, config.log_format)
    _log_findings(config)
    run(lambda: serve(config, log_level=args.log_level))
    return 0


def _log_findings(config) -> None:
    import logging

    from .id.policy_check import device_policy_findings

    for level, message in device_policy_findings(config):
        logging.getLogger("ucgate.config").warning("%s: %s", config.path, message)


def _cmd_id_service(args: argparse.Namespace) -> int:
    from .app import run, serve_id_service, setup_logging

    config = load(args.config, role="id-service")
    setup_logging(args.log_level or config.log_level, config.log_format)
    run(lambda: serve_id_service(config))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load(args.config)
    from .app import build_node

    # Build everything (certificates, TLS contexts, key file, store) without listening: this
    # catches an unreadable key or a key file next to the database too.
    node = build_node(config)
    if node.ids is not None:
        node.ids.close()
    from .id.policy_check import device_policy_findings

    findings = device_policy_findings(config)
    if any(level == "error" for level, _ in findings):
        for level, message in findings:
            print(f"{args.config}: {level.upper()}: {message}", file=sys.stderr)
        print(f"{args.config}: refused: contradictory settings (above)", file=sys.stderr)
        return 2
    print(f"{args.config}: OK")
    print(f"  gateway   {'http' if config.gateway.plain_http else 'https'}://"
          f"{config.gateway.listen_host}:{config.gateway.listen_port}")
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .app import run, setup_logging
    from .lab.demo import run_demo

    setup_logging(args.log_level or "info")
    run(lambda: run_demo(Path(args.data_dir).expanduser(), args.host, args.port))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from .protocols.decode import (
        MAX_HEADER_SIZE,
        DecodeError,
        decode_header,
        render_text,
        to_json,
    )

    if args.token == ["-"]:
        value = sys.stdin.read(MAX_HEADER_SIZE + 1)
    else:
        value = " ".join(args.token)
    try:
        decoded = decode_header(value)
    except DecodeError as e:
        print(f"ucgate decode: {e.reason}: {e.message}", file=sys.stderr)
        return 1
    sys.stdout.write(to_json(decoded) + "\n" if args.json else render_text(decoded))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ucgate", description=__doc__)
    p.add_argument("--version", action="version", version=f"ucgate {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway from a configuration file")
    s.add_argument("-c", "--config", required=True, type=Path)
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_cmd_serve)

    i = sub.add_parser("id-service", help="run the id service's HTTP API (LAN side) and the account monitor")
    i.add_argument("-c", "--config", required=True, type=Path)
    i.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    i.set_defaults(func=_cmd_id_service)

    c = sub.add_parser("check-config", help="validate a configuration file and exit")
    c.add_argument("-c", "--config", required=True, type=Path)
    c.set_defaults(func=_cmd_check_config)

    d = sub.add_parser("demo", help="run the gateway in front of a simulated SfB/Exchange front end")
    d.add_argument("--data-dir", default="~/.local/share/ucgate/demo")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8443)
    d.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    d.set_defaults(func=_cmd_demo)

    dc = sub.add_parser(
        "decode", help="decode an NTLM/Negotiate/Kerberos/Basic/Bearer header value (no secrets shown)",
        description="Decode an Authorization or WWW-Authenticate value ('NTLM TlRMTVNT...', "
                    "'Negotiate YII...', 'Basic ...', 'Bearer ...') or a bare base64 token into its "
                    "fields. Passwords, responses, MICs, keys and cipher texts are never shown.")
    dc.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    dc.add_argument("token", nargs="+", metavar="TOKEN",
                    help="the header value (quoted, or as separate words), or - to read it from stdin")
    dc.set_defaults(func=_cmd_decode)
    from .init import register as register_init

    register_init(sub)
    from .id.admin_cli import register

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=Path("/etc/ucgate/ucgate.toml"),
                        help="configuration file (default /etc/ucgate/ucgate.toml)")
    register(sub, common)
    from .id.devices_cli import register as register_devices

    register_devices(sub, common)
    from .id.kerberos_check import register as register_kerberos

    register_kerberos(sub, common)
    from .web.tokens import register as register_api_tokens

    register_api_tokens(sub, common)
    from .id.vault_cli import register as register_vault

    register_vault(sub, common)
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


if __name__ == "__main__":
    sys.exit(main())

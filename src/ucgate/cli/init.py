"""``ucgate init``: write the starter configuration (``ucgate.init.starter_config``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..init import InitError, starter_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "init",
        help="write a commented starter configuration",
        description="Write a commented starter configuration for one published name and one "
        "front-end pool, e.g. ucgate init --published-name lyncext.contoso.com "
        "--front-end https://fepool.contoso.local:4443 -o ucgate.toml",
    )
    p.add_argument("--published-name", required=True, help="the external name clients use")
    p.add_argument(
        "--front-end",
        required=True,
        metavar="URL",
        help="the front-end pool's external web services, https://host:port",
    )
    p.add_argument("--exchange", metavar="URL", help="Exchange for ActiveSync, https://host (optional)")
    p.add_argument(
        "--etc-dir",
        type=Path,
        default=Path("/etc/ucgate"),
        help="where the certificates and keys go (default /etc/ucgate)",
    )
    p.add_argument(
        "--data-dir", type=Path, default=Path("/var/lib/ucgate"), help="the data directory (default /var/lib/ucgate)"
    )
    p.add_argument("-o", "--output", type=Path, help="the file to write (default: standard output)")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        text = starter_config(
            published_name=args.published_name,
            front_end=args.front_end,
            exchange=args.exchange,
            etc_dir=args.etc_dir,
            data_dir=args.data_dir,
        )
    except InitError as e:
        print(f"ucgate init: {e}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
        return 0
    if args.output.exists() and not args.force:
        print(f"ucgate init: {args.output} exists (--force to overwrite)", file=sys.stderr)
        return 1
    args.output.write_text(text)
    print(
        f"wrote {args.output}; next: put the certificate in {args.etc_dir}/gateway.crt and its key "
        f"in {args.etc_dir}/gateway.key, then: ucgate check-config -c {args.output}",
        file=sys.stderr,
    )
    return 0

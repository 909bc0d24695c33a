"""``ucgate kerberos check``: the checks are ``ucgate.id.kerberos_check``'s; the S4U round trip
runs on the gateway's KCD backend (``gateway.kcd``), which is why it is plugged in here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config import load
from ..id.kerberos_check import (
    CheckSettings,
    S4uProbe,
    default_resolver,
    directory_search,
    render_html,
    render_text,
    run_checks,
    settings_from_config,
)
from ..id.kerberos_check import __doc__ as check_doc


def kcd_probe() -> S4uProbe:
    """The ``s4u`` check on the gateway's KCD backend, one thread."""
    # lazy: ucgate.app and gateway/ take ~0.1 s to import; only this command needs them
    from ..gateway.backend import BackendError
    from ..gateway.kcd import KcdBackend

    def open_kcd(s: CheckSettings, account: str) -> KcdBackend:
        return KcdBackend(s.keytab, account, s.realm, "unused", krb5_conf=s.krb5_conf, timeout=s.kcd_timeout, threads=1)

    return S4uProbe(open=open_kcd, refused=BackendError)


def _cmd_check(args: Any) -> int:
    config = load(args.config)
    if config.kerberos is None:
        print(
            f"ucgate kerberos check: {args.config} has no [kerberos] section: add one with realm, "
            "keytab, account and front_end_spn (README, configuration reference), or leave "
            "Kerberos off",
            file=sys.stderr,
        )
        return 2
    settings = settings_from_config(config, user=args.user)
    if args.front_end_spn:
        settings.front_end_spns = list(args.front_end_spn)
    if config.directory is None:
        print("ucgate kerberos check: needs [directory] (LDAP) to read the accounts", file=sys.stderr)
        return 2
    overrides = {}
    for item in args.resolve or []:
        name, _, addr = item.partition(":")
        overrides[name.lower()] = [addr]

    def resolver(name: str) -> list[str]:
        return overrides.get(name.lower()) or default_resolver(name)

    # lazy: ucgate.app and gateway/ take ~0.1 s to import; only this command needs them
    from ..app import open_directory

    directory = open_directory(config)
    try:
        report = run_checks(settings, directory_search(directory), resolver=resolver, s4u_probe=kcd_probe())
    finally:
        directory.close()
    text = render_text(report)
    sys.stdout.write(text)
    if args.html:
        Path(args.html).write_text(render_html(report))
        print(f"HTML report: {args.html}")
    return 0 if report.ok else 1


def register(sub: Any, common: Any) -> None:
    """``ucgate kerberos check``."""
    k = sub.add_parser("kerberos", help="Kerberos: check the pool's service account, SPN, keytab, delegation")
    ksub = k.add_subparsers(dest="kerberos_command", metavar="COMMAND", required=True)
    c = ksub.add_parser(
        "check",
        parents=[common],
        help="verify SPN, keytab (kvno, enctypes), name, delegation and an S4U round "
        "trip; writes a text summary and an HTML report",
        description=check_doc.split("\n\n")[0],
    )
    c.add_argument("--html", type=Path, help="write the HTML report here")
    c.add_argument("--user", help="test user for the S4U round trip (default: [kerberos] check_user)")
    c.add_argument(
        "--front-end-spn",
        action="append",
        help="front-end SPN to check (repeatable; default: [kerberos] front_end_spn)",
    )
    c.add_argument(
        "--resolve",
        action="append",
        metavar="NAME:ADDRESS",
        help="resolve NAME to ADDRESS instead of asking DNS (as curl --resolve)",
    )
    c.set_defaults(func=_cmd_check)

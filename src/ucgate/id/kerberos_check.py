"""``ucgate kerberos check``: is the pool's Kerberos setup right? (like Test-CsKerberosAccountAssignment)

Each check reads AD (LDAP, as the directory service account: every attribute used here is
readable by authenticated users), the keytab, krb5.conf and name resolution, and ends in
``pass``, ``warn`` or ``fail`` with a fix suggestion on anything but a pass:

``spn-unique``        HTTP/<published name> exists exactly once in AD, on the configured account
                      (a duplicate SPN makes the KDC refuse or pick either account: KRB_AP_ERR_MODIFIED)
``keytab``            the keytab is readable and holds the SPN and the account principal
``keytab-kvno``       the keytab's key version equals the account's msDS-KeyVersionNumber
                      (a password reset after exporting the keytab makes every ticket undecryptable)
``keytab-enctypes``   the keytab holds keys of the enctypes the account supports
                      (msDS-SupportedEncryptionTypes; AES recommended)
``published-name``    the published name resolves (clients build the SPN from it)
``frontend-spn``      each front-end SPN exists exactly once in AD
``delegation``        the account is trusted for constrained delegation with protocol transition
                      (TRUSTED_TO_AUTH_FOR_DELEGATION) to every front-end SPN (msDS-AllowedToDelegateTo),
                      and not for unconstrained delegation
``krb5-conf``         krb5.conf asks for forwardable tickets (S4U2Proxy needs them)
``s4u``               a test S4U2Self + S4U2Proxy round trip for ``check_user`` to each front-end SPN

The report is HTML (``render_html``) and a text summary (``render_text``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import html
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from ..protocols.keytab import ENCTYPES, SUPPORTED_ETYPE_BITS, split_principal
from ..store.keytab import account_from_keytab, read_keytab

UF_TRUSTED_FOR_DELEGATION = 0x80000
UF_TRUSTED_TO_AUTH_FOR_DELEGATION = 0x1000000
UF_ACCOUNTDISABLE = 0x2

# search(filter, attributes) -> [(dn, {attr: [str, ...]})]
Search = Callable[[str, list[str]], list[tuple[str, dict[str, list[str]]]]]
Resolver = Callable[[str], list[str]]


class S4uRefusal(Protocol):
    """What an :class:`S4uProbe`'s ``refused`` exceptions carry."""

    reason: str
    detail: str


@dataclass(frozen=True)
class S4uProbe:
    """How the ``s4u`` check reaches the KDC: the gateway's KCD backend, which lives above this
    layer (``ucgate.cli.kerberos.kcd_probe`` builds it). ``open(settings, account)`` returns an
    object with ``async token_for(user, spn) -> bytes`` and ``close()``; a refusal raises
    ``refused`` (with ``reason`` and ``detail``)."""

    open: Callable[[CheckSettings, str], Any]
    refused: type[Exception]


@dataclass
class CheckResult:
    name: str
    status: str  # "pass" | "warn" | "fail" | "skip"
    summary: str
    detail: str = ""
    fix: str = ""
    seconds: float = 0.0


@dataclass
class CheckSettings:
    realm: str
    keytab: Path
    service_principal: str  # HTTP/gw.contoso.com
    account: str  # sAMAccountName of the pool's service account
    front_end_spns: list[str] = field(default_factory=list)
    published_name: str | None = None
    krb5_conf: Path | None = None
    check_user: str | None = None
    kcd_timeout: float = 10.0


@dataclass
class Report:
    settings: CheckSettings
    results: list[CheckResult]
    started: _dt.datetime
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    def result(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.name == name)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == "fail"]


# --- LDAP adapters --------------------------------------------------------------------------


def _strs(values: Iterable[Any]) -> list[str]:
    out = []
    for v in values:
        out.append(v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v))
    return out


def ldap3_search(conn: Any, base_dn: str) -> Search:
    """A Search over a bound ldap3 connection (subtree under ``base_dn``)."""
    import ldap3

    def search(filt: str, attrs: list[str]) -> list[tuple[str, dict[str, list[str]]]]:
        conn.search(base_dn, filt, ldap3.SUBTREE, attributes=attrs)
        out = []
        for e in conn.response or []:
            if e.get("type") != "searchResEntry":
                continue
            raw = e.get("raw_attributes", {})
            out.append((e["dn"], {k: _strs(v) for k, v in raw.items()}))
        return out

    return search


def directory_search(directory: Any) -> Search:
    """A Search through ``ucgate.id.directory.Directory`` (its service-account connection)."""

    def search(filt: str, attrs: list[str]):
        return directory._with_service(lambda conn: ldap3_search(conn, directory.base_dn)(filt, attrs))

    return search


def escape(value: str) -> str:
    return "".join(f"\\{ord(c):02x}" if c in "*()\\\0" else c for c in value)


def default_resolver(name: str) -> list[str]:
    # an address family's sockaddr starts with the address text (IPv4 and IPv6 alike)
    return sorted({str(ai[4][0]) for ai in socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)})


# --- the checks -----------------------------------------------------------------------------


def _spn_holders(search: Search, spn: str) -> list[tuple[str, dict[str, list[str]]]]:
    return search(
        f"(servicePrincipalName={escape(spn)})",
        [
            "sAMAccountName",
            "msDS-KeyVersionNumber",
            "msDS-SupportedEncryptionTypes",
            "userAccountControl",
            "msDS-AllowedToDelegateTo",
        ],
    )


def _first(attrs: dict[str, list[str]], key: str) -> str | None:
    for k, v in attrs.items():
        if k.lower() == key.lower() and v:
            return v[0]
    return None


def _all(attrs: dict[str, list[str]], key: str) -> list[str]:
    for k, v in attrs.items():
        if k.lower() == key.lower():
            return v
    return []


def run_checks(
    settings: CheckSettings, search: Search, *, resolver: Resolver = default_resolver, s4u_probe: S4uProbe | None = None
) -> Report:
    """Every check in order. Without ``s4u_probe`` the S4U round trip is skipped (said so)."""
    started = _dt.datetime.now(_dt.UTC)
    t0 = time.monotonic()
    s = settings
    results: list[CheckResult] = []
    spn = split_principal(s.service_principal)[0]
    acct = s.account.split("@")[0]

    def timed(fn: Callable[[], CheckResult]) -> CheckResult:
        t = time.monotonic()
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a failure, named
            r = CheckResult(
                fn.__name__.lstrip("_").replace("_", "-"),
                "fail",
                f"the check could not run: {type(e).__name__}",
                str(e),
                "see the detail; is the directory reachable with the configured account?",
            )
        r.seconds = time.monotonic() - t
        results.append(r)
        return r

    account_attrs: dict[str, list[str]] = {}

    def _account() -> dict[str, list[str]]:
        if not account_attrs:
            found = search(
                f"(sAMAccountName={escape(acct)})",
                [
                    "sAMAccountName",
                    "msDS-KeyVersionNumber",
                    "msDS-SupportedEncryptionTypes",
                    "userAccountControl",
                    "msDS-AllowedToDelegateTo",
                    "servicePrincipalName",
                ],
            )
            if found:
                account_attrs.update(found[0][1])
                account_attrs["__dn__"] = [found[0][0]]
        return account_attrs

    # 1. the SPN: exactly once, on the account
    def spn_unique() -> CheckResult:
        holders = _spn_holders(search, spn)
        names = [(_first(a, "sAMAccountName") or dn) for dn, a in holders]
        if not holders:
            return CheckResult(
                "spn-unique",
                "fail",
                f"no account in AD has the SPN {spn}",
                "clients cannot get a ticket for the gateway (KDC_ERR_S_PRINCIPAL_UNKNOWN)",
                f"setspn -S {spn} {acct}   (Samba: samba-tool spn add {spn} {acct})",
            )
        if len(holders) > 1:
            others = [n for n in names if n.lower() != acct.lower()]
            return CheckResult(
                "spn-unique",
                "fail",
                f"duplicate SPN {spn}: on {len(holders)} accounts ({', '.join(names)})",
                "the KDC refuses (or picks one of) duplicate SPNs: tickets fail to decrypt",
                "keep it only on "
                + acct
                + ": "
                + "; ".join(f"setspn -D {spn} {o}   (Samba: samba-tool spn delete {spn} {o})" for o in others)
                + "   (find duplicates: setspn -X)",
            )
        if names[0].lower() != acct.lower():
            return CheckResult(
                "spn-unique",
                "fail",
                f"{spn} is on {names[0]}, not on {acct}",
                "the keytab holds the keys of the wrong account",
                f"setspn -D {spn} {names[0]}; setspn -S {spn} {acct} "
                "(or set [kerberos] account to the account that holds it)",
            )
        return CheckResult("spn-unique", "pass", f"{spn} is registered once, on {acct}")

    timed(spn_unique)

    # 2. the keytab
    entries: list = []

    def keytab() -> CheckResult:
        try:
            entries.extend(read_keytab(s.keytab))
        except (OSError, ValueError) as e:
            return CheckResult(
                "keytab",
                "fail",
                f"cannot read the keytab {s.keytab}",
                str(e),
                "export it again (ktpass /princ ... /out, or samba-tool domain "
                "exportkeytab) and make it readable by ucgate only (chmod 600)",
            )
        princ = f"{spn}@{s.realm}".lower()
        have = {e.principal.lower() for e in entries}
        missing = [p for p in (princ, f"{acct}@{s.realm}".lower()) if p not in have]
        if princ in missing:
            return CheckResult(
                "keytab",
                "fail",
                f"the keytab has no key for {spn}@{s.realm}",
                "principals in it: " + ", ".join(sorted(have)),
                f"ktpass /princ {spn}@{s.realm} /mapuser {acct} /crypto AES256-SHA1 "
                f"/ptype KRB5_NT_PRINCIPAL /out gw.keytab (it resets the password: "
                "redistribute to every gateway of the pool)",
            )
        if missing:
            return CheckResult(
                "keytab",
                "warn",
                f"the keytab has no entry for the account {acct}@{s.realm}",
                "kcd gets its TGT as the account: set [kerberos] account and add its key",
                f"ktutil: add the account principal's keys, or samba-tool domain exportkeytab --principal={acct}",
            )
        return CheckResult("keytab", "pass", f"{len(entries)} keys for {', '.join(sorted(have))}")

    timed(keytab)

    # 3. kvno
    def keytab_kvno() -> CheckResult:
        a = _account()
        if not a:
            return CheckResult(
                "keytab-kvno",
                "fail",
                f"no account {acct} in AD",
                "",
                "create the service account or fix [kerberos] account",
            )
        ad_kvno = _first(a, "msDS-KeyVersionNumber")
        mine = [e for e in entries if e.principal.lower() == f"{spn}@{s.realm}".lower()]
        if not mine:
            return CheckResult("keytab-kvno", "skip", "no SPN key in the keytab to compare")
        kvnos = sorted({e.kvno for e in mine})
        if ad_kvno is None:
            return CheckResult(
                "keytab-kvno",
                "warn",
                "AD does not show msDS-KeyVersionNumber",
                f"keytab kvno {kvnos}",
                "read it as a domain admin to compare",
            )
        if int(ad_kvno) not in kvnos:
            return CheckResult(
                "keytab-kvno",
                "fail",
                f"stale keytab: kvno {', '.join(map(str, kvnos))} in the keytab, "
                f"{ad_kvno} in AD (the password of {acct} changed after the export)",
                "tickets are encrypted with the new key: every Kerberos sign-in fails "
                "(KRB_AP_ERR_BAD_INTEGRITY / BADKEYVER), and kcd cannot get a TGT",
                f"export the keytab again (ktpass ... /kvno {ad_kvno}, or samba-tool domain "
                f"exportkeytab --principal={acct}) and copy it to every gateway of the pool",
            )
        return CheckResult("keytab-kvno", "pass", f"kvno {ad_kvno} in AD and in the keytab")

    timed(keytab_kvno)

    # 4. enctypes
    def keytab_enctypes() -> CheckResult:
        a = _account()
        have = {e.enctype for e in entries if e.principal.lower() == f"{spn}@{s.realm}".lower()}
        if not have:
            return CheckResult("keytab-enctypes", "skip", "no SPN key in the keytab")
        names = ", ".join(ENCTYPES.get(x, str(x)) for x in sorted(have))
        raw = _first(a, "msDS-SupportedEncryptionTypes") if a else None
        if raw is None:
            # unset: AD uses the domain default (RC4 on older DCs); recommend AES explicitly
            ok = 23 in have
            return CheckResult(
                "keytab-enctypes",
                "warn" if ok else "fail",
                f"msDS-SupportedEncryptionTypes is not set on {acct}; keytab: {names}",
                "the KDC then uses the domain default (often RC4 only)",
                f"Set-ADUser {acct} -KerberosEncryptionType AES128,AES256 "
                "(msDS-SupportedEncryptionTypes = 24) and export the keytab with AES keys",
            )
        bits = int(raw)
        supported = {et for bit, et in SUPPORTED_ETYPE_BITS.items() if bits & bit}
        both = supported & have
        sup_names = ", ".join(ENCTYPES.get(x, str(x)) for x in sorted(supported)) or "none"
        if not both:
            return CheckResult(
                "keytab-enctypes",
                "fail",
                f"no common enctype: AD allows {sup_names}, the keytab has {names}",
                "the KDC encrypts tickets with an enctype the gateway has no key for",
                "export the keytab with the account's enctypes (ktpass /crypto AES256-SHA1)",
            )
        if not both & {17, 18}:
            return CheckResult(
                "keytab-enctypes",
                "warn",
                f"only RC4 in common ({sup_names} / {names})",
                "",
                f"Set-ADUser {acct} -KerberosEncryptionType AES128,AES256 and re-export",
            )
        return CheckResult("keytab-enctypes", "pass", f"AD allows {sup_names}; the keytab has {names}")

    timed(keytab_enctypes)

    # 5. published name
    def published_name() -> CheckResult:
        host = spn.split("/", 1)[1].split(":")[0] if "/" in spn else spn
        name = s.published_name or host
        notes = []
        if name.lower() != host.lower():
            notes.append(f"the SPN's host {host} differs from the published name {name}: clients ask for HTTP/{name}")
        try:
            addrs = resolver(name)
        except OSError as e:
            return CheckResult(
                "published-name",
                "fail",
                f"{name} does not resolve",
                str(e),
                f"add a DNS A record for {name} (the load balancer's address)",
            )
        if not addrs:
            return CheckResult(
                "published-name", "fail", f"{name} does not resolve", "", f"add a DNS A record for {name}"
            )
        if notes:
            return CheckResult(
                "published-name",
                "fail",
                notes[0],
                f"{name} -> {', '.join(addrs)}",
                f"register HTTP/{name} on {acct} (and put it in the keytab)",
            )
        return CheckResult("published-name", "pass", f"{name} resolves to {', '.join(addrs)}")

    timed(published_name)

    # 6. front-end SPNs exist once
    def frontend_spn() -> CheckResult:
        if not s.front_end_spns:
            return CheckResult("frontend-spn", "skip", "no front-end SPN configured ([kerberos] front_end_spn)")
        problems, fixes, good = [], [], []
        for fe in s.front_end_spns:
            fe_spn = split_principal(fe)[0]
            holders = _spn_holders(search, fe_spn)
            names = [(_first(a, "sAMAccountName") or dn) for dn, a in holders]
            if not holders:
                problems.append(f"{fe_spn}: on no account")
                fixes.append(f"setspn -S {fe_spn} <front-end pool account>")
            elif len(holders) > 1:
                problems.append(f"{fe_spn}: duplicate, on {', '.join(names)}")
                fixes.append(f"setspn -D {fe_spn} <all but the front end's account> (setspn -X)")
            else:
                good.append(f"{fe_spn} on {names[0]}")
        if problems:
            return CheckResult("frontend-spn", "fail", "; ".join(problems), "", "; ".join(fixes))
        return CheckResult("frontend-spn", "pass", "; ".join(good))

    timed(frontend_spn)

    # 7. delegation
    def delegation() -> CheckResult:
        a = _account()
        if not a:
            return CheckResult("delegation", "fail", f"no account {acct} in AD", "", "")
        uac = int(_first(a, "userAccountControl") or 0)
        allowed = {x.lower() for x in _all(a, "msDS-AllowedToDelegateTo")}
        problems, fixes = [], []
        if uac & UF_ACCOUNTDISABLE:
            problems.append(f"{acct} is disabled")
            fixes.append(f"Enable-ADAccount {acct}")
        if not uac & UF_TRUSTED_TO_AUTH_FOR_DELEGATION:
            problems.append(
                "no protocol transition (TRUSTED_TO_AUTH_FOR_DELEGATION is not set): "
                "S4U2Self gives a non-forwardable ticket and S4U2Proxy fails"
            )
            fixes.append(
                f"Set-ADAccountControl {acct} -TrustedToAuthForDelegation $true "
                f"(ADUC: Delegation > 'Use any authentication protocol'; "
                f"Samba: samba-tool delegation for-any-protocol {acct} on)"
            )
        for fe in s.front_end_spns:
            fe_spn = split_principal(fe)[0]
            if fe_spn.lower() not in allowed:
                problems.append(f"{fe_spn} is not in msDS-AllowedToDelegateTo")
                fixes.append(
                    f"Set-ADUser {acct} -Add @{{'msDS-AllowedToDelegateTo'='{fe_spn}'}} "
                    f"(Samba: samba-tool delegation add-service {acct} {fe_spn})"
                )
        warn = ""
        if uac & UF_TRUSTED_FOR_DELEGATION:
            warn = f"{acct} is trusted for UNCONSTRAINED delegation: remove it (constrained is enough)"
        if problems:
            return CheckResult("delegation", "fail", "; ".join(problems), warn, "; ".join(fixes))
        if warn:
            return CheckResult(
                "delegation", "warn", warn, "", f"Set-ADAccountControl {acct} -TrustedForDelegation $false"
            )
        if not s.front_end_spns:
            return CheckResult("delegation", "skip", "protocol transition on; no front-end SPN configured")
        return CheckResult(
            "delegation", "pass", f"constrained delegation with protocol transition to {', '.join(sorted(allowed))}"
        )

    timed(delegation)

    # 8. krb5.conf
    def krb5_conf() -> CheckResult:
        p = s.krb5_conf or Path("/etc/krb5.conf")
        try:
            text = p.read_text()
        except OSError as e:
            return CheckResult(
                "krb5-conf",
                "fail",
                f"cannot read {p}",
                str(e),
                "set [kerberos] krb5_conf to a krb5.conf naming the realm's KDCs",
            )
        settings_ = {
            m.group(1).lower(): m.group(2).strip().lower()
            for m in re.finditer(r"^\s*([A-Za-z_]+)\s*=\s*([^\n{]+)$", text, re.MULTILINE)
        }
        problems = []
        if settings_.get("forwardable") not in ("true", "yes", "1"):
            problems.append("forwardable = true is missing (S4U2Proxy needs a forwardable evidence ticket)")
        if settings_.get("dns_canonicalize_hostname") not in ("false", "no", "0", "fallback"):
            problems.append("dns_canonicalize_hostname is not false (SPNs may be rewritten by DNS)")
        if problems:
            return CheckResult(
                "krb5-conf",
                "fail" if "forwardable" in problems[0] else "warn",
                "; ".join(problems),
                str(p),
                "[libdefaults] forwardable = true, dns_canonicalize_hostname = false, "
                "rdns = false, kdc_timeout = 3000, max_retries = 2",
            )
        return CheckResult("krb5-conf", "pass", f"{p}: forwardable, no DNS canonicalization")

    timed(krb5_conf)

    # 9. the S4U round trip
    def s4u() -> CheckResult:
        if not s.front_end_spns:
            return CheckResult("s4u", "skip", "no front-end SPN configured")
        user = s.check_user
        if not user:
            return CheckResult("s4u", "skip", "no test user ([kerberos] check_user or --user)")
        if s4u_probe is None:
            return CheckResult("s4u", "skip", "no KCD backend to run it with")
        kcd = s4u_probe.open(s, f"{acct}@{s.realm}")
        done: list[str] = []
        failed: list[tuple[str, S4uRefusal]] = []
        try:
            for fe in s.front_end_spns:
                t = time.monotonic()
                try:
                    tok = asyncio.run(kcd.token_for(user, fe))
                    done.append(f"{fe}: {len(tok)}-byte token in {1000 * (time.monotonic() - t):.0f} ms")
                except s4u_probe.refused as e:
                    failed.append((fe, cast(S4uRefusal, e)))  # S4uProbe: refused has both
        finally:
            kcd.close()
        if failed:
            fe, err = failed[0]
            fix = {
                "kcd-keytab-rejected": "the keytab is stale: export it again (see keytab-kvno)",
                "kcd-kdc-unreachable": "check krb5.conf [realms] kdc = ... and the firewall (TCP/UDP 88)",
                "kcd-not-trusted-for-delegation": "see the delegation check",
                "kcd-user-unknown": f"{user} is not a user of {s.realm}: pass an existing test user",
                "kcd-target-unknown": "see the frontend-spn check",
            }.get(err.reason, "see the detail")
            return CheckResult("s4u", "fail", f"S4U for {user} to {fe} failed: {err.reason}", err.detail, fix)
        return CheckResult("s4u", "pass", f"S4U2Self + S4U2Proxy for {user}: " + "; ".join(done))

    timed(s4u)
    return Report(settings, results, started, time.monotonic() - t0)


# --- rendering ------------------------------------------------------------------------------

_ICON = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def render_text(report: Report) -> str:
    s = report.settings
    lines = [f"Kerberos check for {s.service_principal}@{s.realm} (account {s.account}, keytab {s.keytab})"]
    for r in report.results:
        lines.append(f"  {_ICON[r.status]}  {r.name:16} {r.summary}")
        if r.status in ("fail", "warn") and r.fix:
            lines.append(f"        fix: {r.fix}")
    n_fail = len(report.failed)
    lines.append(
        f"result: {'OK' if report.ok else f'{n_fail} check(s) failed: ' + ', '.join(report.failed)}"
        f" ({report.seconds:.1f} s)"
    )
    return "\n".join(lines) + "\n"


def render_html(report: Report) -> str:
    e = html.escape
    s = report.settings
    colour = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#57606a"}
    rows = []
    for r in report.results:
        rows.append(
            f'<tr class="{r.status}" id="check-{e(r.name)}"><td style="color:{colour[r.status]};font-weight:bold">'
            f"{_ICON[r.status]}</td><td><code>{e(r.name)}</code></td><td>{e(r.summary)}"
            + (f'<div class="detail">{e(r.detail)}</div>' if r.detail else "")
            + f"</td><td>{e(r.fix) if r.status in ('fail', 'warn') else ''}</td>"
            f"<td>{r.seconds * 1000:.0f} ms</td></tr>"
        )
    verdict = "All checks passed" if report.ok else f"{len(report.failed)} check(s) failed: {', '.join(report.failed)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ucgate Kerberos check: {e(s.service_principal)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #d0d7de;padding:.4em .6em;vertical-align:top;text-align:left}}
.detail{{color:#57606a;font-size:90%}} .verdict{{font-size:120%;font-weight:bold}}</style></head>
<body><h1>Kerberos account check</h1>
<p>Service principal <code>{e(s.service_principal)}@{e(s.realm)}</code>, account <code>{e(s.account)}</code>,
keytab <code>{e(str(s.keytab))}</code>, front-end SPNs <code>{e(", ".join(s.front_end_spns) or "-")}</code>,
run {e(report.started.isoformat(timespec="seconds"))} in {report.seconds:.1f} s.</p>
<p class="verdict" style="color:{colour["pass" if report.ok else "fail"]}" id="verdict">{e(verdict)}</p>
<table><tr><th>Result</th><th>Check</th><th>Finding</th><th>Fix</th><th>Time</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""


def settings_from_config(config: Any, *, user: str | None = None) -> CheckSettings:
    kc = config.kerberos
    if kc is None:
        raise ValueError("no [kerberos] section in the configuration")
    account = kc.account
    if not account:
        try:
            account = account_from_keytab(kc.keytab, kc.realm)
        except (ValueError, OSError):
            account = "?"
    return CheckSettings(
        realm=kc.realm,
        keytab=kc.keytab,
        service_principal=kc.service_principal,
        account=split_principal(account)[0],
        front_end_spns=sorted({v for _, v in kc.front_end_spns}),
        published_name=kc.published_name,
        krb5_conf=kc.krb5_conf,
        check_user=user or kc.check_user,
        kcd_timeout=kc.kcd_timeout,
    )

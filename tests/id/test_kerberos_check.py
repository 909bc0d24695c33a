"""``ucgate kerberos check`` without a lab: an AD answer and a KCD backend faked, the keytab real
(protocols.keytab). The Samba + MIT lab runs the same checks against a real KDC
(tests/gateway/test_kerberos.py)."""

from __future__ import annotations

import pytest

from ucgate.id.kerberos_check import (
    UF_TRUSTED_TO_AUTH_FOR_DELEGATION,
    CheckSettings,
    S4uProbe,
    render_text,
    run_checks,
)
from ucgate.protocols.keytab import KeytabEntry
from ucgate.store.keytab import write_keytab

REALM = "CONTOSO.COM"
SPN, FE_SPN, ACCOUNT = "HTTP/gw.contoso.com", "HTTP/fe.contoso.local", "svc-gw"


class Refused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class FakeKcd:
    opened: list[tuple[str, str]] = []

    def __init__(self, settings: CheckSettings, account: str, refuse: str | None) -> None:
        self.opened.append((settings.realm, account))
        self.refuse, self.closed = refuse, False

    async def token_for(self, user: str, spn: str) -> bytes:
        if self.refuse:
            raise Refused(self.refuse, f"for {user} to {spn}")
        return b"t" * 1200

    def close(self) -> None:
        self.closed = True


def _search(filt: str, attrs: list[str]):
    account = {
        "sAMAccountName": [ACCOUNT],
        "msDS-KeyVersionNumber": ["3"],
        "msDS-SupportedEncryptionTypes": ["24"],
        "userAccountControl": [str(0x200 | UF_TRUSTED_TO_AUTH_FOR_DELEGATION)],
        "msDS-AllowedToDelegateTo": [FE_SPN],
    }
    if filt in (f"(servicePrincipalName={SPN})", f"(sAMAccountName={ACCOUNT})"):
        return [(f"CN={ACCOUNT},DC=contoso,DC=com", account)]
    if filt == f"(servicePrincipalName={FE_SPN})":
        return [("CN=fe,DC=contoso,DC=com", {"sAMAccountName": ["fe$"]})]
    return []


@pytest.fixture
def settings(tmp_path):
    keytab = tmp_path / "gw.keytab"
    write_keytab(
        keytab,
        [
            KeytabEntry(tuple(SPN.split("/")), REALM, 1, 0, 3, 18, b"k" * 32),
            KeytabEntry((ACCOUNT,), REALM, 1, 0, 3, 18, b"a" * 32),
        ],
    )
    krb5 = tmp_path / "krb5.conf"
    krb5.write_text("[libdefaults]\n forwardable = true\n dns_canonicalize_hostname = false\n")
    return CheckSettings(
        realm=REALM,
        keytab=keytab,
        service_principal=SPN,
        account=ACCOUNT,
        front_end_spns=[FE_SPN],
        krb5_conf=krb5,
        check_user="alice",
    )


def _run(settings, probe):
    return run_checks(settings, _search, resolver=lambda name: ["192.0.2.10"], s4u_probe=probe)


def test_every_check_passes_and_the_s4u_round_trip_runs_on_the_probe(settings):
    kcds: list[FakeKcd] = []

    def open_kcd(s: CheckSettings, account: str) -> FakeKcd:
        kcds.append(FakeKcd(s, account, None))
        return kcds[-1]

    probe = S4uProbe(open=open_kcd, refused=Refused)
    rep = _run(settings, probe)
    assert rep.ok and all(r.status == "pass" for r in rep.results), render_text(rep)
    assert [r.name for r in rep.results][-1] == "s4u"
    assert "1200-byte token" in rep.result("s4u").summary
    assert [k.closed for k in kcds] == [True] and FakeKcd.opened[-1] == (REALM, f"{ACCOUNT}@{REALM}")


def test_a_refusal_is_a_failure_with_its_reason_and_fix(settings):
    probe = S4uProbe(open=lambda s, account: FakeKcd(s, account, "kcd-keytab-rejected"), refused=Refused)
    rep = _run(settings, probe)
    assert rep.failed == ["s4u"], render_text(rep)
    r = rep.result("s4u")
    assert "kcd-keytab-rejected" in r.summary and "stale" in r.fix and FE_SPN in r.detail


def test_without_a_probe_the_round_trip_is_skipped_not_failed(settings):
    rep = _run(settings, None)
    assert rep.ok and rep.result("s4u").status == "skip", render_text(rep)

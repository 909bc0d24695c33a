"""Directory connector: pure name parsing / escaping, and integration against the
Samba AD lab (fixture ``samba_lab`` from tests/lab/fixtures.py)."""

from __future__ import annotations

import datetime as dt
import re
import socket
import statistics
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.id.directory import (
    MAX_NAME_LENGTH,
    AccountState,
    Directory,
    DirectoryError,
    NameKind,
    NameQuery,
    escape_filter_value,
    filetime_to_datetime,
    normalize_dn,
    parse_name,
    state_from_attributes,
    user_filters,
)

UTC = dt.UTC


# =========================================================================== pure


class TestParseName:
    @pytest.mark.parametrize(
        "name, kind, value, domain",
        [
            ("alice", NameKind.SAM, "alice", None),
            ("  alice ", NameKind.SAM, "alice", None),
            ("John Smith", NameKind.SAM, "John Smith", None),
            ("LAB\\alice", NameKind.SAM, "alice", "LAB"),
            ("lab.ucgate.test\\alice", NameKind.SAM, "alice", "lab.ucgate.test"),
            ("alice@lab.ucgate.test", NameKind.UPN, "alice@lab.ucgate.test", None),
            ("sip:alice@lab.ucgate.test", NameKind.SIP, "alice@lab.ucgate.test", None),
            ("SIP:Alice@Lab.ucgate.test", NameKind.SIP, "Alice@Lab.ucgate.test", None),
            ("jörg@lab.ucgate.test", NameKind.UPN, "jörg@lab.ucgate.test", None),
            ("x)(|(a=*)@lab.ucgate.test", NameKind.UPN, "x)(|(a=*)@lab.ucgate.test", None),
        ],
    )
    def test_forms(self, name, kind, value, domain):
        assert parse_name(name) == NameQuery(kind, value, domain)

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "   ",
            None,
            42,
            b"alice",
            "ali\x00ce",
            "alice\x00",
            "\x00",
            "al\nice",
            "al\tice",
            "ali\rce",
            "al\x7fice",
            "al\u2028ice",
            "al\ud800ice",
            "*",
            "a*",
            "alice)(objectClass=*",
            "\\",
            "a\\",
            "\\a",
            "A\\b\\c",
            "LAB\\*",
            "LAB\\a@b",
            "a@",
            "@b",
            "a@b@c",
            "sip:",
            "sip:alice",
            "sip:@x",
            "sip:a@",
            "sip:a@b@c",
            "sip:a@b;transport=tls",
            "sip:a@b?x=y",
            "alice.",
            "a,b",
            "a=b",
            "a+b",
            "x" * (MAX_NAME_LENGTH + 1),
            "a" * 10_000 + "@x",
        ],
    )
    def test_rejected(self, name):
        with pytest.raises(DirectoryError) as ei:
            parse_name(name)
        assert ei.value.reason == "invalid-name"

    def test_length_limit_is_inclusive(self):
        name = "u" * (MAX_NAME_LENGTH - len("@x.test")) + "@x.test"
        assert len(name) == MAX_NAME_LENGTH
        assert parse_name(name).kind is NameKind.UPN


class TestEscaping:
    def test_rfc4515_specials(self):
        assert escape_filter_value("a*b(c)d\\e\x00f") == r"a\2ab\28c\29d\5ce\00f"

    def test_plain_and_unicode_untouched(self):
        assert escape_filter_value("alice.o'neil-ü") == "alice.o'neil-ü"

    def test_bytes_fully_escaped(self):
        assert escape_filter_value(b"\x01\x05\xff") == r"\01\05\ff"

    @given(st.text(max_size=300))
    def test_no_unescaped_specials(self, s):
        out = escape_filter_value(s)
        assert not set(out) & set("*()\x00")
        assert re.fullmatch(r"(?:[^\\]|\\[0-9a-f]{2})*", out, re.S)

    @pytest.mark.parametrize(
        "name, expected",
        [
            (
                "x)(|(a=*)@lab.ucgate.test",
                r"(&(sAMAccountType=805306368)(userPrincipalName=x\29\28|\28a=\2a\29@lab.ucgate.test))",
            ),
            ("*@lab.ucgate.test", r"(&(sAMAccountType=805306368)(userPrincipalName=\2a@lab.ucgate.test))"),
            ("alice", "(&(sAMAccountType=805306368)(sAMAccountName=alice))"),
        ],
    )
    def test_filters(self, name, expected):
        assert user_filters(parse_name(name)) == [expected]

    def test_parentheses_are_legal_but_escaped(self):
        # AD allows ( and ) in sAMAccountName: accepted, and escaped in the filter
        assert user_filters(parse_name(")(")) == [r"(&(sAMAccountType=805306368)(sAMAccountName=\29\28))"]
        assert user_filters(parse_name("LAB\\a)(b")) == [r"(&(sAMAccountType=805306368)(sAMAccountName=a\29\28b))"]

    def test_sip_filter_order(self):
        fs = user_filters(parse_name("sip:a*b@x"))
        assert fs == [
            r"(&(sAMAccountType=805306368)(msRTCSIP-PrimaryUserAddress=sip:a\2ab@x))",
            r"(&(sAMAccountType=805306368)(proxyAddresses=sip:a\2ab@x))",
            r"(&(sAMAccountType=805306368)(mail=a\2ab@x))",
        ]

    def test_normalize_dn(self):
        assert normalize_dn("CN=ucgate-users, CN=Users,DC=Lab") == normalize_dn("cn=UCGATE-USERS,cn=users,dc=lab")


class TestAccountStatePure:
    NOW = dt.datetime(2026, 6, 1, tzinfo=UTC)

    @staticmethod
    def ft(d: dt.datetime) -> bytes:
        return str(int((d - dt.datetime(1601, 1, 1, tzinfo=UTC)).total_seconds() * 10**7)).encode()

    def state(self, **attrs):
        return state_from_attributes({k.lower(): [v] for k, v in attrs.items()}, self.NOW)

    def test_normal(self):
        s = self.state(
            userAccountControl=b"512",
            accountExpires=b"9223372036854775807",
            pwdLastSet=self.ft(self.NOW - dt.timedelta(days=1)),
            **{"msDS-User-Account-Control-Computed": b"0"},
        )
        assert s.blocked_reason() is None and not s.blocked
        assert s.password_last_set is not None and s.account_expires is None

    @pytest.mark.parametrize(
        "attrs, reason",
        [
            ({"userAccountControl": b"514"}, "disabled"),
            ({"msDS-User-Account-Control-Computed": b"16"}, "locked"),
            ({"lockoutTime": b"133000000000000000"}, "locked"),  # no computed attribute
            ({"pwdLastSet": b"0"}, "password-must-change"),
            ({"msDS-User-Account-Control-Computed": b"8388608"}, "password-must-change"),
        ],
    )
    def test_blocked(self, attrs, reason):
        assert self.state(**{"userAccountControl": b"512", **attrs}).blocked_reason() == reason

    def test_expiry(self):
        past = self.state(accountExpires=self.ft(self.NOW - dt.timedelta(seconds=1)))
        future = self.state(accountExpires=self.ft(self.NOW + dt.timedelta(days=1)))
        assert past.blocked_reason() == "expired"
        assert future.blocked_reason() is None
        for never in (b"0", b"9223372036854775807"):
            assert self.state(accountExpires=never).expired is False

    def test_priority_and_deleted(self):
        s = self.state(userAccountControl=b"514", pwdLastSet=b"0", **{"msDS-User-Account-Control-Computed": b"16"})
        assert s.blocked_reason() == "disabled"
        assert AccountState(exists=False).blocked_reason() == "deleted"

    def test_filetime(self):
        assert filetime_to_datetime(0) is None
        assert filetime_to_datetime(0x7FFFFFFFFFFFFFFF) is None
        assert filetime_to_datetime(116444736000000000) == dt.datetime(1970, 1, 1, tzinfo=UTC)


def test_insecure_url_refused():
    with pytest.raises(ValueError):
        Directory(url="ldap://127.0.0.1", bind_dn="x", bind_password="y", base_dn="dc=x")
    Directory(url="ldap://127.0.0.1", start_tls=True, bind_dn="x", bind_password="y", base_dn="dc=x")


def test_silent_server_times_out():
    """A server that accepts TCP but never answers (no TLS handshake): unavailable
    after about the timeout, never a hang."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        d = Directory(
            url=f"ldaps://127.0.0.1:{srv.getsockname()[1]}", bind_dn="x", bind_password="y", base_dn="dc=x", timeout=1
        )
        t0 = time.monotonic()
        with pytest.raises(DirectoryError) as ei:
            d.resolve("alice")
        assert ei.value.reason == "unavailable"
        assert time.monotonic() - t0 < 3
    finally:
        stop.set()
        t.join()
        for s in held:
            s.close()
        srv.close()


def test_refused_port_is_quick():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    d = Directory(url=f"ldaps://127.0.0.1:{port}", bind_dn="x", bind_password="y", base_dn="dc=x", timeout=2)
    t0 = time.monotonic()
    with pytest.raises(DirectoryError) as ei:
        d.account_state("CN=x,DC=x")
    assert ei.value.reason == "unavailable"
    assert time.monotonic() - t0 < 1


# =========================================================================== integration


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_directory(lab, **kw) -> Directory:
    args = dict(
        url=lab.ldaps_url,
        bind_dn=lab.service_dn,
        bind_password=lab.service_password,
        base_dn=lab.base_dn,
        ca_file=str(lab.ca_cert),
        netbios_domain=lab.netbios_domain,
        timeout=2,
    )
    args.update(kw)
    return Directory(**args)


@pytest.fixture
def directory(samba_lab):
    d = make_directory(samba_lab, cache_ttl=0)
    yield d
    d.close()


@pytest.mark.samba
class TestResolve:
    @pytest.mark.parametrize(
        "name",
        [
            "alice",
            "ALICE",
            "LAB\\alice",
            "lab\\Alice",
            "alice@lab.ucgate.test",
            "sip:alice@lab.ucgate.test",
            "SIP:Alice@LAB.UCGATE.TEST",
        ],
    )
    def test_alice_by_every_form(self, directory, samba_lab, name):
        u = directory.resolve(name)
        assert u is not None
        assert u.sam_account_name == "alice"
        assert u.dn == samba_lab.user_dn("alice")
        assert u.upn == "alice@lab.ucgate.test"
        assert u.sip_uri == "sip:alice@lab.ucgate.test"
        assert u.mail == "alice@lab.ucgate.test"
        assert u.display_name == "Alice Example"
        assert re.fullmatch(r"[0-9a-f-]{36}", u.object_guid)
        assert u.object_sid.startswith("S-1-5-21-")
        assert u.state.blocked_reason() is None

    def test_sip_differs_from_upn(self, directory):
        bob = directory.resolve("sip:robert@sip.ucgate.test")
        assert bob.sam_account_name == "bob" and bob.upn == "bob@lab.ucgate.test"
        assert directory.resolve("bob").sip_uri == "sip:robert@sip.ucgate.test"
        # not the SIP URI, but bob's mail: the mail fallback
        assert directory.resolve("sip:robert.b@ucgate.test").sam_account_name == "bob"

    def test_sip_from_proxy_addresses(self, directory):
        frank = directory.resolve("sip:frank@lab.ucgate.test")  # no msRTCSIP attribute
        assert frank.sam_account_name == "frank"
        assert frank.sip_uri == "sip:frank@lab.ucgate.test"

    @pytest.mark.parametrize(
        "name",
        [
            "nobody",
            "LAB\\nobody",
            "OTHER\\alice",
            "nobody@lab.ucgate.test",
            "sip:nobody@lab.ucgate.test",
            "svc-ucgate@other.test",
            # injection attempts: matched literally, never as wildcards
            "*@lab.ucgate.test",
            "sip:*@lab.ucgate.test",
            "sip:*",
            "x)(|(sAMAccountName=*)@y",
            "alice@lab.ucgate.test)(|(cn=*",
            "a\\2a@lab.ucgate.test",
        ],
    )
    def test_unknown_or_injected(self, directory, name):
        try:
            assert directory.resolve(name) is None
        except DirectoryError as e:  # some are rejected before any search
            assert e.reason == "invalid-name"

    @pytest.mark.parametrize("name", ["*", "a*", "alice)(cn=*", "ali\x00ce", "x" * 300])
    def test_invalid(self, directory, name):
        with pytest.raises(DirectoryError) as ei:
            directory.resolve(name)
        assert ei.value.reason == "invalid-name"

    def test_computers_are_not_users(self, directory):
        assert directory.resolve("DC1$") is None

    def test_ambiguous_mail_fallback(self, directory, samba_lab):
        a = samba_lab.new_user(mail="shared@ucgate.test")
        b = samba_lab.new_user(mail="shared@ucgate.test")
        try:
            with pytest.raises(DirectoryError) as ei:
                directory.resolve("sip:shared@ucgate.test")
            assert ei.value.reason == "ambiguous"
        finally:
            samba_lab.delete(a)
            samba_lab.delete(b)


@pytest.mark.samba
class TestGroups:
    def test_direct_and_nested(self, directory, samba_lab):
        users = samba_lab.group_dn("ucgate-users")
        alice, erin, carol = (directory.resolve(n) for n in ("alice", "erin", "carol"))
        assert users in alice.groups
        assert users in erin.groups and samba_lab.group_dn("ucgate-mobile") in erin.groups
        assert users not in carol.groups
        for u in (alice, erin, carol):  # primary group, from primaryGroupID
            assert samba_lab.group_dn("Domain Users") in u.groups

    def test_is_member(self, directory):
        alice, erin, carol = (directory.resolve(n) for n in ("alice", "erin", "carol"))
        assert directory.is_member(alice, "ucgate-users")
        assert directory.is_member(erin, "ucgate-users")  # via ucgate-mobile
        assert directory.is_member(erin, "CN=UCGATE-USERS, cn=Users,DC=lab,DC=ucgate,DC=test")
        assert not directory.is_member(carol, "ucgate-users")
        assert not directory.is_member(alice, "ucgate-mobile")
        assert not directory.is_member(alice, "no-such-group")
        assert directory.is_member(carol, "Domain Users")


@pytest.mark.samba
class TestAccountState:
    def test_disable_enable(self, directory, samba_lab):
        name = samba_lab.new_user()
        u = directory.resolve(name)
        assert u.state.blocked_reason() is None
        samba_lab.disable(name)
        st = directory.account_state(u)
        assert st.disabled and st.blocked_reason() == "disabled"
        assert directory.resolve(name).state.disabled  # cache_ttl=0 here
        samba_lab.enable(name)
        assert directory.account_state(u).blocked_reason() is None

    def test_seeded_disabled_user(self, directory):
        assert directory.resolve("dave").state.blocked_reason() == "disabled"

    def test_lock_by_bad_binds_then_unlock(self, directory, samba_lab):
        name = samba_lab.new_user()
        u = directory.resolve(name)
        samba_lab.lock_by_bad_binds(name)
        st = directory.account_state(u)
        assert st.locked and st.blocked_reason() == "locked"
        assert st.lockout_time is not None
        assert st.bad_password_count >= samba_lab.lockout_threshold
        assert not directory.verify_password(u, samba_lab.default_password)
        samba_lab.unlock(name)
        assert directory.account_state(u).blocked_reason() is None
        assert directory.verify_password(u, samba_lab.default_password)

    def test_lock_through_verify_password(self, directory, samba_lab):
        name = samba_lab.new_user()
        for _ in range(samba_lab.lockout_threshold):
            assert not directory.verify_password(name, "wrong-password")
        assert directory.account_state(directory.resolve(name)).blocked_reason() == "locked"

    def test_expired(self, directory, samba_lab):
        name = samba_lab.new_user()
        u = directory.resolve(name)
        samba_lab.expire(name)
        st = directory.account_state(u)
        assert st.expired and st.blocked_reason() == "expired"
        assert st.account_expires < dt.datetime.now(UTC)
        samba_lab.expire(name, dt.datetime.now(UTC) + dt.timedelta(days=1))
        assert directory.account_state(u).blocked_reason() is None
        samba_lab.unexpire(name)
        assert directory.account_state(u).account_expires is None

    def test_password_must_change(self, directory, samba_lab):
        name = samba_lab.new_user()
        u = directory.resolve(name)
        samba_lab.require_password_change(name)
        st = directory.account_state(u)
        assert st.password_must_change and st.blocked_reason() == "password-must-change"
        assert st.password_last_set is None
        assert not directory.verify_password(u, samba_lab.default_password)

    def test_password_change_moves_pwd_last_set(self, directory, samba_lab):
        name = samba_lab.new_user()
        u = directory.resolve(name)
        before = directory.account_state(u).password_last_set
        time.sleep(0.05)
        samba_lab.set_password(name, "Another-Pass-9")
        after = directory.account_state(u).password_last_set
        assert before is not None and after is not None and after > before

    def test_deleted(self, directory, samba_lab):
        name = samba_lab.new_user()
        u = directory.resolve(name)
        samba_lab.delete(name)
        assert directory.account_state(u).blocked_reason() == "deleted"


@pytest.mark.samba
class TestVerifyPassword:
    def test_right_and_wrong(self, directory, samba_lab):
        assert directory.verify_password("alice", samba_lab.default_password)
        assert directory.verify_password("LAB\\alice", samba_lab.default_password)
        assert directory.verify_password(directory.resolve("bob"), samba_lab.default_password)
        assert not directory.verify_password("alice", "")  # never an anonymous bind
        assert not directory.verify_password("alice", "x\x00y")
        assert not directory.verify_password("nobody", samba_lab.default_password)
        assert not directory.verify_password("dave", samba_lab.default_password)  # disabled

    def test_password_change(self, directory, samba_lab):
        name = samba_lab.new_user()
        samba_lab.set_password(name, "Changed-Pass-1")
        assert directory.verify_password(name, "Changed-Pass-1")
        assert not directory.verify_password(name, samba_lab.default_password)

    def test_unknown_and_wrong_take_the_same_time(self, samba_lab):
        d = make_directory(samba_lab, cache_ttl=30)
        name = samba_lab.new_user()  # a wrong password each round: stays < threshold
        samba_lab.unlock(name)

        def timed(n, pw):
            t0 = time.monotonic()
            assert not d.verify_password(n, pw)
            return time.monotonic() - t0

        unknown, wrong = [], []
        for i in range(4):
            unknown.append(timed(f"nouser{i}", "Wrong-Pass-1"))
            wrong.append(timed(name, "Wrong-Pass-1"))
        samba_lab.unlock(name)
        assert min(unknown + wrong) >= 0.15  # the floor
        assert abs(statistics.median(unknown) - statistics.median(wrong)) < 0.03


@pytest.mark.samba
class TestTransport:
    def test_starttls(self, samba_lab):
        d = make_directory(samba_lab, url=samba_lab.ldap_url, start_tls=True)
        assert d.resolve("alice").sam_account_name == "alice"

    def test_untrusted_ca(self, samba_lab):
        d = make_directory(samba_lab, ca_file=None)  # system store: lab CA unknown
        with pytest.raises(DirectoryError) as ei:
            d.resolve("alice")
        assert ei.value.reason == "tls-error"

    def test_wrong_host_name(self, samba_lab):
        d = make_directory(samba_lab, tls_server_name="dc9.example.test")
        with pytest.raises(DirectoryError) as ei:
            d.resolve("alice")
        assert ei.value.reason == "tls-error"

    def test_bad_service_password(self, samba_lab):
        d = make_directory(samba_lab, bind_password="wrong")
        with pytest.raises(DirectoryError) as ei:
            d.resolve("alice")
        assert ei.value.reason == "service-bind-failed"

    def test_failover_to_second_url(self, samba_lab):
        d = make_directory(samba_lab, url=["ldaps://127.0.0.1:1", samba_lab.ldaps_url])
        assert d.resolve("alice") is not None

    def test_threads_share_one_directory(self, samba_lab):
        d = make_directory(samba_lab, cache_ttl=0)
        errors: list[BaseException] = []

        def work():
            try:
                for n in ("alice", "bob", "erin", "carol"):
                    assert d.resolve(n).sam_account_name == n
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors


@pytest.mark.samba
def test_cache_ttl_on_injected_clock(samba_lab):
    clock = FakeClock()
    d = make_directory(samba_lab, cache_ttl=30, clock=clock)
    name = samba_lab.new_user(display_name="Before")
    assert d.resolve(name).display_name == "Before"
    assert d.resolve("nobody-yet") is None
    samba_lab._modify(samba_lab.user_dn(name), {"displayName": "After"})
    samba_lab.add_user("nobody-yet")
    try:
        clock.t += 29
        assert d.resolve(name).display_name == "Before"  # cached
        assert d.resolve("nobody-yet") is None  # negative answers are cached too
        assert d.account_state(d.resolve(name)).blocked_reason() is None  # never cached
        clock.t += 2
        assert d.resolve(name).display_name == "After"
        assert d.resolve("nobody-yet") is not None
    finally:
        samba_lab.delete("nobody-yet")


@pytest.mark.samba
def test_directory_down_then_back(samba_lab):
    timeout = 2
    d = make_directory(samba_lab, timeout=timeout, cache_ttl=0)
    alice = d.resolve("alice")  # the service connection is now open and reused
    samba_lab.stop()
    try:
        for call in (
            lambda: d.account_state(alice),
            lambda: d.resolve("bob"),
            lambda: d.verify_password("bob", samba_lab.default_password),
        ):
            t0 = time.monotonic()
            with pytest.raises(DirectoryError) as ei:
                call()
            assert ei.value.reason == "unavailable"
            assert time.monotonic() - t0 < timeout
    finally:
        samba_lab.start()
    assert d.resolve("bob").sam_account_name == "bob"
    assert d.account_state(alice).blocked_reason() is None
    assert d.verify_password("bob", samba_lab.default_password)

"""TOTP (RFC 6238) enrolment, verification, replay protection and recovery codes, on SQLite
and PostgreSQL; and the otp-appended mode end to end with NTLM candidates."""

from __future__ import annotations

import base64
import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text

from tests.store.backends import postgres_database, postgres_url, repo, store_url  # noqa: F401
from ucgate.id.asp import AspService, canonical_asp, spellings
from ucgate.id.keys import Keyring
from ucgate.id.otp import (
    AlreadyEnrolled,
    NotEnrolled,
    OtpService,
    UnknownUser,
    canonical_recovery_code,
    hotp,
    time_step,
    totp,
)
from ucgate.id.users import UserService
from ucgate.policy.twofactor import (
    MAX_NTLM_CANDIDATES,
    Factor,
    appended_candidates,
    parse_candidate_id,
    split_appended,
)
from ucgate.protocols.ntlm import MAX_CANDIDATES, nt_hash
from ucgate.store import open_repository

T0 = datetime(2025, 3, 1, 12, 0, 10, tzinfo=UTC)  # 10 s into a time step


# --- RFC vectors ----------------------------------------------------------------------------
RFC6238_SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 Appendix B: (time, T hex, TOTP, mode)
RFC6238_VECTORS = [
    (59, 0x1, "94287082", "sha1"),
    (59, 0x1, "46119246", "sha256"),
    (59, 0x1, "90693936", "sha512"),
    (1111111109, 0x23523EC, "07081804", "sha1"),
    (1111111109, 0x23523EC, "68084774", "sha256"),
    (1111111109, 0x23523EC, "25091201", "sha512"),
    (1111111111, 0x23523ED, "14050471", "sha1"),
    (1111111111, 0x23523ED, "67062674", "sha256"),
    (1111111111, 0x23523ED, "99943326", "sha512"),
    (1234567890, 0x273EF07, "89005924", "sha1"),
    (1234567890, 0x273EF07, "91819424", "sha256"),
    (1234567890, 0x273EF07, "93441116", "sha512"),
    (2000000000, 0x3F940AA, "69279037", "sha1"),
    (2000000000, 0x3F940AA, "90698825", "sha256"),
    (2000000000, 0x3F940AA, "38618901", "sha512"),
    (20000000000, 0x27BC86AA, "65353130", "sha1"),
    (20000000000, 0x27BC86AA, "77737706", "sha256"),
    (20000000000, 0x27BC86AA, "47863826", "sha512"),
]


@pytest.mark.parametrize("t, step, expected, mode", RFC6238_VECTORS)
def test_rfc6238_appendix_b(t, step, expected, mode):
    assert time_step(t) == step
    assert totp(RFC6238_SEEDS[mode], t, digits=8, digest=mode) == expected


def test_rfc4226_appendix_d():
    expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
    assert [hotp(b"12345678901234567890", c) for c in range(10)] == expected


# --- fixtures -------------------------------------------------------------------------------
class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


def counter_rand():
    n = itertools.count()

    def rand(k: int) -> bytes:
        out = b""
        while len(out) < k:
            out += hashlib.sha256(b"otp%d" % next(n)).digest()
        return out[:k]

    return rand


@pytest.fixture
def keyring(tmp_path):
    return Keyring.load_or_create(tmp_path / "keys" / "ucgate.key")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def otp(repo, keyring, clock):
    users = UserService(repo, clock)
    users.add("alice", upn="alice@contoso.com")
    users.add("bob")
    return OtpService(repo, keyring, clock, counter_rand(), users=users)


def secret_of(enrolment) -> bytes:
    return base64.b32decode(enrolment.secret_b32)


def code_at(secret: bytes, when: datetime, steps: int = 0) -> str:
    return hotp(secret, time_step(when.timestamp()) + steps)


def enrol(otp, clock, user="alice"):
    e = otp.begin_enrolment(user)
    secret = secret_of(e)
    codes = otp.confirm_enrolment(user, code_at(secret, clock.now))
    assert codes
    clock.advance(30)  # the confirming step is spent: move to the next one
    return secret, codes


# --- enrolment ------------------------------------------------------------------------------
def test_begin_enrolment_shows_secret_uri_and_qr(otp):
    e = otp.begin_enrolment("ALICE@contoso.com")
    assert e.username == "alice" and e.account == "alice@contoso.com"
    assert len(secret_of(e)) == 20  # 160 bits
    u = urlsplit(e.uri)
    assert (u.scheme, u.netloc, u.path) == ("otpauth", "totp", "/ucgate:alice@contoso.com")
    q = parse_qs(u.query)
    assert q["secret"] == [e.secret_b32] and q["issuer"] == ["ucgate"]
    assert q["digits"] == ["6"] and q["period"] == ["30"] and q["algorithm"] == ["SHA1"]
    assert e.secret_b32 not in repr(e)
    assert e.qr_svg().startswith("<svg") and "</svg>" in e.qr_svg()
    qr = e.qr_text()
    assert len(qr.splitlines()) > 15 and set(qr) <= set(" ▀▄█\n")
    assert otp.status("alice").state == "pending"
    assert otp.verify("alice", code_at(secret_of(e), T0)).reason == "otp-not-enrolled"  # pending


def test_account_is_the_name_without_upn(otp):
    assert otp.begin_enrolment("bob").uri.startswith("otpauth://totp/ucgate:bob?")


def test_confirm_needs_the_right_code(otp, clock):
    e = otp.begin_enrolment("alice")
    assert otp.confirm_enrolment("alice", "000000" if code_at(secret_of(e), T0) != "000000" else "111111") is None
    assert otp.status("alice").state == "pending"
    codes = otp.confirm_enrolment("alice", code_at(secret_of(e), T0, -1))  # window applies
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(canonical_recovery_code(c) and len(canonical_recovery_code(c)) * 5 >= 50 for c in codes)
    st = otp.status("alice")
    assert st.state == "active" and st.recovery_codes_left == 10
    assert otp.confirm_enrolment("alice", code_at(secret_of(e), T0)) is None  # nothing pending


def test_new_enrolment_replaces_pending_and_refuses_active(otp, clock):
    first = otp.begin_enrolment("alice")
    second = otp.begin_enrolment("alice")
    assert first.secret_b32 != second.secret_b32
    assert otp.confirm_enrolment("alice", code_at(secret_of(first), T0)) is None
    enrol(otp, clock)
    with pytest.raises(AlreadyEnrolled):
        otp.begin_enrolment("alice")
    with pytest.raises(UnknownUser):
        otp.begin_enrolment("nobody")


# --- verification ---------------------------------------------------------------------------
def test_window_plus_minus_one_accepted_two_refused(otp, clock):
    secret, _ = enrol(otp, clock)
    clock.advance(300)
    now = clock.now
    assert otp.verify("alice", code_at(secret, now, +2)).reason == "otp-wrong"
    assert otp.verify("alice", code_at(secret, now, -2)).reason == "otp-wrong"
    r = otp.verify("alice", code_at(secret, now, -1))
    assert r.ok and r.factor is Factor.OTP_OK and r.step == time_step(now.timestamp()) - 1
    assert otp.verify("alice", code_at(secret, now)).ok
    r = otp.verify("alice", code_at(secret, now, +1))
    assert r.ok and r.step == time_step(now.timestamp()) + 1


def test_replay_refused_same_and_earlier_step(otp, clock):
    secret, _ = enrol(otp, clock)
    code = code_at(secret, clock.now)
    assert otp.verify("alice", code).ok
    r = otp.verify("alice", code)
    assert not r.ok and r.reason == "otp-replayed" and r.factor is Factor.OTP_REPLAYED
    clock.advance(10)  # same step, still in the window
    assert otp.verify("alice", code).reason == "otp-replayed"
    assert otp.verify("alice", code_at(secret, clock.now, +1)).ok  # clock ahead: next step
    assert otp.verify("alice", code_at(secret, clock.now)).reason == "otp-replayed"  # earlier
    clock.advance(60)
    assert otp.verify("alice", code_at(secret, clock.now)).ok


def test_replay_refused_after_reopening_the_store(store_url, keyring, tmp_path):
    clock = Clock()
    repo1 = open_repository(store_url)
    UserService(repo1, clock).add("alice")
    svc1 = OtpService(repo1, keyring, clock, counter_rand())
    secret, _ = enrol(svc1, clock)
    code = code_at(secret, clock.now)
    assert svc1.verify("alice", code).ok
    repo1.close()
    repo2 = open_repository(store_url)  # a restart, or another gateway on the same store
    try:
        svc2 = OtpService(repo2, Keyring.load_or_create(tmp_path / "keys" / "ucgate.key"), clock)
        assert svc2.verify("alice", code).reason == "otp-replayed"
        clock.advance(30)
        assert svc2.verify("alice", code_at(secret, clock.now)).ok
    finally:
        repo2.close()


def test_wrong_and_malformed_codes(otp, clock):
    secret, _ = enrol(otp, clock)
    good = code_at(secret, clock.now)
    wrong = f"{(int(good) + 1) % 10**6:06d}"
    for typed in (wrong, "", "12345", "1234567", "abcdef", "１２３４５６"):
        r = otp.verify("alice", typed)
        assert not r.ok and r.reason == "otp-wrong", typed
    assert otp.verify("alice", good[:3] + " " + good[3:]).ok  # "123 456" as apps show it
    assert otp.verify("bob", good).reason == "otp-not-enrolled"
    assert otp.verify("nobody", good).reason == "otp-not-enrolled"


def test_secret_is_encrypted_at_rest(otp, repo, clock):
    secret, codes = enrol(otp, clock)
    with repo.engine.connect() as c:
        rows = (
            c.execute(text("SELECT * FROM otp_secrets")).all()
            + c.execute(text("SELECT * FROM otp_recovery_codes")).all()
        )
    dump = b"".join(bytes(v) if isinstance(v, (bytes, memoryview)) else str(v).encode() for row in rows for v in row)
    b32 = base64.b32encode(secret)
    assert secret not in dump and b32 not in dump and b32.rstrip(b"=").lower() not in dump.lower()
    for code in codes:
        assert canonical_recovery_code(code).encode() not in dump and code.encode() not in dump


def test_ciphertext_is_bound_to_its_row(otp, repo, clock):
    enrol(otp, clock, "alice")
    enrol(otp, clock, "bob")
    alice, bob = repo.get_user("alice"), repo.get_user("bob")
    b = repo.get_otp(bob.id)
    repo.replace_otp_ciphertext(alice.id, b.ciphertext, b.nonce)  # copy bob's secret over
    assert otp.verify("alice", "123456").reason == "otp-not-enrolled"  # does not decrypt
    assert otp.window_codes("alice") == []


def test_key_rotation_reencrypts(otp, repo, clock, tmp_path):
    secret, _ = enrol(otp, clock)
    otp.keyring = Keyring.rotate(tmp_path / "keys" / "ucgate.key")
    assert otp.reencrypt_all() == 1
    assert Keyring.key_id_of(repo.get_otp(repo.get_user("alice").id).ciphertext) == otp.keyring.active
    assert otp.verify("alice", code_at(secret, clock.now)).ok


# --- recovery codes, reset ------------------------------------------------------------------
def test_recovery_code_works_once(otp, clock):
    _, codes = enrol(otp, clock)
    r = otp.use_recovery_code("alice", codes[3].upper().replace("-", ""))  # case and dashes free
    assert r.ok and r.factor is Factor.RECOVERY_OK
    r = otp.use_recovery_code("alice", codes[3])
    assert not r.ok and r.reason == "recovery-code-wrong" and r.factor is Factor.RECOVERY_WRONG
    assert otp.use_recovery_code("alice", "abcd-efgh-jkmn").reason == "recovery-code-wrong"
    assert otp.use_recovery_code("alice", "x").reason == "recovery-code-wrong"
    assert otp.use_recovery_code("bob", codes[4]).reason == "otp-not-enrolled"
    assert otp.status("alice").recovery_codes_left == 9


def test_regenerate_recovery_codes(otp, clock):
    _, old = enrol(otp, clock)
    new = otp.regenerate_recovery_codes("alice")
    assert len(new) == 10 and not set(new) & set(old)
    assert otp.use_recovery_code("alice", old[0]).reason == "recovery-code-wrong"
    assert otp.use_recovery_code("alice", new[0]).ok
    with pytest.raises(NotEnrolled):
        otp.regenerate_recovery_codes("bob")


def test_reset(otp, clock):
    secret, codes = enrol(otp, clock)
    assert otp.reset("alice")
    assert otp.status("alice").state == "none" and not otp.is_enrolled("alice")
    assert otp.verify("alice", code_at(secret, clock.now)).reason == "otp-not-enrolled"
    assert otp.use_recovery_code("alice", codes[0]).reason == "otp-not-enrolled"
    assert not otp.reset("alice")
    enrol(otp, clock)  # can enrol again
    with pytest.raises(UnknownUser):
        otp.reset("nobody")


# --- otp-appended mode ----------------------------------------------------------------------
@pytest.fixture
def asps(repo, keyring, clock, otp):
    return AspService(repo, keyring, clock, rand=counter_rand(), users=otp.users)


def test_basic_appended_end_to_end(otp, asps, clock):
    """What IdService.verify_password_sync does: split, check the ASP, then the code."""
    secret, _ = enrol(otp, clock)
    _, plaintext = asps.create("alice", "phone")
    typed = plaintext + code_at(secret, clock.now)
    asp_part, code = split_appended(typed)
    assert asps.verify_password("alice", asp_part) is not None
    assert otp.verify("alice", code).ok
    asp_part, code = split_appended(typed)  # the same password again
    assert otp.verify("alice", code).reason == "otp-replayed"


def usable_spellings(asps, user):
    """Stand-in for the AspService method the lead adds: (asp id, spelling) per usable ASP."""
    _, usable, _ = asps._usable(user, None)
    return [(a.id, s) for a, secret in usable for s in spellings(secret.decode())]


@pytest.mark.parametrize("how", ["shown", "canonical", "SHOWN", "CANONICAL"])
@pytest.mark.parametrize("skew", [-1, 0, 1])
def test_ntlm_appended_candidate_matches_what_the_client_hashed(otp, asps, clock, how, skew):
    secret, _ = enrol(otp, clock)
    clock.advance(60)  # every step of the window is later than the confirming one
    asp_id, plaintext = asps.create("alice", "phone")
    canonical = canonical_asp(plaintext)
    spelled = {"shown": plaintext, "canonical": canonical, "SHOWN": plaintext.upper(), "CANONICAL": canonical.upper()}[
        how
    ]
    client_hash = nt_hash(spelled + code_at(secret, clock.now, skew))  # what the client sends

    cands = appended_candidates(usable_spellings(asps, "alice"), otp.window_codes("alice"))
    assert len(cands) == 12 <= MAX_CANDIDATES
    hashes = [(cid, nt_hash(pw)) for cid, pw in cands]
    matched = [cid for cid, h in hashes if h == client_hash]
    assert len(matched) == 1
    got_asp, step = parse_candidate_id(matched[0])
    assert got_asp == asp_id and step == time_step(clock.now.timestamp()) + skew
    assert otp.accept_step("alice", step).ok  # replay marking
    assert otp.accept_step("alice", step).reason == "otp-replayed"  # a second connection


def test_ntlm_candidates_stay_within_the_acceptor_limit(otp, asps, clock):
    enrol(otp, clock)
    for i in range(5):
        asps.create("alice", f"device {i}")
    cands = appended_candidates(usable_spellings(asps, "alice"), otp.window_codes("alice"))
    assert len(cands) == MAX_NTLM_CANDIDATES == MAX_CANDIDATES
    # every ASP keeps its shown spelling with all three steps of the window
    steps = {s for s, _ in otp.window_codes("alice")}
    for a in asps.list("alice"):
        assert {
            parse_candidate_id(cid)[1]
            for cid, pw in cands
            if parse_candidate_id(cid)[0] == a.id and "-" in pw and pw.islower()
        } == steps


def test_window_codes_order_and_empty_when_not_enrolled(otp, clock):
    assert otp.window_codes("alice") == []
    secret, _ = enrol(otp, clock)
    t = time_step(clock.now.timestamp())
    assert otp.window_codes("alice") == [
        (t, hotp(secret, t)),
        (t - 1, hotp(secret, t - 1)),
        (t + 1, hotp(secret, t + 1)),
    ]
    # a float "now" (IdService's clock) works too
    assert otp.window_codes("alice", clock.now.timestamp() + 30)[0][0] == t + 1


# --- admin CLI: ucgate otp ... --------------------------------------------------------------
@pytest.fixture
def cli(store_url, tmp_path, capsys, monkeypatch):
    import argparse
    from types import SimpleNamespace

    from ucgate.cli.admin import register

    settings = SimpleNamespace(store_url=store_url, key_file=tmp_path / "keys" / "ucgate.key", audit_file=None)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config")
    parser = argparse.ArgumentParser(prog="ucgate")
    register(parser.add_subparsers(dest="command"), common, load_settings=lambda args: settings)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            args = parser.parse_args(list(argv))
            code = args.func(args)
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("db", "upgrade")[0] == 0
    assert run("user", "add", "alice", "--upn", "alice@contoso.com")[0] == 0
    return run


def _now_code(secret_b32: str) -> str:
    return totp(base64.b32decode(secret_b32), datetime.now(UTC).timestamp())


def test_cli_enrol_confirm_status_reset(cli, tmp_path):
    import json

    assert json.loads(cli("otp", "status", "alice", "--json")[1])["state"] == "none"
    code, out, err = cli("otp", "enrol", "alice", "--svg", str(tmp_path / "qr.svg"))
    assert code == 0 and "otpauth://totp/ucgate:alice@contoso.com?" in out and "█" in out
    assert "--code" in err and (tmp_path / "qr.svg").read_text().startswith("<svg")
    secret = next(line.split()[-1] for line in out.splitlines() if "secret:" in line)
    assert "pending" in cli("otp", "status", "alice")[1]
    code, _, err = cli("otp", "enrol", "alice", "--code", "12345")
    assert code == 1 and "does not match" in err
    code, out, err = cli("otp", "enrol", "alice", "--code", _now_code(secret), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["state"] == "active" and len(data["recovery_codes"]) == 10
    code, out, _ = cli("otp", "status", "alice")
    assert code == 0 and "active" in out and "10 recovery codes left" in out
    code, _, err = cli("otp", "enrol", "alice")
    assert code == 1 and "otp reset" in err
    code, out, _ = cli("otp", "recovery-codes", "alice", "--json")
    new = json.loads(out)["recovery_codes"]
    assert code == 0 and len(new) == 10 and not set(new) & set(data["recovery_codes"])
    assert cli("otp", "reset", "alice")[0] == 0
    assert cli("otp", "reset", "alice")[0] == 1
    assert cli("otp", "recovery-codes", "alice")[0] == 1
    assert cli("otp", "status", "nobody")[0] == 1
    code, out, _ = cli("otp", "enrol", "alice", "--no-qr", "--json")
    assert code == 0 and json.loads(out)["state"] == "pending"
    actions = [e["action"] for e in json.loads(cli("audit", "tail", "--json")[1])]
    assert {"otp.enrol", "otp.confirm", "otp.recovery-codes", "otp.reset"} <= set(actions)


def test_cli_enrol_force_replaces_active(cli):
    import json

    secret = json.loads(cli("otp", "enrol", "alice", "--json")[1])["secret"]
    assert cli("otp", "enrol", "alice", "--code", _now_code(secret))[0] == 0
    code, out, _ = cli("otp", "enrol", "alice", "--force", "--json")
    assert code == 0 and json.loads(out)["secret"] != secret

"""NTLM acceptor: MS-NLMP test vectors, real clients (pyspnego, impacket), negative vectors."""

from __future__ import annotations

import base64
import datetime
import hashlib
import struct

import pytest
import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from impacket import ntlm as impacket_ntlm
from spnego.channel_bindings import GssChannelBindings

from ucgate.protocols.ntlm import (
    MAX_MESSAGE_SIZE,
    AuthenticateMessage,
    AvFlags,
    AvId,
    AvPair,
    ChallengeMessage,
    NegotiateFlags,
    NegotiateMessage,
    NtlmAcceptor,
    NtlmError,
    NtlmSession,
    TargetInfo,
    Version,
    channel_bindings_hash,
    filetime,
    hmac_md5,
    nt_hash,
    ntowfv2,
    sealkey,
    signkey,
    tls_server_end_point,
)

NF = NegotiateFlags
NOW = filetime(1_700_000_000)
SERVER_CHALLENGE = bytes.fromhex("0123456789abcdef")
TLS_BINDING = b"tls-server-end-point:" + bytes(range(32))
OTHER_BINDING = b"tls-server-end-point:" + bytes(32)

# --- MS-NLMP 4.2.1 common values and 4.2.4 NTLMv2 ---------------------------------------------
MS_USER, MS_DOMAIN, MS_PASSWORD = "User", "Domain", "Password"
MS_RANDOM_SESSION_KEY = b"\x55" * 16
MS_CLIENT_CHALLENGE = b"\xaa" * 8
# 4.2.4.1.3 / 4.2.4.2: AV pairs MsvAvNbDomainName "Domain", MsvAvNbComputerName "Server", EOL.
MS_AV_PAIRS = bytes.fromhex("02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000")
# 4.2.4.3 AUTHENTICATE_MESSAGE (flags 0xe2888235, Version 5.1.2600, no MIC).
MS_AUTHENTICATE = bytes.fromhex(
    "4e544c4d53535000"
    "03000000"  # signature, MessageType
    "180018006c000000"  # LmChallengeResponseFields
    "5400540084000000"  # NtChallengeResponseFields
    "0c000c0048000000"  # DomainNameFields
    "0800080054000000"  # UserNameFields
    "100010005c000000"  # WorkstationFields
    "10001000d8000000"  # EncryptedRandomSessionKeyFields
    "358288e2"  # NegotiateFlags
    "0501280a0000000f"  # Version 5.1.2600
    "44006f006d00610069006e00"  # "Domain"
    "5500730065007200"  # "User"
    "43004f004d0050005500540045005200"  # "COMPUTER"
    "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"  # LMv2 response
    "68cd0ab851e51c96aabc927bebef6a1c"  # NTProofStr
    "0101000000000000"
    "0000000000000000"
    "aaaaaaaaaaaaaaaa"
    "00000000" + MS_AV_PAIRS.hex() + "00000000"
    "c5dad2544fc9799094ce1ce90bc9d03e"  # EncryptedRandomSessionKey
)


def ms_acceptor(**kw) -> NtlmAcceptor:
    args = dict(
        server_challenge=SERVER_CHALLENGE,
        now=0,
        netbios_domain="Domain",
        netbios_computer="Server",
        dns_domain="domain.test",
        dns_computer="server.domain.test",
        channel_binding_data=None,
    )
    args.update(kw)
    return NtlmAcceptor(**args)


def test_nt_hash_and_ntowfv2_vectors():
    # MS-NLMP 4.2.2.1.2 NTOWFv1 and 4.2.4.1.1 NTOWFv2
    assert nt_hash(MS_PASSWORD).hex() == "a4f49c406510bdcab6824ee7c30fd852"
    assert ntowfv2(nt_hash(MS_PASSWORD), MS_USER, MS_DOMAIN).hex() == "0c868a403bfd7a93a3001ef22ef02e3f"


def test_authenticate_4_2_4_3_parses():
    auth = AuthenticateMessage.unpack(MS_AUTHENTICATE)
    assert auth.flags == 0xE2888235
    assert (auth.user_name, auth.domain_name, auth.workstation) == ("User", "Domain", "COMPUTER")
    assert auth.version == Version(5, 1, 2600, 15)
    assert auth.mic is None
    assert auth.lm_challenge_response.hex() == "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
    # 4.2.4.2.2 NTLMv2 response: NTProofStr then temp
    assert auth.nt_challenge_response[:16].hex() == "68cd0ab851e51c96aabc927bebef6a1c"
    assert auth.encrypted_random_session_key.hex() == "c5dad2544fc9799094ce1ce90bc9d03e"
    assert AuthenticateMessage.unpack(auth.pack()) == auth


def test_authenticate_4_2_4_3_verifies():
    acceptor = ms_acceptor()
    acceptor.challenge(NegotiateMessage(NegotiateFlags(0xE2888235)).pack())
    identity = acceptor.identify(MS_AUTHENTICATE)
    assert (identity.user, identity.domain, identity.workstation) == ("User", "Domain", "COMPUTER")
    result = acceptor.verify([nt_hash("wrong"), nt_hash(MS_PASSWORD)], now=0)
    assert result.candidate_index == 1
    # 4.2.4.1.2 SessionBaseKey; 4.2.4.2.3 EncryptedSessionKey decrypts to RandomSessionKey
    assert result.session_base_key.hex() == "8de40ccadbc14a82f15cb0ad0de95ca3"
    assert result.exported_session_key == MS_RANDOM_SESSION_KEY
    assert result.channel_binding == "absent"
    assert result.mic_present is False
    assert "8de40cca" not in repr(result) and "5555" not in repr(result)


def test_session_keys_4_2_4_and_signature_4_2_4_4():
    flags = NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_128
    assert signkey(flags, MS_RANDOM_SESSION_KEY, "client").hex() == "4788dc861b4782f35d43fd98fe1a2d39"
    assert signkey(flags, MS_RANDOM_SESSION_KEY, "server").hex() == "d04d6f10741041d1d246d64188d7a8ad"
    assert sealkey(flags, MS_RANDOM_SESSION_KEY, "client").hex() == "59f600973cc4960a25480a7c196e4c58"
    assert sealkey(flags, MS_RANDOM_SESSION_KEY, "server").hex() == "9355f3a957c1583d25c4c2f11e40390e"
    # 4.2.4.4 GSS_WrapEx: the client seals "Plaintext" then signs with the same RC4 handle.
    flags = NF.NEGOTIATE_SIGN | NF.NEGOTIATE_SEAL | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY
    flags |= NF.NEGOTIATE_KEY_EXCH | NF.NEGOTIATE_128
    session = NtlmSession(flags, MS_RANDOM_SESSION_KEY)
    plaintext = "Plaintext".encode("utf-16-le")
    assert session._in.handle.encrypt(plaintext).hex() == "54e50165bf1936dc996020c1811b0f06fb5f"
    signature = session._mac(session._in, 0, plaintext)
    assert signature.hex() == "010000007fb38ec5c55d497600000000"


def test_signature_without_ess_4_2_2_4():
    # MS-NLMP 4.2.2.4 (NTLMv1 flags, no extended session security); RandomPad sent as zero.
    flags = NegotiateFlags(0xE2028233)
    session = NtlmSession(flags, MS_RANDOM_SESSION_KEY)
    plaintext = "Plaintext".encode("utf-16-le")
    assert session._in.handle.encrypt(plaintext).hex() == "56fe04d861f9319af0d7238a2e3b4d457fb8"
    assert session._mac(session._in, 0, plaintext).hex() == "010000000000000009dcd1df2e459d36"


def test_filetime_and_channel_bindings_hash():
    assert filetime(0) == 116444736000000000
    assert filetime(1.5) == 116444736000000000 + 15_000_000
    expected = hashlib.md5(GssChannelBindings(application_data=TLS_BINDING).pack()).digest()
    assert channel_bindings_hash(TLS_BINDING) == expected


def _cert(key, algorithm) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.example.test")])
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(when)
        .not_valid_after(when + datetime.timedelta(days=1))
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return builder.sign(key, algorithm).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    "algorithm, digest",
    [(hashes.SHA256(), "sha256"), (hashes.SHA384(), "sha384")],
)
def test_tls_server_end_point(algorithm, digest):
    der = _cert(ec.generate_private_key(ec.SECP256R1()), algorithm)
    assert tls_server_end_point(der) == b"tls-server-end-point:" + hashlib.new(digest, der).digest()


# An ecdsa-with-SHA1 self-signed certificate (openssl req -x509 -sha1); cryptography no longer
# signs with SHA-1, so it is embedded. RFC 5929 §4.1: SHA-1 is replaced by SHA-256.
SHA1_CERT = base64.b64decode(
    "MIIBfDCCASKgAwIBAgIUHhf74oeIXal5UvitZKdktRAfaBYwCQYHKoZIzj0EATAUMRIwEAYDVQQD"
    "DAlzaGExLnRlc3QwHhcNMjYxMTI1MTM1NjUzWhcNMjYxMTI2MTM1NjUzWjAUMRIwEAYDVQQDDAlz"
    "aGExLnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATRDb9WSSvMIrfAHGeiVVsRK7VOqBh2"
    "rPXwEhWFaoC5ub0O+/M8od4yt9QGZX+OeaC2ifXvWTZHSavM1IGHBiMCo1MwUTAdBgNVHQ4EFgQU"
    "/FDr+P9OIi5crDV80rjyHPtVORowHwYDVR0jBBgwFoAU/FDr+P9OIi5crDV80rjyHPtVORowDwYD"
    "VR0TAQH/BAUwAwEB/zAJBgcqhkjOPQQBA0kAMEYCIQD3Ftw/llQ9s+1h3HHd7Fds6vytNDPRZOzE"
    "ZzAjZEtprwIhALDMpm+rTGsRu8B8dAVNiM3RIy5NRlATTYx8jPGNkwVw"
)


def test_tls_server_end_point_sha1_becomes_sha256():
    assert isinstance(x509.load_der_x509_certificate(SHA1_CERT).signature_hash_algorithm, hashes.SHA1)
    assert tls_server_end_point(SHA1_CERT) == b"tls-server-end-point:" + hashlib.sha256(SHA1_CERT).digest()


def test_tls_server_end_point_rsa_sha512():
    der = _cert(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA512())
    assert tls_server_end_point(der) == b"tls-server-end-point:" + hashlib.sha512(der).digest()


# --- real clients ---------------------------------------------------------------------------


def make_acceptor(binding: bytes | None = TLS_BINDING, mode: str = "require", **kw) -> NtlmAcceptor:
    args = dict(
        server_challenge=SERVER_CHALLENGE,
        now=NOW,
        netbios_domain="EXAMPLE",
        netbios_computer="GW1",
        dns_domain="example.test",
        dns_computer="gw1.example.test",
        channel_binding_data=binding,
        extended_protection=mode,
    )
    args.update(kw)
    return NtlmAcceptor(**args)


def pyspnego_exchange(acceptor, password="Password", cbt=TLS_BINDING, user="EXAMPLE\\alice"):
    """Run pyspnego's NTLM client against ``acceptor``; returns (client, authenticate bytes)."""
    bindings = GssChannelBindings(application_data=cbt) if cbt is not None else None
    client = spnego.client(
        user,
        password,
        hostname="gw1.example.test",
        service="HTTP",
        protocol="ntlm",
        channel_bindings=bindings,
    )
    challenge = acceptor.challenge(client.step())
    return client, client.step(challenge)


@pytest.mark.parametrize("mode", ["require", "allow"])
def test_pyspnego_right_password_with_cbt(mode):
    acceptor = make_acceptor(mode=mode)
    client, auth = pyspnego_exchange(acceptor)
    identity = acceptor.identify(auth)
    assert (identity.user, identity.domain) == ("alice", "EXAMPLE")
    result = acceptor.verify([nt_hash("nope"), nt_hash("Password")], NOW + 20)
    assert result.candidate_index == 1
    assert result.channel_binding == "verified"
    assert result.mic_present
    assert result.target_name == "HTTP/gw1.example.test"
    assert acceptor.complete
    # session security interoperates both ways
    acceptor.session.verify_mic(b"from client", client.sign(b"from client"))
    client.verify(b"from server", acceptor.session.sign(b"from server"))


def test_pyspnego_wrong_password_then_retry():
    acceptor = make_acceptor()
    _, auth = pyspnego_exchange(acceptor)
    acceptor.identify(auth)
    with pytest.raises(NtlmError) as err:
        acceptor.verify([nt_hash("Passw0rd"), nt_hash("password")], NOW)
    assert err.value.reason == "wrong-password"
    assert acceptor.state == "identified"
    assert acceptor.verify([nt_hash("Password")], NOW).candidate_index == 0


def test_pyspnego_cbt_mismatch_refused_unless_off():
    for mode in ("require", "allow"):
        acceptor = make_acceptor(mode=mode)
        _, auth = pyspnego_exchange(acceptor, cbt=OTHER_BINDING)
        acceptor.identify(auth)
        with pytest.raises(NtlmError) as err:
            acceptor.verify([nt_hash("Password")], NOW)
        assert err.value.reason == "channel-binding-mismatch"
        assert acceptor.state == "failed"
    acceptor = make_acceptor(mode="off")
    _, auth = pyspnego_exchange(acceptor, cbt=OTHER_BINDING)
    acceptor.identify(auth)
    assert acceptor.verify([nt_hash("Password")], NOW).channel_binding == "not-checked"


def test_pyspnego_no_cbt():
    acceptor = make_acceptor(mode="require")
    _, auth = pyspnego_exchange(acceptor, cbt=None)
    acceptor.identify(auth)
    with pytest.raises(NtlmError) as err:
        acceptor.verify([nt_hash("Password")], NOW)
    assert err.value.reason == "channel-binding-missing"

    acceptor = make_acceptor(mode="allow")
    _, auth = pyspnego_exchange(acceptor, cbt=None)
    acceptor.identify(auth)
    assert acceptor.verify([nt_hash("Password")], NOW).channel_binding == "absent"


def test_pyspnego_plain_http_no_binding_data():
    acceptor = make_acceptor(binding=None, mode="require")
    _, auth = pyspnego_exchange(acceptor, cbt=None)
    acceptor.identify(auth)
    assert acceptor.verify([nt_hash("Password")], NOW).channel_binding == "absent"
    # a binding where we have none (TLS terminated elsewhere, or relayed) is a mismatch
    acceptor = make_acceptor(binding=None, mode="require")
    _, auth = pyspnego_exchange(acceptor, cbt=TLS_BINDING)
    acceptor.identify(auth)
    with pytest.raises(NtlmError, match="channel-binding-mismatch"):
        acceptor.verify([nt_hash("Password")], NOW)


def test_pyspnego_upn_and_unicode_password():
    acceptor = make_acceptor()
    _, auth = pyspnego_exchange(acceptor, password="pässwörd€", user="alice@example.test")
    identity = acceptor.identify(auth)
    assert (identity.user, identity.domain) == ("alice@example.test", "")
    assert acceptor.verify([nt_hash("pässwörd€")], NOW).channel_binding == "verified"


def impacket_exchange(acceptor, password="Password", cbt=TLS_BINDING, signing=True):
    type1 = impacket_ntlm.getNTLMSSPType1("WS01", "", signingRequired=signing)
    challenge = acceptor.challenge(type1.getData())
    value = channel_bindings_hash(cbt) if cbt is not None else b""
    type3, _key = impacket_ntlm.getNTLMSSPType3(
        type1, challenge, "bob", password, "EXAMPLE", channel_binding_value=value, service="HTTP"
    )
    return type3.getData()


@pytest.mark.parametrize("signing", [True, False])
def test_impacket_right_password(signing):
    acceptor = make_acceptor()
    auth = impacket_exchange(acceptor, signing=signing)
    assert acceptor.identify(auth).user == "bob"
    result = acceptor.verify([nt_hash("Password")], NOW)
    assert result.channel_binding == "verified"
    assert result.mic_present is False  # impacket sends no MIC
    assert result.target_name == "HTTP/gw1.example.test"


def test_impacket_wrong_password_and_cbt():
    acceptor = make_acceptor()
    acceptor.identify(impacket_exchange(acceptor, password="bad"))
    with pytest.raises(NtlmError, match="wrong-password"):
        acceptor.verify([nt_hash("Password")], NOW)
    acceptor = make_acceptor()
    acceptor.identify(impacket_exchange(acceptor, cbt=OTHER_BINDING))
    with pytest.raises(NtlmError, match="channel-binding-mismatch"):
        acceptor.verify([nt_hash("Password")], NOW)
    acceptor = make_acceptor()
    acceptor.identify(impacket_exchange(acceptor, cbt=None))
    with pytest.raises(NtlmError, match="channel-binding-missing"):
        acceptor.verify([nt_hash("Password")], NOW)
    acceptor = make_acceptor(mode="allow")
    acceptor.identify(impacket_exchange(acceptor, cbt=None))
    assert acceptor.verify([nt_hash("Password")], NOW).channel_binding == "absent"


def test_require_mic_refuses_impacket():
    acceptor = make_acceptor(require_mic=True)
    acceptor.identify(impacket_exchange(acceptor))
    with pytest.raises(NtlmError) as err:
        acceptor.verify([nt_hash("Password")], NOW)
    assert err.value.reason == "mic-missing"


# --- crafted AUTHENTICATE messages ----------------------------------------------------------

CRAFT_FLAGS = (
    NF.NEGOTIATE_UNICODE
    | NF.NEGOTIATE_NTLM
    | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NF.NEGOTIATE_TARGET_INFO
    | NF.NEGOTIATE_128
    | NF.NEGOTIATE_VERSION
)


def craft(
    acceptor: NtlmAcceptor,
    challenge: bytes,
    negotiate: bytes,
    *,
    password="Password",
    timestamp: int | None = None,
    cbt: bytes | None = TLS_BINDING,
    with_mic=True,
    mic_field=True,
    nt_response: bytes | None = None,
    lm_response: bytes = b"\x00" * 24,
    user="carol",
    domain="EXAMPLE",
) -> AuthenticateMessage:
    """An AUTHENTICATE built by hand (NTLMv2 per MS-NLMP 3.3.2), MIC per 3.1.5.1.2."""
    info = ChallengeMessage.unpack(challenge).target_info
    pairs = [p for p in info.pairs]
    if timestamp is not None:
        pairs = [p for p in pairs if p.av_id != AvId.MsvAvTimestamp]
        pairs.append(AvPair(AvId.MsvAvTimestamp, struct.pack("<Q", timestamp)))
    if with_mic:
        pairs.append(AvPair(AvId.MsvAvFlags, struct.pack("<I", AvFlags.MIC_PROVIDED)))
    if cbt is not None:
        pairs.append(AvPair(AvId.MsvAvChannelBindings, channel_bindings_hash(cbt)))
    ts = timestamp if timestamp is not None else info.timestamp()
    temp = b"\x01\x01" + b"\x00" * 6 + struct.pack("<Q", ts) + b"\x11" * 8 + b"\x00" * 4
    temp += TargetInfo(tuple(pairs)).pack() + b"\x00" * 4
    key = ntowfv2(nt_hash(password), user, domain)
    server_challenge = ChallengeMessage.unpack(challenge).server_challenge
    proof = hmac_md5(key, server_challenge + temp)
    auth = AuthenticateMessage(
        flags=CRAFT_FLAGS,
        lm_challenge_response=lm_response,
        nt_challenge_response=proof + temp if nt_response is None else nt_response,
        domain_name=domain,
        user_name=user,
        workstation="WS",
        version=Version() if mic_field else None,
        mic=b"\x00" * 16 if mic_field else None,
    )
    if with_mic and mic_field:
        exported = hmac_md5(key, proof)
        auth.mic = hmac_md5(exported, negotiate + challenge + auth.pack())
    return auth


def crafted(**kw):
    acceptor = make_acceptor(**kw.pop("acceptor_kw", {}))
    negotiate = NegotiateMessage(CRAFT_FLAGS).pack()
    challenge = acceptor.challenge(negotiate)
    return acceptor, craft(acceptor, challenge, negotiate, **kw)


def verify_reason(acceptor, token, now=NOW) -> str:
    with pytest.raises(NtlmError) as err:
        acceptor.identify(token)
        acceptor.verify([nt_hash("Password")], now)
    return err.value.reason


def test_crafted_message_verifies():
    acceptor, auth = crafted()
    acceptor.identify(auth.pack())
    result = acceptor.verify([nt_hash("Password")], NOW)
    assert result.mic_present and result.channel_binding == "verified"


def test_bad_mic():
    acceptor, auth = crafted()
    mic = bytearray(auth.mic)
    mic[3] ^= 0x01
    auth.mic = bytes(mic)
    assert verify_reason(acceptor, auth.pack()) == "bad-mic"


def test_bad_mic_from_pyspnego_byte_flip():
    acceptor = make_acceptor()
    _, token = pyspnego_exchange(acceptor)
    token = bytearray(token)
    token[80] ^= 0xFF  # inside the MIC field (72..88)
    assert verify_reason(acceptor, bytes(token)) == "bad-mic"


def test_tampered_header_detected_by_mic():
    acceptor = make_acceptor()
    _, token = pyspnego_exchange(acceptor)
    token = bytearray(token)
    token[60] ^= NF.NEGOTIATE_SEAL  # flip a negotiate flag; the MIC covers it
    assert verify_reason(acceptor, bytes(token)) == "bad-mic"


def test_mic_announced_but_no_mic_field():
    acceptor, auth = crafted(mic_field=False)
    assert auth.mic is None
    assert verify_reason(acceptor, auth.pack()) == "mic-missing"


def test_stale_timestamps():
    acceptor, auth = crafted(timestamp=NOW - 301 * 10_000_000)
    assert verify_reason(acceptor, auth.pack()) == "stale-timestamp"
    acceptor, auth = crafted(timestamp=NOW + 301 * 10_000_000)
    assert verify_reason(acceptor, auth.pack()) == "stale-timestamp"
    acceptor, auth = crafted(timestamp=NOW - 299 * 10_000_000)
    acceptor.identify(auth.pack())
    acceptor.verify([nt_hash("Password")], NOW)
    # the challenge itself outlived the window by the time the AUTHENTICATE arrived
    acceptor, auth = crafted()
    assert verify_reason(acceptor, auth.pack(), now=NOW + 301 * 10_000_000) == "stale-timestamp"


def test_wrong_channel_binding_crafted():
    acceptor, auth = crafted(cbt=OTHER_BINDING)
    assert verify_reason(acceptor, auth.pack()) == "channel-binding-mismatch"
    acceptor, auth = crafted(cbt=None)
    assert verify_reason(acceptor, auth.pack()) == "channel-binding-missing"


def test_all_zero_channel_binding_counts_as_absent():
    acceptor, auth = crafted(acceptor_kw={"mode": "allow"}, cbt=None)
    acceptor.identify(auth.pack())
    assert acceptor.verify([nt_hash("Password")], NOW).channel_binding == "absent"


def test_ntlmv1_refused():
    acceptor, auth = crafted(nt_response=b"\x42" * 24)
    assert verify_reason(acceptor, auth.pack()) == "ntlmv1"


def test_lm_only_refused():
    acceptor, auth = crafted(nt_response=b"", lm_response=b"\x42" * 24)
    assert verify_reason(acceptor, auth.pack()) == "lm-only"


@pytest.mark.parametrize("lm, user", [(b"", ""), (b"\x00", ""), (b"", "carol"), (b"\x00", "x")])
def test_anonymous_refused(lm, user):
    acceptor, auth = crafted(nt_response=b"", lm_response=lm, user=user)
    assert verify_reason(acceptor, auth.pack()) == "anonymous"


def test_empty_user_with_response_is_anonymous():
    acceptor, auth = crafted(user="")
    assert verify_reason(acceptor, auth.pack()) == "anonymous"


def test_short_nt_response_malformed():
    acceptor, auth = crafted(nt_response=b"\x42" * 30)
    assert verify_reason(acceptor, auth.pack()) == "malformed"


def test_bad_resp_type_malformed():
    acceptor, auth = crafted()
    nt = bytearray(auth.nt_challenge_response)
    nt[16] = 2
    auth.nt_challenge_response = bytes(nt)
    assert verify_reason(acceptor, auth.pack()) == "malformed"


# --- structural negative vectors --------------------------------------------------------------


def reason_of(fn, *args) -> str:
    with pytest.raises(NtlmError) as err:
        fn(*args)
    return err.value.reason


def test_truncated_messages():
    _, auth = crafted()
    data = auth.pack()
    for cut in (0, 7, 8, 11, 12, 40, 63, 100, len(data) - 1):
        assert reason_of(AuthenticateMessage.unpack, data[:cut]) == "malformed", cut
    negotiate = NegotiateMessage(CRAFT_FLAGS, "DOM", "WS").pack()
    for cut in (0, 12, 15, len(negotiate) - 1):
        assert reason_of(NegotiateMessage.unpack, negotiate[:cut]) == "malformed", cut


def _set_field(data: bytes, pos: int, length: int, offset: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<HHI", out, pos, length, length, offset)
    return bytes(out)


def test_offsets_out_of_range():
    _, auth = crafted()
    data = auth.pack()
    assert reason_of(AuthenticateMessage.unpack, _set_field(data, 36, 10, len(data))) == "malformed"
    assert reason_of(AuthenticateMessage.unpack, _set_field(data, 36, 10, 0xFFFFFFFF)) == "malformed"
    assert reason_of(AuthenticateMessage.unpack, _set_field(data, 36, 0xFFFF, 88)) == "malformed"
    # length larger than the whole token
    assert reason_of(AuthenticateMessage.unpack, _set_field(data, 20, len(data) + 1, 88)) == "malformed"


def test_offsets_into_header():
    _, auth = crafted()
    data = auth.pack()
    for offset in (0, 8, 32, 63):
        assert reason_of(AuthenticateMessage.unpack, _set_field(data, 36, 4, offset)) == "malformed"
    negotiate = NegotiateMessage(NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_VERSION, "DOM", None, Version()).pack()
    assert reason_of(NegotiateMessage.unpack, _set_field(negotiate, 16, 3, 34)) == "malformed"


def test_overlapping_fields():
    _, auth = crafted()
    data = auth.pack()
    (_, _, user_offset) = struct.unpack_from("<HHI", data, 36)
    # workstation starting inside the user name
    assert reason_of(AuthenticateMessage.unpack, _set_field(data, 44, 4, user_offset + 2)) == "malformed"


def test_empty_field_offset_is_ignored():
    _, auth = crafted()
    data = _set_field(auth.pack(), 44, 0, 0xFFFFFFFF)  # empty workstation, absurd offset
    assert AuthenticateMessage.unpack(data).workstation == ""


def test_wrong_signature_and_type():
    _, auth = crafted()
    data = auth.pack()
    assert reason_of(AuthenticateMessage.unpack, b"NTLMSSQ\x00" + data[8:]) == "malformed"
    assert reason_of(NegotiateMessage.unpack, data) == "unexpected-message"
    assert reason_of(AuthenticateMessage.unpack, NegotiateMessage(CRAFT_FLAGS).pack()) == "unexpected-message"
    bad_type = data[:8] + struct.pack("<I", 7) + data[12:]
    assert reason_of(AuthenticateMessage.unpack, bad_type) == "unexpected-message"


def test_oversize_tokens():
    big = b"NTLMSSP\x00\x03\x00\x00\x00" + b"\x00" * MAX_MESSAGE_SIZE
    assert reason_of(AuthenticateMessage.unpack, big) == "too-large"
    assert reason_of(NegotiateMessage.unpack, big) == "too-large"
    acceptor = make_acceptor()
    assert reason_of(acceptor.challenge, big) == "too-large"


def test_odd_utf16_malformed():
    _, auth = crafted()
    data = auth.pack()
    length, _, offset = struct.unpack_from("<HHI", data, 36)
    assert reason_of(AuthenticateMessage.unpack, _set_field(data, 36, length - 1, offset)) == "malformed"


def test_av_pair_errors():
    eol = b"\x00\x00\x00\x00"
    assert reason_of(TargetInfo.unpack, b"\x02\x00\x02\x00ab") == "malformed"  # no EOL
    assert reason_of(TargetInfo.unpack, b"\x02\x00\x09\x00ab" + eol) == "malformed"  # overrun
    dup = b"\x02\x00\x02\x00ab" * 2 + eol
    assert reason_of(TargetInfo.unpack, dup) == "malformed"
    assert reason_of(TargetInfo.unpack, b"\x07\x00\x04\x00abcd" + eol) == "malformed"  # timestamp size
    assert reason_of(TargetInfo.unpack, b"\x00\x00\x01\x00a") == "malformed"  # EOL with a value
    many = b"".join(struct.pack("<HH", 100 + i, 0) for i in range(70)) + eol
    assert reason_of(TargetInfo.unpack, many) == "malformed"
    ti = TargetInfo.unpack(b"\x63\x00\x01\x00z" + eol + b"trailing")
    assert ti.get(0x63) == b"z"


def test_out_of_order_calls():
    acceptor = make_acceptor()
    assert reason_of(acceptor.identify, b"x") == "unexpected-message"
    assert reason_of(acceptor.verify, [nt_hash("Password")], NOW) == "unexpected-message"
    with pytest.raises(NtlmError, match="unexpected-message"):
        _ = acceptor.session
    negotiate = NegotiateMessage(CRAFT_FLAGS).pack()
    challenge = acceptor.challenge(negotiate)
    assert reason_of(acceptor.challenge, negotiate) == "unexpected-message"
    assert reason_of(acceptor.verify, [nt_hash("Password")], NOW) == "unexpected-message"
    acceptor.identify(craft(acceptor, challenge, negotiate).pack())
    acceptor.verify([nt_hash("Password")], NOW)
    assert reason_of(acceptor.verify, [nt_hash("Password")], NOW) == "unexpected-message"


def test_failure_is_terminal():
    acceptor = make_acceptor()
    assert reason_of(acceptor.challenge, b"garbage") == "malformed"
    assert reason_of(acceptor.challenge, NegotiateMessage(CRAFT_FLAGS).pack()) == "unexpected-message"


def test_negotiate_without_charset_unsupported():
    acceptor = make_acceptor()
    assert reason_of(acceptor.challenge, NegotiateMessage(NF.NEGOTIATE_NTLM).pack()) == "unsupported"


def test_short_negotiate_and_roundtrips():
    short = b"NTLMSSP\x00\x01\x00\x00\x00" + struct.pack("<I", int(CRAFT_FLAGS))
    assert NegotiateMessage.unpack(short) == NegotiateMessage(CRAFT_FLAGS)
    msg = NegotiateMessage(CRAFT_FLAGS, "DOM", "WS", Version(6, 1, 7601, 15))
    assert NegotiateMessage.unpack(msg.pack()) == msg
    acceptor = make_acceptor()
    challenge = ChallengeMessage.unpack(acceptor.challenge(msg.pack()))
    assert challenge.pack() == ChallengeMessage.unpack(challenge.pack()).pack()
    assert challenge.target_info.timestamp() == NOW
    assert challenge.target_info.get(AvId.MsvAvDnsComputerName).decode("utf-16-le") == "gw1.example.test"
    assert not challenge.flags & (NF.NEGOTIATE_LM_KEY | NF.NEGOTIATE_DATAGRAM)


def test_no_secrets_in_reprs_and_errors():
    acceptor, auth = crafted()
    text = repr(auth) + repr(acceptor)
    assert auth.nt_challenge_response[:16].hex() not in text
    assert repr(auth.nt_challenge_response[:16]) not in text
    acceptor.identify(auth.pack())
    with pytest.raises(NtlmError) as err:
        acceptor.verify([nt_hash("wrong")], NOW)
    assert nt_hash("wrong").hex() not in str(err.value)
    result = acceptor.verify([nt_hash("Password")], NOW)
    assert result.exported_session_key.hex() not in repr(result)
    assert repr(result.exported_session_key) not in repr(result)
    assert "key" not in repr(acceptor.session).lower()


def test_bad_arguments():
    with pytest.raises(NtlmError, match="bad-argument"):
        make_acceptor(server_challenge=b"short")
    with pytest.raises(NtlmError, match="bad-argument"):
        make_acceptor(mode="maybe")
    acceptor, auth = crafted()
    acceptor.identify(auth.pack())
    with pytest.raises(NtlmError, match="bad-argument"):
        acceptor.verify([b"\x00" * 16] * 33, NOW)
    with pytest.raises(NtlmError, match="bad-argument"):
        acceptor.verify([b"short"], NOW)

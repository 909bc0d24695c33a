"""A simulated Access Edge / registrar for the demo, the tests and the benchmark (issue 18).

It speaks SIP over TLS, frames with ``protocols/sip.py`` and keeps registrations (dropped with
their connection, as Lync's registrar does for connection-oriented clients). Authentication as
MS-SIPAE describes it:

* a REGISTER without credentials gets 401 with ``WWW-Authenticate: NTLM`` and ``TLS-DSK``
  challenges (realm ``SIP Communications Service``, ``targetname``, ``version``);
* **NTLM** is a real acceptor (``protocols/ntlm.py``'s :class:`NtlmAcceptor`, NTLMv2 with MIC):
  the first leg's ``gssapi-data`` is empty (MS-SIPAE's connectionless form: the registrar makes
  up the NEGOTIATE) or a NEGOTIATE (what an SSPI-style initiator such as pyspnego produces; the
  MIC then covers it), the 401 carries the CHALLENGE and an ``opaque`` naming the security
  association, the next REGISTER the AUTHENTICATE; the password is checked against the
  account's NT hash. ``on_ntlm`` (user, ok) is called after each check — the Samba tests make
  it reach AD the way the Edge's pass-through to a DC does;
* **TLS-DSK-shaped**: two legs whose ``gssapi-data`` only looks like TLS records
  (``\\x16\\x03..``): a "client hello" answered by a 401 with a "server hello", then a
  "certificate" — a token the registrar was given for that address of record. No TLS runs
  inside; it is there so that the relay's handling of TLS-DSK legs can be shown;
* after the handshake every message must be **signed** (``crand``/``cnum``/``response``) over
  the buffer of MS-SIP 3.1.4.2 (:func:`signature_buffer`): NTLM GSS_GetMIC with the
  association's session key, HMAC-SHA1 for TLS-DSK; a message whose signature does not verify
  — one the relay would have changed — is refused (403) and counted in ``bad_signatures``. Its
  own 200s carry ``Authentication-Info`` with ``rspauth``.

``received`` keeps the exact bytes of every message from a client, in order: what the tests
compare with what the client sent. A SUBSCRIBE is answered 200 and followed by a NOTIFY.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..protocols import ntlm
from ..protocols.sip import (
    KeepAlive,
    SipError,
    SipFramer,
    SipMessage,
    parse_message,
    sip_device_facts,
)
from ..protocols.sipauth import SipAuth, auth_fields

log = logging.getLogger("ucgate.lab.registrar")

REALM = "SIP Communications Service"
# A NEGOTIATE_MESSAGE as Windows' connectionless NTLM would have it (unicode, NTLM, ESS,
# signing, 128-bit, key exchange), for a first leg with an empty gssapi-data.
SYNTHETIC_NEGOTIATE = ntlm.NegotiateMessage(flags=ntlm.NegotiateFlags(0xE0088297)).pack()


def signature_buffer(scheme: str, rand: str, num: int, realm: str, targetname: str, msg: SipMessage) -> bytes:
    """The buffer a message signature covers (MS-SIP 3.1.4.2): each value in angle brackets, as
    it appears in the message — scheme, crand/srand, cnum/snum, realm, targetname, Call-ID,
    CSeq number and method, From URI and tag, To tag, Expires (empty when absent) and, for a
    response, its status code."""
    parts = [
        scheme,
        rand,
        str(num),
        realm,
        targetname,
        msg.call_id,
        str(msg.cseq.number),
        msg.cseq.method,
        msg.from_.uri,
        msg.from_.tag or "",
        msg.to.tag or "",
        msg.get("expires") or "",
    ]
    if msg.status is not None:
        parts.append(str(msg.status))
    return b"".join(b"<" + p.encode("utf-8") + b">" for p in parts)


@dataclass
class Account:
    """A user the registrar knows: the logon name (sAMAccountName), its password, its SIP address
    of record (``alice@contoso.com``)."""

    sam: str
    password: str
    aor: str


@dataclass
class _Association:
    opaque: str
    scheme: str
    aor: str
    acceptor: ntlm.NtlmAcceptor | None = None
    key: bytes | None = None  # TLS-DSK-shaped: the HMAC key
    established: bool = False
    user: str | None = None
    snum: int = 0
    srand: str = field(default_factory=lambda: secrets.token_hex(4))

    def verify(self, buffer: bytes, response: str) -> bool:
        try:
            sig = bytes.fromhex(response)
        except ValueError:
            return False
        if self.scheme == "NTLM":
            assert self.acceptor is not None
            try:
                self.acceptor.session.verify_mic(buffer, sig)
                return True
            except ntlm.NtlmError:
                return False
        assert self.key is not None
        return hmac.compare_digest(hmac.new(self.key, buffer, hashlib.sha1).digest(), sig)

    def sign(self, buffer: bytes) -> str:
        if self.scheme == "NTLM":
            assert self.acceptor is not None
            return self.acceptor.session.sign(buffer).hex()
        assert self.key is not None
        return hmac.new(self.key, buffer, hashlib.sha1).hexdigest()


@dataclass
class Registration:
    aor: str
    device_id: str | None
    contact: str | None
    connection: int
    expires: int
    at: float = field(default_factory=time.time)


class LabRegistrar:
    """The simulated Edge. ``tls_dsk`` maps a "certificate" token to the address of record it
    was issued for."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        accounts: list[Account],
        *,
        targetname: str = "edge.contoso.com",
        netbios_domain: str = "CONTOSO",
        dns_domain: str = "contoso.com",
        tls_dsk: Mapping[str, str] | None = None,
        on_ntlm: Callable[[str, bool], None] | None = None,
        record: bool = True,
        check_signatures: bool = True,
    ) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(str(cert), str(key))
        self.accounts = list(accounts)
        self.targetname = targetname
        self.netbios_domain, self.dns_domain = netbios_domain, dns_domain
        self.tls_dsk = dict(tls_dsk or {})
        self.on_ntlm = on_ntlm
        self.record = record  # keep received bytes (off in the benchmark)
        self.check_signatures = check_signatures  # off in the benchmark: signed messages just answered
        self.received: list[bytes] = []
        self.registrations: dict[str, Registration] = {}
        self.bad_signatures = 0
        self.ntlm_checks: list[tuple[str, bool]] = []
        self.connections = 0
        self.messages = 0
        self._server: asyncio.Server | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._conn_ids = iter(range(1, 1 << 62))

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._conn, host, port, ssl=self.ctx)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers.values()):
            w.close()

    def account(self, name: str, domain: str = "") -> Account | None:
        n = name.casefold()
        for a in self.accounts:
            if n in (a.sam.casefold(), a.aor.casefold()):
                return a
        return None

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cid = next(self._conn_ids)
        self.connections += 1
        self._writers[cid] = writer
        framer = SipFramer()
        sas: dict[str, _Association] = {}
        try:
            while data := await reader.read(65536):
                framer.feed(data)
                while (ev := framer.next_event()) is not None:
                    if isinstance(ev, KeepAlive):
                        if ev.completes_ping:
                            writer.write(b"\r\n")
                        continue
                    self.messages += 1
                    if self.record:
                        self.received.append(ev.raw)
                    for out in self._handle(ev, sas, cid):
                        writer.write(out)
                await writer.drain()
        except SipError as e:
            log.warning("lab registrar: refused input (%s: %s); closing", e.reason, e.detail)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self._writers.pop(cid, None)
            for aor in [a for a, r in self.registrations.items() if r.connection == cid]:
                del self.registrations[aor]
            writer.close()

    # --- messages -------------------------------------------------------------------------------
    def _handle(self, msg: SipMessage, sas: dict[str, _Association], cid: int) -> list[bytes]:
        if not msg.is_request:
            return []  # the client's answers to our NOTIFYs
        if msg.method == "ACK":
            return []
        try:
            creds = auth_fields(msg, "Authorization")
        except SipError:
            return [self._answer(msg, 400)]
        cred = creds[0] if creds else None
        if cred is not None and cred.response is not None:
            sa = sas.get(cred.opaque or "")
            if sa is None or not sa.established:
                return [self._answer(msg, 401, challenge=True)]
            buf = signature_buffer(sa.scheme, cred.crand or "", cred.cnum or 0, REALM, self.targetname, msg)
            if self.check_signatures and not sa.verify(buf, cred.response):
                self.bad_signatures += 1
                return [self._answer(msg, 403, diag='1001;reason="bad signature"')]
            return self._signed(msg, sa, cid)
        if msg.method != "REGISTER":
            return [self._answer(msg, 401, challenge=True)]
        if cred is None:
            return [self._answer(msg, 401, challenge=True)]
        if cred.scheme == "NTLM":
            return [self._ntlm(msg, cred, sas, cid)]
        if cred.scheme == "TLS-DSK":
            return [self._tls_dsk(msg, cred, sas, cid)]
        return [self._answer(msg, 401, challenge=True)]

    def _ntlm(self, msg: SipMessage, cred: SipAuth, sas: dict[str, _Association], cid: int) -> bytes:
        token = cred.gssapi_data or b""
        aor = msg.registered_user().aor
        if not token or struct.unpack_from("<I", token, 8)[0] == 1:
            sa = _Association(secrets.token_hex(4).upper(), "NTLM", aor)
            sa.acceptor = ntlm.NtlmAcceptor(
                server_challenge=os.urandom(8),
                now=ntlm.filetime(time.time()),
                netbios_domain=self.netbios_domain,
                netbios_computer="EDGE",
                dns_domain=self.dns_domain,
                dns_computer=self.targetname,
                channel_binding_data=None,
                extended_protection="off",
            )
            try:
                challenge = sa.acceptor.challenge(token or SYNTHETIC_NEGOTIATE)
            except ntlm.NtlmError:
                return self._answer(msg, 400)
            sas[sa.opaque] = sa
            value = (
                f'NTLM opaque="{sa.opaque}", gssapi-data="{base64.b64encode(challenge).decode()}", '
                f'targetname="{self.targetname}", realm="{REALM}", version=3'
            )
            return self._answer(msg, 401, headers=[f"WWW-Authenticate: {value}"])
        known = sas.get(cred.opaque or "")
        if known is None or known.acceptor is None or known.established:
            return self._answer(msg, 401, challenge=True)
        sa, acceptor = known, known.acceptor
        try:
            who = acceptor.identify(token)
        except ntlm.NtlmError:
            return self._answer(msg, 401, challenge=True)
        user = who.user.partition("@")[0] if "@" in who.user else who.user
        account = self.account(who.user) or self.account(user)
        ok = False
        if account is not None and account.aor.casefold() == aor.casefold():
            try:
                acceptor.verify([ntlm.nt_hash(account.password)], ntlm.filetime(time.time()))
                ok = True
            except ntlm.NtlmError:
                ok = False
        self.ntlm_checks.append((user, ok))
        if self.on_ntlm is not None:
            self.on_ntlm(account.sam if account is not None else user, ok)
        del sas[sa.opaque]
        if not ok:
            return self._answer(msg, 401, challenge=True)
        sa.established, sa.user = True, account.sam if account else user
        sas[sa.opaque] = sa
        return self._registered(msg, sa, cid)

    def _tls_dsk(self, msg: SipMessage, cred: SipAuth, sas: dict[str, _Association], cid: int) -> bytes:
        token = cred.gssapi_data or b""
        aor = msg.registered_user().aor
        if token.startswith(b"\x16\x03\x01client-hello"):
            sa = _Association(secrets.token_hex(4).upper(), "TLS-DSK", aor)
            sas[sa.opaque] = sa
            hello = base64.b64encode(b"\x16\x03\x03server-hello:" + os.urandom(16)).decode()
            value = (
                f'TLS-DSK opaque="{sa.opaque}", gssapi-data="{hello}", targetname="{self.targetname}", '
                f'realm="{REALM}", version=4'
            )
            return self._answer(msg, 401, headers=[f"WWW-Authenticate: {value}"])
        known = sas.get(cred.opaque or "")
        prefix = b"\x16\x03\x03client-cert:"
        if known is None or known.scheme != "TLS-DSK" or known.established or not token.startswith(prefix):
            return self._answer(msg, 401, challenge=True)
        sa = known
        cert = token[len(prefix) :].decode("ascii", "replace")
        del sas[sa.opaque]
        if self.tls_dsk.get(cert, "").casefold() != aor.casefold():
            return self._answer(msg, 401, challenge=True)
        sa.key = tls_dsk_key(cert, sa.opaque)
        sa.established, sa.user = True, aor
        sas[sa.opaque] = sa
        return self._registered(msg, sa, cid)

    def _registered(self, msg: SipMessage, sa: _Association, cid: int) -> bytes:
        expires = int(msg.get("expires") or 3600)
        aor = msg.registered_user().aor.lower()
        if expires == 0:
            self.registrations.pop(aor, None)
        else:
            facts = sip_device_facts(msg)
            contact = msg.get("contact")
            self.registrations[aor] = Registration(aor, facts.device_id, contact, cid, expires)
        return self._answer(
            msg,
            200,
            sa=sa,
            headers=[f"Expires: {expires}"] + ([f"Contact: {msg.get('contact')}"] if msg.get("contact") else []),
        )

    def _signed(self, msg: SipMessage, sa: _Association, cid: int) -> list[bytes]:
        if msg.method == "REGISTER":
            return [self._registered(msg, sa, cid)]
        out = [self._answer(msg, 200, sa=sa)]
        if msg.method == "SUBSCRIBE":
            out.append(self._notify(msg))
        return out

    def _notify(self, subscribe: SipMessage) -> bytes:
        body = b'<roamingData xmlns="http://schemas.microsoft.com/2006/09/sip/roaming-self"/>'
        contact = subscribe.from_.uri
        lines = [
            f"NOTIFY {contact} SIP/2.0",
            f"Via: SIP/2.0/TLS {self.targetname}:5061;branch=z9hG4bK{secrets.token_hex(8)}",
            f"From: <{subscribe.to.uri}>;tag={secrets.token_hex(4)}",
            f"To: <{subscribe.from_.uri}>;tag={subscribe.from_.tag or 'x'}",
            f"Call-ID: {subscribe.call_id}",
            "CSeq: 1 NOTIFY",
            "Max-Forwards: 70",
            f"Event: {subscribe.get('event') or 'vnd-microsoft-roaming-self'}",
            "Subscription-State: active;expires=3600",
            "Content-Type: application/vnd-microsoft-roaming-self+xml",
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _answer(
        self,
        req: SipMessage,
        status: int,
        *,
        headers: list[str] | None = None,
        challenge: bool = False,
        sa: _Association | None = None,
        diag: str | None = None,
    ) -> bytes:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}.get(status, "Error")
        lines = [f"SIP/2.0 {status} {reason}".encode()]
        for f in req.headers:
            if f.canonical in ("via", "from", "call-id", "cseq"):
                lines.append(f.raw)
            elif f.canonical == "to":
                lines.append(f.raw if req.to.tag else f.raw + f";tag={secrets.token_hex(4)}".encode())
        extra = list(headers or [])
        if challenge:
            sts = f"https://{self.targetname}/CertProv/CertProvisioningService.svc"
            extra += [
                f'WWW-Authenticate: NTLM realm="{REALM}", targetname="{self.targetname}", version=3',
                f'WWW-Authenticate: TLS-DSK realm="{REALM}", targetname="{self.targetname}", version=4, sts-uri="{sts}"',
            ]
        if diag:
            extra.append(f"ms-diagnostics: {diag}")
        extra.append("Server: ucgate-lab-registrar")
        lines += [h.encode() for h in extra]
        lines.append(b"Content-Length: 0")
        raw = b"\r\n".join(lines) + b"\r\n\r\n"
        if sa is None:
            return raw
        answer = parse_message(raw)
        sa.snum += 1
        buf = signature_buffer(sa.scheme, sa.srand, sa.snum, REALM, self.targetname, answer)
        info = (
            f'Authentication-Info: {sa.scheme} opaque="{sa.opaque}", qop="auth", realm="{REALM}", '
            f'targetname="{self.targetname}", rspauth="{sa.sign(buf)}", srand="{sa.srand}", snum="{sa.snum}"'
        )
        head, _, _ = raw.rpartition(b"Content-Length: 0\r\n\r\n")
        return head + info.encode() + b"\r\nContent-Length: 0\r\n\r\n"


def tls_dsk_key(cert_token: str, opaque: str) -> bytes:
    """The TLS-DSK-shaped association's signing key (both sides derive it from what they share)."""
    return hashlib.sha256(f"{cert_token}|{opaque}".encode()).digest()


async def start_registrar(
    cert: Path, key: Path, accounts: list[Account], host: str = "127.0.0.1", port: int = 0, **kw
) -> LabRegistrar:
    reg = LabRegistrar(cert, key, accounts, **kw)
    await reg.start(host, port)
    return reg

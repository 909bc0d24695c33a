"""A SIP-over-TLS client for the lab: the tests, the benchmark and the demo's "try it".

Blocking sockets (one client per thread). NTLM is pyspnego's initiator (a test dependency,
imported when an NTLM sign-in is made), TLS-DSK the lab registrar's shapes
(``lab/registrar.py``). After the handshake every request is signed over the buffer of MS-SIP
3.1.4.2 and the registrar's ``rspauth`` is verified. ``sent`` keeps the exact bytes of every
message sent, to compare with what the registrar received.

    python -m ucgate.lab.sipclient --port 5061 --ca cert.pem --aor alice@contoso.com \\
        --login 'CONTOSO\\alice' --password 'Passw0rd!'
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ..protocols.sip import (
    KeepAlive,
    SipError,
    SipFramer,
    SipMessage,
    instance_from_epid,
    parse_message,
)
from ..protocols.sipauth import auth_fields
from .registrar import REALM, signature_buffer, tls_dsk_key

DEFAULT_UA = "UCCAPI/16.0.4849.1000 OC/16.0.4849.1000 (Skype for Business)"


class SipClientError(Exception):
    pass


@dataclass
class _SA:
    scheme: str
    opaque: str
    targetname: str
    ctx: object = None  # pyspnego context (NTLM)
    key: bytes | None = None  # TLS-DSK-shaped
    crand: str = ""
    cnum: int = 0

    def sign(self, buffer: bytes) -> str:
        if self.scheme == "NTLM":
            return self.ctx.sign(buffer).hex()  # type: ignore[attr-defined]
        assert self.key is not None
        return hmac.new(self.key, buffer, hashlib.sha1).hexdigest()

    def verify(self, buffer: bytes, rspauth: str) -> bool:
        sig = bytes.fromhex(rspauth)
        if self.scheme == "NTLM":
            try:
                self.ctx.verify(buffer, sig)  # type: ignore[attr-defined]
                return True
            except Exception:  # noqa: BLE001 - pyspnego's BadMICError and friends
                return False
        assert self.key is not None
        return hmac.compare_digest(hmac.new(self.key, buffer, hashlib.sha1).digest(), sig)


class SipClient:
    """One SIP client install (its epid, hence its ``+sip.instance``) on one TLS connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        aor: str,
        ca_file: str | None,
        login: str | None = None,
        password: str | None = None,
        server_hostname: str = "localhost",
        epid: str | None = None,
        user_agent: str = DEFAULT_UA,
        source: str | None = None,
        timeout: float = 5.0,
        cert_token: str | None = None,
        preamble: bytes = b"",
    ) -> None:
        self.host, self.port, self.aor = host, port, aor
        self.login, self.password, self.cert_token = login, password, cert_token
        self.server_hostname, self.source, self.timeout = server_hostname, source, timeout
        self.epid = epid or secrets.token_hex(5)
        self.instance = instance_from_epid(self.epid)
        self.user_agent = user_agent
        self.preamble = preamble  # sent before the TLS handshake (a PROXY protocol header, in tests)
        self.ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        self.sock: ssl.SSLSocket | None = None
        self.framer = SipFramer()
        self.call_id = f"{uuid.uuid4().hex}"
        self.tag = secrets.token_hex(5)
        self.cseq = 0
        self.sa: _SA | None = None
        self.sent: list[bytes] = []
        self.notifies: list[SipMessage] = []
        self.server_signatures_verified = 0
        self.last_challenge: SipMessage | None = None

    # --- the connection -----------------------------------------------------------------
    def connect(self) -> SipClient:
        raw = socket.create_connection(
            (self.host, self.port), timeout=self.timeout, source_address=(self.source, 0) if self.source else None
        )
        if self.preamble:
            raw.sendall(self.preamble)
        self.sock = self.ctx.wrap_socket(raw, server_hostname=self.server_hostname)
        return self

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self) -> SipClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> SipMessage | KeepAlive | None:
        """The next event from the server; None when it closed the connection."""
        assert self.sock is not None
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        while True:
            ev = self.framer.next_event()
            if ev is not None:
                return ev
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                return None
            self.framer.feed(data)

    def is_closed_by_server(self, timeout: float = 2.0) -> bool:
        """True once the server closed (EOF or reset) within ``timeout``."""
        try:
            while True:
                ev = self.recv(timeout)
                if ev is None:
                    return True
        except TimeoutError:
            return False

    # --- messages -----------------------------------------------------------------------
    def build(
        self,
        method: str,
        uri: str | None = None,
        *,
        headers: Sequence[str] = (),
        body: bytes = b"",
        to: str | None = None,
        auth: str | None = None,
        cseq: int | None = None,
        call_id: str | None = None,
    ) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        local = "127.0.0.1"
        lines = [
            f"{method} {uri or 'sip:' + self.aor.partition('@')[2]} SIP/2.0",
            f"Via: SIP/2.0/TLS {local}:5061;branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{self.aor}>;tag={self.tag};epid={self.epid}",
            f"To: <{to or 'sip:' + self.aor}>",
            f"Call-ID: {call_id or self.call_id}",
            f"CSeq: {cseq} {method}",
            *headers,
            f"User-Agent: {self.user_agent}",
        ]
        if auth:
            lines.append(auth)
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _contact(self) -> str:
        return (
            f'Contact: <sip:127.0.0.1:5061;transport=tls;ms-opaque={self.tag}>;methods="INVITE, MESSAGE, '
            f'INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY";proxy=replace;'
            f'+sip.instance="<urn:uuid:{self.instance}>"'
        )

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.send_raw(data)

    def signed(self, method: str, uri: str | None = None, **kw) -> bytes:
        """A request signed with the association (MS-SIP 3.1.4.2)."""
        sa = self.sa
        if sa is None:
            raise SipClientError("not signed in")
        self.cseq += 1
        kw.setdefault("cseq", self.cseq)
        unsigned = parse_message(self.build(method, uri, **kw))
        sa.cnum += 1
        buf = signature_buffer(sa.scheme, sa.crand, sa.cnum, REALM, sa.targetname, unsigned)
        auth = (
            f'Authorization: {sa.scheme} qop="auth", opaque="{sa.opaque}", realm="{REALM}", '
            f'targetname="{sa.targetname}", crand="{sa.crand}", cnum="{sa.cnum}", response="{sa.sign(buf)}"'
        )
        return self.build(method, uri, auth=auth, **kw)

    def answer(self, timeout: float | None = None) -> SipMessage | None:
        """The next response (server requests in between are answered 200 and kept in
        ``notifies``; keep-alives skipped); None when the server closed."""
        while True:
            ev = self.recv(timeout)
            if ev is None:
                return None
            if isinstance(ev, KeepAlive):
                continue
            if ev.is_request:
                self.notifies.append(ev)
                self.send(self._ok(ev))
                continue
            if ev.status is not None and ev.status < 200:
                continue
            self._check_rspauth(ev)
            return ev

    def _ok(self, req: SipMessage) -> bytes:
        lines = ["SIP/2.0 200 OK"] + [
            f.raw.decode() for f in req.headers if f.canonical in ("via", "from", "to", "call-id", "cseq")
        ]
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def _check_rspauth(self, answer: SipMessage) -> None:
        if self.sa is None:
            return
        try:
            infos = auth_fields(answer, "Authentication-Info")
        except SipError:
            return
        for info in infos:
            if info.rspauth and info.srand is not None and info.snum is not None:
                buf = signature_buffer(self.sa.scheme, info.srand, info.snum, REALM, self.sa.targetname, answer)
                if not self.sa.verify(buf, info.rspauth):
                    raise SipClientError("the server's signature does not verify")
                self.server_signatures_verified += 1

    def request(self, method: str, uri: str | None = None, **kw) -> SipMessage | None:
        self.send(self.signed(method, uri, **kw))
        return self.answer()

    # --- signing in ----------------------------------------------------------------------
    def register(self, scheme: str = "NTLM", *, expires: int | None = None) -> SipMessage | None:
        """REGISTER with the handshake of ``scheme`` (NTLM or TLS-DSK); the final answer
        (200 when signed in; None when the server closed the connection)."""
        extra = [self._contact(), "Supported: gruu-10, adhoclist, msrtc-event-categories", "Event: registration"]
        if expires is not None:
            extra.append(f"Expires: {expires}")
        if self.sa is not None:  # a refresh: signed
            return self.request("REGISTER", headers=extra)
        self.send(self.build("REGISTER", headers=extra))
        first = self.answer()
        if first is None or first.status != 401:
            return first
        target = self._targetname(first, scheme)
        if scheme == "NTLM":
            return self._ntlm(extra, target)
        if scheme == "TLS-DSK":
            return self._tls_dsk(extra, target)
        raise SipClientError(f"unsupported scheme {scheme}")

    @staticmethod
    def _targetname(challenge: SipMessage, scheme: str) -> str:
        for c in auth_fields(challenge, "WWW-Authenticate"):
            if c.scheme == scheme and c.targetname:
                return c.targetname
        raise SipClientError(f"no {scheme} challenge")

    def _leg(
        self, extra: list[str], scheme: str, target: str, token: bytes, opaque: str | None, version: int
    ) -> SipMessage | None:
        params = [
            'qop="auth"',
            *([f'opaque="{opaque}"'] if opaque else []),
            f'realm="{REALM}"',
            f'targetname="{target}"',
            f'gssapi-data="{base64.b64encode(token).decode()}"',
            f"version={version}",
        ]
        self.send(self.build("REGISTER", headers=extra, auth=f"Authorization: {scheme} " + ", ".join(params)))
        return self.answer()

    @staticmethod
    def _challenge(answer: SipMessage, scheme: str):
        for c in auth_fields(answer, "WWW-Authenticate"):
            if c.scheme == scheme and c.gssapi_data and c.opaque:
                return c
        return None

    def _ntlm(self, extra: list[str], target: str) -> SipMessage | None:
        import spnego

        if self.login is None or self.password is None:
            raise SipClientError("NTLM needs login and password")
        ctx = spnego.client(
            self.login,
            self.password,
            hostname=target,
            service="sip",
            protocol="ntlm",
            options=spnego.NegotiateOptions.use_ntlm,
        )
        answer = self._leg(extra, "NTLM", target, ctx.step() or b"", None, 3)
        if answer is None or answer.status != 401:
            return answer
        challenge = self._challenge(answer, "NTLM")
        if challenge is None:
            return answer
        final = self._leg(extra, "NTLM", target, ctx.step(challenge.gssapi_data) or b"", challenge.opaque, 3)
        if final is not None and final.status == 200:
            self.sa = _SA("NTLM", challenge.opaque or "", target, ctx=ctx, crand=secrets.token_hex(4))
            self._check_rspauth(final)
        elif final is not None:
            self.last_challenge = final
        return final

    def _tls_dsk(self, extra: list[str], target: str) -> SipMessage | None:
        if self.cert_token is None:
            raise SipClientError("TLS-DSK needs cert_token")
        answer = self._leg(extra, "TLS-DSK", target, b"\x16\x03\x01client-hello:" + secrets.token_bytes(16), None, 4)
        if answer is None or answer.status != 401:
            return answer
        challenge = self._challenge(answer, "TLS-DSK")
        if challenge is None:
            return answer
        token = b"\x16\x03\x03client-cert:" + self.cert_token.encode()
        final = self._leg(extra, "TLS-DSK", target, token, challenge.opaque, 4)
        if final is not None and final.status == 200:
            self.sa = _SA(
                "TLS-DSK",
                challenge.opaque or "",
                target,
                key=tls_dsk_key(self.cert_token, challenge.opaque or ""),
                crand=secrets.token_hex(4),
            )
            self._check_rspauth(final)
        return final


def diagnostics(answer: SipMessage | None) -> str | None:
    """The ``ms-diagnostics`` of an answer, if any."""
    return answer.get("ms-diagnostics") if answer is not None else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ucgate.lab.sipclient", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", help="CA file to verify the listener with")
    p.add_argument("--name", default="localhost", help="the name the listener's certificate must carry")
    p.add_argument("--aor", required=True, help="the SIP address, e.g. alice@contoso.com")
    p.add_argument("--login", required=True, help="the NTLM user, e.g. CONTOSO\\alice")
    p.add_argument("--password", required=True)
    p.add_argument("--epid", help="the client install's endpoint id (a new one each run by default)")
    a = p.parse_args(argv)
    c = SipClient(
        a.host, a.port, aor=a.aor, ca_file=a.ca, login=a.login, password=a.password, server_hostname=a.name, epid=a.epid
    )
    with c:
        answer = c.register()
        print(f"REGISTER: {answer.start_line.decode() if answer else 'connection closed'}")
        if answer is not None and answer.get("ms-diagnostics"):
            print(f"  ms-diagnostics: {answer.get('ms-diagnostics')}")
        print(f"  device (+sip.instance): {c.instance}")
        if answer is not None and answer.status == 200:
            for method in ("SUBSCRIBE", "MESSAGE"):
                r = c.request(method, headers=["Event: vnd-microsoft-roaming-self"] if method == "SUBSCRIBE" else [])
                print(f"{method}: {r.start_line.decode() if r else 'connection closed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The decide stage of the gateway's pipeline: which device is this, and may it come in?

For the services that carry a device id (ActiveSync, UCWA, CertProv) the gate works out the
request's :class:`~ucgate.protocols.devices.DeviceFacts`, asks the id service
(:meth:`ucgate.id.devices.DeviceService.check`) and turns the answer into what the client
understands. Everything else passes untouched.

Where the device id comes from:

- **EAS**: the plain or base64 query of every request.
- **UCWA**: the ``endpointId`` of ``POST …/applications`` (the body, read up to 16 KiB before
  authentication so that an ASP bound to a device can be checked against it). The application
  id the front end answers with (``Location``, or the body's ``_links.self.href``) and the
  request's ``Bearer`` token, if any, are remembered → device, so later requests on any
  connection are attributed to it. A request on an application id we never saw (a gateway
  restart) gets UCWA's 404 so that the client creates its application again.
- **CertProv**: ``DeviceId`` and ``Entity`` of ``GetAndPublishCert`` (the body, up to 64 KiB).

The hot path stays cheap: an *allowed* decision is cached on the connection per device until
the partnership's trust ends (at most :data:`RECHECK_SECONDS`), so a keep-alive connection
asks the id service about once a minute — which is also what keeps the partnership's
``last_seen`` current while a phone stays on one connection. Refusals are not cached (an approval takes effect on the next
request); a block closes the device's connections (``Gateway.on_event``).

How refusals look to the client (sources: [MS-ASCMD] 2.2.2 "Common Status Codes";
[MS-ASPROV] 2.2.2.53 RemoteWipe and 3.1.5.1; Exchange's Allow/Block/Quarantine, "Provisioning,
policies, remote wipe, and the ABQ list in Exchange ActiveSync", learn.microsoft.com hh509085):

================  ===============================================================  ==============
outcome           ActiveSync (protocol 14.0+ / older)                              UCWA, CertProv
================  ===============================================================  ==============
quarantine, deny  status 129 *DeviceIsBlockedForThisUser* in the command's          403 + JSON
                  top-level element (HTTP 200, WBXML) / HTTP 403                   reason
wipe              ``Provision``: Status 1 + ``<RemoteWipe/>``; other commands:     403
                  status 140 *RemoteWipeRequested* / HTTP 449 (provision again)
challenge         HTTP 401 with the Basic challenge: the user signs in again with the second
                  factor (an ASP with the one-time code or a recovery code appended); users
                  who cannot give one are quarantined instead (``*-approval-required``)
unavailable       HTTP 503 with Retry-After (a remote id service could not be asked; fail closed)
user mismatch     HTTP 403 (EAS ``User=`` or CertProv ``Entity`` of someone else)
================  ===============================================================  ==============

Exchange itself lets a quarantined device sync a single explanatory message; a gateway has no
mailbox to show it from, so quarantine answers like a block (129) and the notifier tells the
user by e-mail or webhook why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .. import metrics
from ..protocols import devices as dev
from ..protocols.activesync import EasRequestError, parse_eas_request
from ..protocols.http1 import RequestHead, ResponseHead
from ..protocols.sfb import Service
from ..protocols.wbxml import E, encode
from .connection import ClientConnection, Identity

if TYPE_CHECKING:
    from ..id.devices import DeviceCheck

log = logging.getLogger("ucgate.gateway.devices")

# An allowed device is re-checked on a live connection at least this often (a trust that was
# shortened, an account policy change, and the partnership's last_seen, which the id service
# writes at most once a minute: id.devices.LAST_SEEN_GRANULARITY). Blocks do not wait for it:
# they close the connection.
RECHECK_SECONDS = 60.0
# Remembered UCWA application ids and bearer tokens (each an entry of ~200 bytes).
MAX_BINDINGS = 100_000
DEFAULT_SERVICES = frozenset({"eas", "ucwa", "certprov"})

STATUS_DEVICE_BLOCKED = 129  # [MS-ASCMD] 2.2.2: DeviceIsBlockedForThisUser
STATUS_REMOTE_WIPE = 140  # [MS-ASCMD] 2.2.2: RemoteWipeRequested
WBXML = b"application/vnd.ms-sync.wbxml"
# The top-level element of the commands whose response carries a Status we can set.
_EAS_TOP = {
    "Provision": "Provision:Provision",
    "FolderSync": "FolderHierarchy:FolderSync",
    "Sync": "AirSync:Sync",
    "Ping": "Ping:Ping",
    "Settings": "Settings:Settings",
}


@dataclass(slots=True)
class _Allowed:
    user: str
    device_id: str | None
    until: float  # wall clock seconds


@dataclass(slots=True)
class DeviceState:
    """What the gate keeps on a connection (``ClientConnection.device``)."""

    # (device id, claimed user) -> an allowed decision
    allowed: dict[tuple[str | None, str | None], _Allowed] = field(default_factory=dict)
    last_query: tuple[str, str] | None = None
    last_facts: dev.DeviceFacts | None = None


@dataclass
class Verdict:
    """Forward (``status`` 0) or answer with ``status``/``headers``/``body``."""

    status: int = 0
    reason: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    identity: Identity | None = None  # the principal, now with its device id
    observe: Callable[[ResponseHead, bytes | None], None] | None = None
    reset_auth: bool = False

    @property
    def forward(self) -> bool:
        return self.status == 0


class _Bindings:
    """A bounded map (LRU) key → (user, facts)."""

    def __init__(self, limit: int = MAX_BINDINGS) -> None:
        self._d: OrderedDict[str, tuple[str, dev.DeviceFacts]] = OrderedDict()
        self.limit = limit

    def put(self, key: str, user: str, facts: dev.DeviceFacts) -> None:
        self._d[key] = (user, facts)
        self._d.move_to_end(key)
        while len(self._d) > self.limit:
            self._d.popitem(last=False)

    def get(self, key: str) -> tuple[str, dev.DeviceFacts] | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v


def _bearer_key(req: RequestHead) -> str | None:
    authz = req.get(b"authorization")
    if authz is None or authz[:7].lower() != b"bearer ":
        return None
    return hashlib.sha256(authz[7:].strip()).hexdigest()


def _text(req: RequestHead, name: bytes) -> str | None:
    v = req.get(name)
    return v.decode("latin-1") if v is not None else None


def _headers_dict(req: RequestHead) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers}


class DeviceChecker(Protocol):
    """What the gate asks about a device (``ucgate.id.devices.DeviceService``, or
    ``gateway.idclient.RemoteDeviceChecker`` over the id service's API)."""

    async def check_async(
        self,
        user: str,
        facts: dev.DeviceFacts,
        *,
        service: str,
        second_factor_ok: bool = ...,
        credential_id: str | None = ...,
        client_address: str | None = ...,
    ) -> DeviceCheck: ...


class DeviceGate:
    """The gateway's decide stage.

    Args:
        checker: ``async check_async(user, facts, service=, second_factor_ok=, credential_id=,
            client_address=) -> DeviceCheck`` (``ucgate.id.devices.DeviceService``).
        services: the service names whose requests are decided (others pass).
        extra_ua_rules: configured (regex, client kind) rules, before the built-in ones.
        wallclock: seconds since the epoch (the checker's clock in tests).
        realm: for the Basic challenge of a ``challenge``.
    """

    def __init__(
        self,
        checker: DeviceChecker,
        *,
        services: Sequence[str] = tuple(DEFAULT_SERVICES),
        extra_ua_rules: Sequence[tuple[str, str]] = (),
        wallclock: Callable[[], float] | None = None,
        realm: str = "ucgate",
    ) -> None:
        self.checker = checker
        self.services = frozenset(services)
        self.extra_ua_rules = tuple(extra_ua_rules)
        dev.compile_ua_rules(self.extra_ua_rules)
        clock = getattr(checker, "clock", None)
        self.wallclock = wallclock or ((lambda: clock().timestamp()) if clock else time.time)
        self.applications = _Bindings()
        self.tokens = _Bindings()
        self._pending: dict[int, dev.DeviceFacts] = {}
        self.realm = realm.replace('"', "")

    # --- before authentication --------------------------------------------------------
    def applies(self, service: Service, req: RequestHead | None = None) -> bool:
        """Does this request need a device decision? Not anonymous services, and not the EAS
        OPTIONS discovery request: it carries no command and no device id (MS-ASHTTP 2.2.3),
        returns only the protocol versions, and clients send it before anything else."""
        if req is not None and service.name == "eas" and req.method == b"OPTIONS":
            return False
        return service.name in self.services and not service.anonymous

    def body_limit(self, req: RequestHead, path: str, service: Service) -> int | None:
        """How much body to read before authenticating (the id is in it), or None."""
        if service.name == "ucwa" and dev.is_ucwa_application_create(req.method.decode("latin-1"), path):
            return dev.MAX_UCWA_BODY_BYTES
        if service.name == "certprov" and req.method == b"POST":
            return dev.MAX_CERTPROV_BODY_BYTES
        return None

    def facts_for(
        self, conn: ClientConnection, req: RequestHead, path: str, query: str, service: Service, body: bytes | None
    ) -> dev.DeviceFacts:
        """The request's device facts (remembered for :meth:`device_id_of`). Never raises."""
        state = self.state(conn)
        name = service.name
        if body is not None and name == "ucwa":
            facts = dev.device_from_ucwa_application(body, _text(req, b"content-type"), _text(req, b"user-agent"))
        elif body is not None and name == "certprov":
            facts = dev.device_from_certprov_body(body, _text(req, b"user-agent"))
        elif name == "eas" and state.last_query == (path, query) and state.last_facts is not None:
            facts = state.last_facts  # the same device polling on one connection: parse once
        else:
            facts = dev.device_from_request(
                name,
                req.method.decode("latin-1"),
                req.target.decode("latin-1"),
                _headers_dict(req),
                extra_ua_rules=self.extra_ua_rules,
            )
            if name == "eas":
                state.last_query, state.last_facts = (path, query), facts
        self._pending[id(req)] = facts
        return facts

    def device_id_of(self, req: RequestHead, service: Service) -> str | None:
        """For the authenticator (an ASP bound to a device): the device of the request being
        authenticated, as far as it is known before authentication."""
        facts = self._pending.get(id(req))
        if facts is not None and facts.device_id is not None:
            return facts.device_id
        if service.name == "ucwa":
            found = self._ucwa_binding(req)
            if found is not None:
                return found[1].device_id
        return None

    def done(self, req: RequestHead) -> None:
        self._pending.pop(id(req), None)

    @staticmethod
    def state(conn: ClientConnection) -> DeviceState:
        if conn.device is None:
            conn.device = DeviceState()
        return conn.device

    def _ucwa_binding(self, req: RequestHead) -> tuple[str, dev.DeviceFacts] | None:
        app_id = dev.ucwa_application_id(req.target.decode("latin-1"))
        if app_id is not None:
            return self.applications.get(app_id)
        key = _bearer_key(req)
        return self.tokens.get(key) if key else None

    # --- after authentication ---------------------------------------------------------
    async def decide(
        self,
        conn: ClientConnection,
        req: RequestHead,
        path: str,
        service: Service,
        identity: Identity,
        facts: dev.DeviceFacts,
    ) -> Verdict:
        verdict, action = await self._decide(conn, req, service, identity, facts)
        metrics.count_device(service.name, action)  # ucgate_device_decisions_total
        return verdict

    def decide_now(
        self, conn: ClientConnection, req: RequestHead, service: Service, identity: Identity, facts: dev.DeviceFacts
    ) -> Verdict | None:
        """:meth:`decide`'s answer when it is an allowed decision cached on this connection
        (nothing to ask the id service), else None — then call :meth:`decide`. Counts nothing
        (the caller counts ``allow`` once it forwards)."""
        early, _, _, _, _ = self._before_check(conn, req, service, identity, facts)
        if early is not None and early[1] == "allow":
            return early[0]
        return None

    def _before_check(
        self, conn: ClientConnection, req: RequestHead, service: Service, identity: Identity, facts: dev.DeviceFacts
    ):
        """What :meth:`_decide` answers without the checker — ``(verdict, action)``, or None —
        and the facts, key, ``creating`` and wall clock it goes on with."""
        user = identity.user
        name = service.name
        creating = name == "ucwa" and facts.source == "ucwa-endpoint"
        if name == "ucwa" and not creating:
            found = self._ucwa_binding(req)
            if found is None:
                if dev.ucwa_application_id(req.target.decode("latin-1")) is not None:
                    return (self._ucwa_unknown_application(), "unknown-application"), facts, None, creating, 0.0
            elif found[0] != user:
                return (
                    (self._refuse(name, facts, "deny", "device-user-mismatch", req), "block"),
                    facts,
                    None,
                    creating,
                    0.0,
                )
            else:
                facts = found[1]
        state = self.state(conn)
        now = self.wallclock()
        key = (facts.device_id, facts.claimed_user)
        cached = state.allowed.get(key)
        if cached is not None and cached.user == user and now < cached.until and not creating and name != "certprov":
            return (Verdict(identity=self._with_device(identity, facts.device_id)), "allow"), facts, key, creating, now
        return None, facts, key, creating, now

    async def _decide(
        self, conn: ClientConnection, req: RequestHead, service: Service, identity: Identity, facts: dev.DeviceFacts
    ) -> tuple[Verdict, str]:
        user = identity.user
        name = service.name
        early, facts, key, creating, now = self._before_check(conn, req, service, identity, facts)
        if early is not None:
            return early
        state = self.state(conn)
        check = await self.checker.check_async(
            user,
            facts,
            service=name,
            second_factor_ok=bool(getattr(identity, "second_factor", False)),
            credential_id=identity.credential_id,
            client_address=conn.peer_host,
        )
        if not check.allowed:
            state.allowed.pop(key, None)
            if check.outcome == "unavailable":  # a remote id service that could not answer
                return self._unavailable(check.reason, check.retry_after), "unavailable"
            if check.outcome == "challenge":
                return self._challenge(check.reason), "challenge"
            action = "wipe" if check.wipe else "quarantine" if check.outcome == "quarantine" else "block"
            return self._refuse(name, facts, check.outcome, check.reason, req, wipe=check.wipe), action
        until = now + RECHECK_SECONDS
        if check.trusted_until is not None:
            until = min(until, check.trusted_until.timestamp())
        state.allowed[key] = _Allowed(user, facts.device_id, until)
        verdict = Verdict(identity=self._with_device(identity, facts.device_id))
        if creating and facts.device_id is not None:
            token = _bearer_key(req)
            if token:
                self.tokens.put(token, user, facts)
            verdict.observe = lambda resp, body: self._learn_application(user, facts, resp, body)
        return verdict, "allow"

    @staticmethod
    def _with_device(identity: Identity, device_id: str | None) -> Identity:
        if identity.device_id == device_id or device_id is None:
            return identity
        return replace(identity, device_id=device_id)

    def _learn_application(self, user: str, facts: dev.DeviceFacts, resp: ResponseHead, body: bytes | None) -> None:
        if resp.status not in (200, 201):
            return
        href = None
        loc = resp.get(b"location")
        if loc:
            href = loc.decode("latin-1")
        elif body:
            try:
                href = json.loads(body)["_links"]["self"]["href"]
            except (ValueError, KeyError, TypeError):
                href = None
        if not isinstance(href, str):
            return
        path = urlsplit(href).path if "://" in href else href
        app_id = dev.ucwa_application_id(path)
        if app_id:
            self.applications.put(app_id, user, facts)

    # --- answers ----------------------------------------------------------------------
    @staticmethod
    def _unavailable(reason: str, retry_after: float) -> Verdict:
        """The decision could not be made: 503 with Retry-After (EAS clients back off on it,
        as on Exchange's own throttling), never a forward."""
        seconds = max(1, int(retry_after + 0.999))
        return Verdict(
            503,
            reason or "id-service-unavailable",
            [
                (b"Retry-After", b"%d" % seconds),
                (b"X-Ucgate-Reason", (reason or "id-service-unavailable").encode()),
            ],
            b"the device check is unavailable, try again later\n",
        )

    def _challenge(self, reason: str) -> Verdict:
        # only users who can answer get here (the others are quarantined): say how
        body = (
            b"second factor required for this device: sign in again with your app password "
            b"followed by the 6-digit code from your authenticator app (or a recovery code)\n"
        )
        return Verdict(
            401,
            reason,
            [
                (b"WWW-Authenticate", b'Basic realm="%s", charset="UTF-8"' % self.realm.encode()),
                (b"X-Ucgate-Reason", reason.encode()),
            ],
            body,
            reset_auth=True,
        )

    def _refuse(
        self, service: str, facts: dev.DeviceFacts, outcome: str, reason: str, req: RequestHead, *, wipe: bool = False
    ) -> Verdict:
        if service == "eas" and reason != "device-user-mismatch":
            return self._eas_refusal(facts, reason, req, wipe)
        if service == "ucwa":
            body = json.dumps(
                {
                    "code": "Forbidden",
                    "subcode": "DeviceQuarantined" if outcome == "quarantine" else "DeviceBlocked",
                    "message": (
                        (
                            "This device needs a second factor, and you have none to sign in "
                            "with: it waits for an administrator's approval."
                        )
                        if reason.endswith("-approval-required")
                        else "This device is waiting for approval."
                        if outcome == "quarantine"
                        else "This device may not be used."
                    ),
                    "reason": reason,
                }
            ).encode()
            return Verdict(
                403,
                reason,
                [(b"Content-Type", b"application/json; charset=utf-8"), (b"X-Ucgate-Reason", reason.encode())],
                body,
            )
        return Verdict(403, reason, [(b"X-Ucgate-Reason", reason.encode())], f"device refused: {reason}\n".encode())

    @staticmethod
    def _ucwa_unknown_application() -> Verdict:
        body = json.dumps(
            {
                "code": "NotFound",
                "subcode": "ApplicationNotFound",
                "message": "The application does not exist; create it again.",
            }
        ).encode()
        return Verdict(404, "ucwa-unknown-application", [(b"Content-Type", b"application/json; charset=utf-8")], body)

    @staticmethod
    def _eas_version(facts: dev.DeviceFacts, req: RequestHead) -> float:
        v = req.get(b"ms-asprotocolversion")
        if v is None:
            try:  # the base64 query carries it
                v = str(
                    parse_eas_request(
                        req.target.decode("latin-1"), _headers_dict(req), allow_binary_device_id=True
                    ).protocol_version
                    or ""
                ).encode()
            except EasRequestError:
                v = None
        try:
            return float(v) if v else 0.0
        except ValueError:
            return 0.0

    def _eas_refusal(self, facts: dev.DeviceFacts, reason: str, req: RequestHead, wipe: bool) -> Verdict:
        command = facts.command or ""
        modern = self._eas_version(facts, req) >= 14.0
        hdr = [(b"X-Ucgate-Reason", reason.encode()), (b"MS-Server-ActiveSync", b"15.20")]
        if wipe and command == "Provision":
            doc = E("Provision:Provision", E("Status", "1"), E("RemoteWipe"))
            return Verdict(200, reason, hdr + [(b"Content-Type", WBXML)], encode(doc))
        top = _EAS_TOP.get(command)
        if wipe:
            if modern and top is not None:
                doc = E(top, E("Status", str(STATUS_REMOTE_WIPE)))
                return Verdict(200, reason, hdr + [(b"Content-Type", WBXML)], encode(doc))
            return Verdict(449, reason, hdr, b"")  # Retry after sending a Provision
        if modern and top is not None:
            doc = E(top, E("Status", str(STATUS_DEVICE_BLOCKED)))
            return Verdict(200, reason, hdr + [(b"Content-Type", WBXML)], encode(doc))
        return Verdict(403, reason, hdr, f"device refused: {reason}\n".encode())

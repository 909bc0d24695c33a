"""What the gateway asks the id service about credentials.

The gateway (DMZ) holds no directory credentials and no ASP secrets; it asks this interface.
It is implemented in-process by :class:`ucgate.id.service.IdService`, and across the network by
:class:`ucgate.gateway.idclient.RemoteCredentials`, which calls the id service's HTTP API
(:mod:`ucgate.id.http_api`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Protocol, Self, TypeVar, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from ..protocols.devices import MAX_DEVICE_ID_CHARS, MAX_USER_AGENT_CHARS, DeviceFacts
from ..protocols.ntlm import ExtendedProtection, NegotiateFlags, VerifyResult


class Method(StrEnum):
    """How a sign-in attempt presented its credential: the one list both sides of the id
    service's API use (``context.method``)."""

    BASIC = "basic"
    NTLM = "ntlm"
    NEGOTIATE = "negotiate"
    KERBEROS = "kerberos"
    OAUTH_PASSWORD = "oauth-password"  # the SfB mobile sign-in (POST /WebTicket/oauthtoken)
    PORTAL = "portal"  # the self-service portal's sign-in form (in-process only)
    SIP = "sip"  # a REGISTER's credentials, checked by the Access Edge (gateway.sip)


# Bounds of the context's free-text fields on the wire.
MAX_CONTEXT_NAME = 256
MAX_SERVICE = 64


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """Facts about one sign-in attempt, for the failure budget and the audit log."""

    client_ip: str
    method: str  # "basic" | "ntlm" | "negotiate" | ...
    service: str
    device_id: str | None = None
    user_agent: str | None = None

    def to_wire(self) -> WireContext:
        return WireContext.build(
            client_ip=self.client_ip,
            method=self.method,
            service=self.service,
            device_id=self.device_id,
            user_agent=self.user_agent,
        )

    @classmethod
    def from_wire(cls, w: WireContext) -> AttemptContext:
        return cls(w.client_ip, w.method, w.service, w.device_id, w.user_agent)

    def to_json(self) -> dict[str, Any]:
        """The API's ``context`` object (what :meth:`from_json` reads back)."""
        return self.to_wire().model_dump(mode="json")

    @classmethod
    def from_json(cls, obj: Any) -> AttemptContext:
        """Raises ContextError (field, message) for anything the API does not accept."""
        try:
            w = WireContext.model_validate(obj)
        except ValidationError as e:
            raise wire_error(e, "context") from None
        return cls.from_wire(w)


class ContextError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a sign-in attempt. ``reason`` is a code for logs/audit, never shown to
    the client in a way that tells unknown users from wrong passwords."""

    ok: bool
    reason: str
    user: str | None = None  # the canonical user name when ok
    credential_id: str | None = None
    retry_after: float = 0.0  # > 0 when throttled


@dataclass(frozen=True, slots=True)
class NtlmHandshake:
    """One NTLM exchange for the id service to verify, as the gateway ran it.

    The gateway runs the NEGOTIATE/CHALLENGE legs (and SPNEGO) itself and passes the three NTLM
    messages verbatim (the MIC covers the exact bytes) with what its acceptor was built from, so
    that the id service can rebuild it (``NtlmAcceptor.from_messages``). The gateway never sees
    an NT hash: an ASP's NT hash is a password equivalent and must not sit in the DMZ.
    """

    negotiate: bytes = field(repr=False)
    challenge: bytes = field(repr=False)
    authenticate: bytes = field(repr=False)
    server_challenge: bytes = field(repr=False)
    challenge_time: int  # FILETIME of the CHALLENGE's MsvAvTimestamp
    channel_binding_data: bytes | None  # tls-server-end-point of the gateway's cert; None on plain HTTP
    extended_protection: str = ExtendedProtection.REQUIRE  # an ExtendedProtection value
    max_clock_skew: int = 300
    # the gateway's parse of the three messages (``NtlmAcceptor.parsed``), for an id service in
    # the same process (``from_messages(parsed=...)``: not parsed twice); never on the wire
    parsed: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class NtlmVerdict:
    """The answer to :meth:`CredentialService.verify_ntlm`: the verdict and, when ok, the
    verified result whose ``flags`` and ``exported_session_key`` the gateway's acceptor adopts
    (``NtlmAcceptor.adopt``) for session security — the SPNEGO mechListMIC. Session keys are
    per connection and short-lived; they are what Netlogon pass-through returns to an IIS
    server too. ``result.session_base_key`` is not sent across the network (empty there)."""

    verdict: Verdict
    result: VerifyResult | None = field(default=None, repr=False)


class CredentialService(Protocol):
    async def verify_password(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        """Check a user name (as typed: user, DOMAIN\\user or UPN) and password (an ASP)."""
        ...

    async def verify_ntlm(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        """Verify an NTLMv2 AUTHENTICATE against the user's usable ASPs (spellings, OTP window),
        with its timestamp, MIC and channel binding checks, and record the outcome (budget, last
        use, audit). Refusals before any check (throttled, directory unavailable) come back as a
        verdict with ``retry_after > 0``."""
        ...


# --- the SIP relay's attempts (gateway.sip ↔ id.sipattempts, POST /v1/sip/attempt|settle) ----------

MAX_SIP_TOKEN = 128
MAX_SIP_REASON = 64


class SipOutcome(StrEnum):
    """How the Access Edge's answer settles a reserved SIP credential leg."""

    SUCCESS = "success"  # 2xx: the budget's success (resets the account's bucket)
    FAILURE = "failure"  # 401/403/407 final, or never answered: the unit stays charged
    NOT_A_GUESS = "not-a-guess"  # 5xx: the Edge did not decide; the unit comes back, audited
    CONTINUED = "continued"  # a 401 that continues a Kerberos/TLS-DSK handshake: back, not audited


@dataclass(frozen=True, slots=True)
class SipAttemptRequest:
    """``POST /v1/sip/attempt``: reserve one unit of the account's failure budget for a REGISTER
    credential leg the relay is about to forward, and decide what must not reach the Edge (a
    refused account, an NTLM user that is not the From's account)."""

    user: str  # the From's address as typed: "sip:alice@contoso.com"
    context: AttemptContext
    ntlm_user: str | None = None  # the NTLM Type 3's user and domain, when the leg is NTLM
    ntlm_domain: str | None = None

    def to_wire(self) -> SipAttemptBody:
        return SipAttemptBody.build(
            user=self.user, ntlm_user=self.ntlm_user, ntlm_domain=self.ntlm_domain, context=self.context.to_wire()
        )

    @classmethod
    def from_wire(cls, w: SipAttemptBody) -> SipAttemptRequest:
        return cls(w.user, AttemptContext.from_wire(w.context), w.ntlm_user, w.ntlm_domain)

    def to_json(self) -> dict[str, Any]:
        return self.to_wire().model_dump(mode="json")

    @classmethod
    def from_json(cls, obj: Any) -> SipAttemptRequest:
        """Raises ContextError (field, message)."""
        return cls.from_wire(parse_wire(SipAttemptBody, obj))


def verdict_to_json(v: Verdict) -> dict[str, Any]:
    return VerdictBody.of(v).model_dump(mode="json")


def verdict_from_json(obj: Any) -> Verdict:
    """Raises ValueError for anything that is not a verdict."""
    try:
        return VerdictBody.model_validate(obj).verdict()
    except ValidationError:
        raise ValueError("not a verdict") from None


@dataclass(frozen=True, slots=True)
class SipAttemptAnswer:
    """The answer to :class:`SipAttemptRequest`: ``verdict.ok`` with ``token`` (the reservation,
    held on the id service that issued it until settled or ``expires_in`` seconds, then charged
    as a failure) and ``verdict.user`` the account; else the refusal — ``retry_after`` > 0:
    throttled or a dependency down (503 here), otherwise a refused account or
    ``ntlm-user-mismatch`` (403), already settled and audited by the id service."""

    token: str | None
    verdict: Verdict
    expires_in: float = 0.0

    def to_wire(self) -> SipAttemptAnswerBody:
        v = self.verdict
        return SipAttemptAnswerBody.build(
            ok=v.ok,
            reason=v.reason,
            user=v.user,
            credential_id=v.credential_id,
            retry_after=v.retry_after,
            token=self.token,
            expires_in=self.expires_in,
        )

    @classmethod
    def from_wire(cls, w: SipAttemptAnswerBody) -> SipAttemptAnswer:
        return cls(w.token, w.verdict(), w.expires_in)

    def to_json(self) -> dict[str, Any]:
        return self.to_wire().model_dump(mode="json")

    @classmethod
    def from_json(cls, obj: Any) -> SipAttemptAnswer:
        """Raises ValueError for an answer that does not hold together."""
        try:
            return cls.from_wire(parse_wire(SipAttemptAnswerBody, obj))
        except ContextError:
            raise ValueError("not a SIP attempt answer") from None


@dataclass(frozen=True, slots=True)
class SipSettle:
    """``POST /v1/sip/settle``: the Edge's answer to a reserved leg. ``reason`` is the audit's
    (``ok``, ``wrong-password``, ``registrar-refused``, ``sip-no-answer``,
    ``registrar-unavailable``...)."""

    token: str
    outcome: SipOutcome
    reason: str

    def to_wire(self) -> SipSettleBody:
        return SipSettleBody.build(token=self.token, outcome=self.outcome, reason=self.reason)

    @classmethod
    def from_wire(cls, w: SipSettleBody) -> SipSettle:
        return cls(w.token, SipOutcome(w.outcome), w.reason)

    def to_json(self) -> dict[str, Any]:
        return self.to_wire().model_dump(mode="json")

    @classmethod
    def from_json(cls, obj: Any) -> SipSettle:
        """Raises ContextError (field, message)."""
        return cls.from_wire(parse_wire(SipSettleBody, obj))


# --- the wire: every request and answer body of the id service's HTTP API -----------------------
#
# One definition for both sides: the id service (:mod:`ucgate.id.http_api`) validates requests and
# writes answers with these, the gateway (:mod:`ucgate.gateway.idclient`) writes requests and
# validates answers with them, and the OpenAPI document's schemas are generated from them. The
# limits are constraints of the models. A body that does not validate is reported as the first
# error's (field, message): :func:`wire_error`.

MAX_NAME = 256  # user names and passwords, as in the gateway's Basic check
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


def text_field(limit: int, *, required: bool = False, description: str | None = None) -> Any:
    """A string's constraints: at most ``limit`` characters, no control characters; non-empty if
    ``required`` (``Annotated[StrictStr, text_field(...)]``)."""
    return Field(min_length=1 if required else 0, max_length=limit, pattern=_NO_CONTROL, description=description)


def _ip(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise PydanticCustomError("ip_address", "not an IP address") from None
    return v


IpAddress = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_ip)]


def _b64_validator(size: int | None) -> Callable[[Any], bytes]:
    def decode(v: Any) -> bytes:
        if isinstance(v, bytes):
            raw = v
        elif not isinstance(v, str):
            raise PydanticCustomError("string_type", "expected a string")
        else:
            try:
                raw = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise PydanticCustomError("base64", "not base64") from None
        if size is not None and len(raw) != size:
            raise PydanticCustomError("base64_size", "expected {size} bytes", {"size": size})
        return raw

    return decode


def _b64_encode(v: bytes) -> str:
    return base64.b64encode(v).decode()


def _b64_schema(description: str | None) -> WithJsonSchema:
    schema: dict[str, Any] = {"type": "string", "format": "byte"}
    if description:
        schema["description"] = description
    return WithJsonSchema(schema)


_B64_OUT = PlainSerializer(_b64_encode, return_type=str)
# Bytes as base64 on the wire (``validate=True``: no stray characters); sized ones exactly so.
B64Bytes = Annotated[bytes, PlainValidator(_b64_validator(None)), _B64_OUT, _b64_schema(None)]
B64Challenge = Annotated[bytes, PlainValidator(_b64_validator(8)), _B64_OUT, _b64_schema("8 bytes")]
B64SessionKey = Annotated[bytes, PlainValidator(_b64_validator(16)), _B64_OUT, _b64_schema("16 bytes")]
B64ChannelBinding = Annotated[
    bytes,
    PlainValidator(_b64_validator(None)),
    _B64_OUT,
    _b64_schema("tls-server-end-point application data (RFC 5929)"),
]

MethodName = Literal["basic", "ntlm", "negotiate", "kerberos", "oauth-password", "portal", "sip"]
OutcomeName = Literal["success", "failure", "not-a-guess", "continued"]
EpaName = Literal["require", "allow", "off"]
assert get_args(MethodName) == tuple(m.value for m in Method), "MethodName is Method's values"
assert get_args(EpaName) == tuple(e.value for e in ExtendedProtection), "EpaName is ExtendedProtection's values"
assert get_args(OutcomeName) == tuple(o.value for o in SipOutcome), "OutcomeName is SipOutcome's values"


_new, _setattr = object.__new__, object.__setattr__


class Wire(BaseModel):
    """A body of the id service's API. Unknown fields are ignored (a newer peer may send more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def build(cls, **values: Any) -> Self:
        """A body from values that need no checking (ours, to send): every field given, nested
        bodies built. ~1 us where ``model_construct`` takes ~3 (its defaults and bookkeeping);
        on the gateway's sign-in path."""
        obj = _new(cls)
        _setattr(obj, "__dict__", values)
        _setattr(obj, "__pydantic_fields_set__", set(values))
        _setattr(obj, "__pydantic_extra__", None)
        _setattr(obj, "__pydantic_private__", None)
        return obj

    def check(self) -> None:
        """Rules across fields; raises ContextError (field, message)."""


class WireContext(Wire):
    """The attempt's ``context``."""

    model_config = ConfigDict(title="Context")
    client_ip: IpAddress
    method: MethodName
    service: Annotated[StrictStr, Field(min_length=1, max_length=MAX_SERVICE)]
    device_id: Annotated[StrictStr, Field(max_length=MAX_CONTEXT_NAME)] | None = None
    user_agent: Annotated[StrictStr, Field(max_length=MAX_CONTEXT_NAME)] | None = None


class VerdictBody(Wire):
    """The verdict of a sign-in call."""

    model_config = ConfigDict(title="Verdict")
    ok: StrictBool
    reason: Annotated[StrictStr, Field(description="A code for logs and audit")]
    user: StrictStr | None = None
    credential_id: StrictStr | None = None
    retry_after: Annotated[StrictFloat, Field(ge=0, description="> 0: throttled or unavailable, seconds")] = 0.0

    @classmethod
    def of(cls, v: Verdict) -> VerdictBody:
        return cls.build(
            ok=v.ok, reason=v.reason, user=v.user, credential_id=v.credential_id, retry_after=v.retry_after
        )

    def verdict(self) -> Verdict:
        return Verdict(
            self.ok, self.reason, user=self.user, credential_id=self.credential_id, retry_after=float(self.retry_after)
        )


class PasswordBody(Wire):
    """``POST /v1/auth/password``."""

    model_config = ConfigDict(title="PasswordCheck")

    user: Annotated[StrictStr, text_field(MAX_NAME, required=True)]
    password: Annotated[StrictStr, Field(max_length=MAX_NAME)]
    context: WireContext


class AccountBody(Wire):
    """``POST /v1/auth/account``."""

    model_config = ConfigDict(title="AccountCheck")

    user: Annotated[StrictStr, text_field(MAX_NAME, required=True)]
    context: WireContext


class NtlmBody(Wire):
    """``POST /v1/auth/ntlm``: the three messages verbatim (the MIC covers them)."""

    model_config = ConfigDict(title="NtlmExchange")

    negotiate: B64Bytes
    challenge: B64Bytes
    authenticate: B64Bytes
    server_challenge: B64Challenge
    challenge_time: Annotated[
        StrictInt, Field(gt=0, lt=2**63, description="FILETIME of the CHALLENGE's MsvAvTimestamp")
    ]
    channel_binding: B64ChannelBinding | None = None
    extended_protection: EpaName | None = "require"
    max_clock_skew: Annotated[StrictInt, Field(ge=0, le=3600)] | None = 300
    context: WireContext

    @classmethod
    def of(cls, h: NtlmHandshake, ctx: AttemptContext) -> NtlmBody:
        return cls.build(
            negotiate=h.negotiate,
            challenge=h.challenge,
            authenticate=h.authenticate,
            server_challenge=h.server_challenge,
            challenge_time=h.challenge_time,
            channel_binding=h.channel_binding_data,
            extended_protection=h.extended_protection,
            max_clock_skew=h.max_clock_skew,
            context=ctx.to_wire(),
        )

    def handshake(self) -> NtlmHandshake:
        return NtlmHandshake(
            negotiate=self.negotiate,
            challenge=self.challenge,
            authenticate=self.authenticate,
            server_challenge=self.server_challenge,
            challenge_time=self.challenge_time,
            channel_binding_data=self.channel_binding,
            extended_protection=self.extended_protection or "require",
            max_clock_skew=300 if self.max_clock_skew is None else self.max_clock_skew,
        )


class NtlmSessionBody(Wire):
    """What the gateway's SPNEGO acceptor adopts (``NtlmAcceptor.adopt``) from an ok NTLM verdict."""

    model_config = ConfigDict(title="NtlmSession")
    exported_session_key: B64SessionKey
    flags: Annotated[StrictInt, Field(ge=0, lt=2**32)]
    mic_present: StrictBool
    channel_binding: Literal["verified", "absent", "not-checked"]
    target_name: StrictStr | None = None

    @classmethod
    def of(cls, r: VerifyResult) -> NtlmSessionBody:
        return cls.build(
            exported_session_key=r.exported_session_key,
            flags=int(r.flags),
            mic_present=r.mic_present,
            channel_binding=r.channel_binding,
            target_name=r.target_name,
        )

    def result(self) -> VerifyResult:
        return VerifyResult(
            candidate_index=0,
            session_base_key=b"",
            exported_session_key=self.exported_session_key,
            channel_binding=self.channel_binding,
            flags=NegotiateFlags(self.flags),
            mic_present=self.mic_present,
            target_name=self.target_name,
        )


class NtlmAnswerBody(VerdictBody):
    """The answer to ``POST /v1/auth/ntlm``: the verdict and, when ok, the session."""

    model_config = ConfigDict(title="NtlmVerdict")
    session: NtlmSessionBody | None = None

    @classmethod
    def of(cls, answer: NtlmVerdict) -> NtlmAnswerBody:  # type: ignore[override]
        v, r = answer.verdict, answer.result
        return cls.build(
            ok=v.ok,
            reason=v.reason,
            user=v.user,
            credential_id=v.credential_id,
            retry_after=v.retry_after,
            session=None if r is None or not v.ok else NtlmSessionBody.of(r),
        )

    def check(self) -> None:
        if self.ok and self.session is None:
            raise ContextError("session", "required when ok")

    def ntlm_verdict(self) -> NtlmVerdict:
        return NtlmVerdict(self.verdict(), self.session.result() if self.ok and self.session else None)


class DeviceFactsBody(Wire):
    """The request's :class:`~ucgate.protocols.devices.DeviceFacts`, as the gateway extracted them."""

    model_config = ConfigDict(title="DeviceFacts")
    device_id: (
        Annotated[StrictStr, text_field(MAX_DEVICE_ID_CHARS, description="normalised; null when `problem` says why")]
        | None
    ) = None
    device_type: Annotated[StrictStr, text_field(MAX_NAME)] | None = None
    model: Annotated[StrictStr, text_field(MAX_NAME)] | None = None
    os: Annotated[StrictStr, text_field(MAX_NAME)] | None = None
    user_agent: Annotated[StrictStr, text_field(MAX_USER_AGENT_CHARS)] | None = None
    client_kind: Annotated[StrictStr, text_field(64)]
    source: Annotated[StrictStr, text_field(64)]
    problem: Annotated[StrictStr, text_field(64)] | None = None
    claimed_user: (
        Annotated[
            StrictStr, text_field(MAX_NAME * 2, description="the user the request names (EAS User=, CertProv Entity)")
        ]
        | None
    ) = None
    command: Annotated[StrictStr, text_field(64)] | None = None
    detail: Annotated[StrictStr, text_field(MAX_NAME)] | None = None

    # What the id service accepts per field: the gateway bounds free text to these (facts_json).
    LIMITS: ClassVar[dict[str, int]] = {
        "device_id": MAX_DEVICE_ID_CHARS,
        "device_type": MAX_NAME,
        "model": MAX_NAME,
        "os": MAX_NAME,
        "user_agent": MAX_USER_AGENT_CHARS,
        "client_kind": 64,
        "source": 64,
        "problem": 64,
        "claimed_user": MAX_NAME * 2,
        "command": 64,
        "detail": MAX_NAME,
    }

    def check(self) -> None:
        if self.device_id is None and self.problem is None:
            raise ContextError("device.problem", "required when device.device_id is null")

    def facts(self) -> DeviceFacts:
        return DeviceFacts(
            device_id=self.device_id,
            device_type=self.device_type,
            model=self.model,
            os=self.os,
            user_agent=self.user_agent,
            client_kind=self.client_kind,
            source=self.source,
            problem=self.problem,
            claimed_user=self.claimed_user,
            command=self.command,
            detail=self.detail or "",
        )


class DeviceCheckBody(Wire):
    """``POST /v1/devices/check``."""

    model_config = ConfigDict(title="DeviceCheck")

    user: Annotated[StrictStr, text_field(MAX_NAME, required=True)]
    device: DeviceFactsBody
    service: Annotated[StrictStr, text_field(64, description="eas, ucwa, certprov, ...")]
    second_factor_ok: StrictBool | None = False
    credential_id: (
        Annotated[StrictStr, text_field(128, description="the ASP's id, for an ASP bound to a device")] | None
    ) = None
    client_address: Annotated[IpAddress, Field(description="the device's IP address")] | None = None

    def check(self) -> None:
        self.device.check()

    def check_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``DeviceService.check``."""
        return {
            "service": self.service,
            "second_factor_ok": bool(self.second_factor_ok),
            "credential_id": self.credential_id,
            "client_address": self.client_address,
        }


class DeviceDecisionBody(Wire):
    """The answer to ``POST /v1/devices/check``: ``allow`` may be cached until ``trusted_until``."""

    model_config = ConfigDict(title="DeviceDecision")
    outcome: Literal["allow", "quarantine", "deny", "challenge"]
    reason: Annotated[StrictStr, Field(description="A code for logs and audit")]
    device_id: StrictStr | None = None
    wipe: Annotated[StrictBool, Field(description="answer with the EAS remote wipe")] = False
    trusted_until: AwareDatetime | None = None
    rule: StrictStr | None = None
    partnership_id: StrictInt | None = None


class SipAttemptBody(Wire):
    """``POST /v1/sip/attempt``."""

    model_config = ConfigDict(title="SipAttempt")
    user: Annotated[
        StrictStr, text_field(2 * MAX_CONTEXT_NAME, required=True, description="the From's address, sip:user@domain")
    ]
    ntlm_user: Annotated[StrictStr, text_field(MAX_CONTEXT_NAME)] | None = None
    ntlm_domain: Annotated[StrictStr, text_field(MAX_CONTEXT_NAME, description="only with ntlm_user")] | None = None
    context: Annotated[WireContext, Field(description="method must be sip")]

    def check(self) -> None:
        if self.ntlm_domain is not None and self.ntlm_user is None:
            raise ContextError("ntlm_domain", "only with ntlm_user")
        if self.context.method != Method.SIP:
            raise ContextError("context.method", "expected sip")


class SipAttemptAnswerBody(VerdictBody):
    """The answer to ``POST /v1/sip/attempt``: the reservation (ok, token) or the refusal."""

    model_config = ConfigDict(title="SipAttemptAnswer")
    token: Annotated[StrictStr, Field(min_length=1, max_length=MAX_SIP_TOKEN)] | None = None
    expires_in: StrictFloat = 0.0

    def check(self) -> None:
        if self.ok != (self.token is not None):
            raise ContextError("token", "with ok only")


class SipSettleBody(Wire):
    """``POST /v1/sip/settle``."""

    model_config = ConfigDict(title="SipSettle")
    token: Annotated[StrictStr, text_field(MAX_SIP_TOKEN, required=True)]
    outcome: OutcomeName
    reason: Annotated[StrictStr, text_field(MAX_SIP_REASON, required=True, description="for the audit")]


class SettledBody(Wire):
    """The answer to ``POST /v1/sip/settle``: false for an unknown token (settled, expired, or
    another id service's)."""

    model_config = ConfigDict(title="Settled")

    settled: StrictBool


class SessionsBody(Wire):
    """``PUT /v1/sessions``: a gateway's live signed-in users and since when."""

    model_config = ConfigDict(title="SessionReport")

    gateway: Annotated[StrictStr, text_field(128)]
    users: dict[StrictStr, AwareDatetime]


class HealthBody(Wire):
    """The answer to ``GET /v1/health``."""

    model_config = ConfigDict(title="Health")
    status: StrictStr


class StatusBody(Wire):
    """The answer of a balancer's check (``/healthz``, ``/readyz``; ``ucgate.id.health``)."""

    model_config = ConfigDict(title="Status")
    status: Literal["ok", "ready", "not-ready"]
    reason: Annotated[StrictStr, Field(description="Why not ready")] | None = None


# The SSE ``event:`` names of ``GET /v1/events`` (``ucgate.id.events`` acts on them).
EVENT_KINDS = ("user-blocked", "device-blocked", "credential-revoked", "credential-added", "rules-changed")


class EventBody(Wire):
    """The ``data:`` of one Server-Sent Event of ``GET /v1/events``. Its ``event:`` is the kind
    (``user-blocked``: cut ``user``'s sessions, those signed in before ``signed_in_before`` if
    set; ``device-blocked``: cut ``user``'s connections from ``device_id``;
    ``credential-revoked``: cut those signed in with the ASP ``credential``;
    ``credential-added``: forget the user's cached sign-in state; ``rules-changed``: reload the
    device rules, ``user`` "*"); its ``id:`` is the row id of the store's outbox, for
    ``Last-Event-ID``. A kind a gateway does not know is logged and skipped."""

    model_config = ConfigDict(title="Event")
    user: Annotated[StrictStr, Field(min_length=1)]
    reason: StrictStr | None = None
    device_id: StrictStr | None = None
    credential: Annotated[StrictStr, Field(description="An ASP's id")] | None = None
    signed_in_before: Annotated[AwareDatetime, Strict()] | None = None
    at: (
        Annotated[dt.datetime, Strict(), Field(description="When it was written (UTC); older id services send none")]
        | None
    ) = None


class ErrorBody(Wire):
    """An error answer: ``field`` names the offending field of a 400."""

    model_config = ConfigDict(title="Error")
    error: StrictStr
    field: StrictStr | None = None
    message: StrictStr


_KIND = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "float_type": "expected a number",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "missing": "required",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "no control characters",
    "timezone_aware": "time without a UTC offset",
    "extra_forbidden": "unknown field",
}


def wire_error(e: ValidationError, prefix: str = "") -> ContextError:
    """The first error of a body that did not validate, as (field, message): the field is the
    error's location (``context.client_ip``, ``device.device_id``; ``body`` for the whole)."""
    err = e.errors(include_url=False, include_input=False)[0]
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    if loc and loc[0] == "users" and len(loc) > 1:  # a session report's user name: bounded
        loc = ("users", str(loc[1])[:64])
    name = ".".join(str(p) for p in (((prefix,) if prefix else ()) + tuple(loc)))
    if kind == "json_invalid":
        return ContextError(name or "body", "not valid JSON")
    if not loc and kind in ("model_type", "dict_type", "model_attributes_type"):
        return ContextError(name or "body", "expected a JSON object" if not prefix else "expected an object")
    if kind == "string_too_long":
        message = f"at most {ctx.get('max_length')} characters"
    elif kind in ("literal_error", "enum"):
        message = "expected one of " + str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
    elif kind.startswith("datetime"):
        message = "expected an ISO 8601 time"
    else:
        message = _KIND.get(kind) or err["msg"]
    return ContextError(name or "body", message)


W = TypeVar("W", bound=Wire)


def parse_wire(model: type[W], data: bytes | str | dict[str, Any] | Any) -> W:
    """``data`` (JSON text, or an already-parsed object) as ``model``, its cross-field rules
    checked; raises ContextError (field, message)."""
    try:
        obj = (
            model.model_validate_json(data) if isinstance(data, (bytes, bytearray, str)) else model.model_validate(data)
        )
    except ValidationError as e:
        raise wire_error(e) from None
    obj.check()
    return obj


def dump_wire(obj: Wire) -> bytes:
    """The body as JSON bytes (None fields included: the peer reads null as absent)."""
    return obj.__pydantic_serializer__.to_json(obj)

"""The REST API's answers as models: the OpenAPI document's schemas are generated from them
(``ucgate.web.api``), and every answer is checked against its model before it is sent.

The answers are built by :class:`ucgate.web.service.Console` (the admin UI shows the same data);
a model forbids fields it does not name, so a field added there reaches an API client only once
it is declared (and documented) here — and the tests, which call every operation, fail until it
is. Times are the strings the console writes (RFC 3339, ``+00:00``), passed through unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, TypeAdapter, ValidationError

from ..config import Certprov
from ..config.web import ROLES
from ..id.api import Wire
from ..policy.devices import PartnershipState

Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
State = Literal["allowed", "quarantined", "blocked"]
CertprovName = Literal["allowed-only", "deny"]
assert get_args(State) == tuple(s.value for s in PartnershipState), "State is PartnershipState's values"
assert get_args(CertprovName) == tuple(c.value for c in Certprov), "CertprovName is Certprov's values"
Source = Literal["file", "store"]
RoleName = Literal["admin", "helpdesk", "auditor", "user"]
assert get_args(RoleName) == ROLES, "RoleName is the roles of [web]"


class Answer(BaseModel):
    """An answer: strict (nothing coerced: a wrong type is a bug, not a value to fix up), no
    field it does not name."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Device(Answer):
    """A user/device partnership."""

    id: int
    username: str
    device_id: str
    state: State
    client_kind: str
    created_at: Time
    last_seen: Time
    state_reason: str | None
    rule: Annotated[str | None, Field(description="The device rule that decided the state")]
    device_type: str | None
    model: str | None
    os: str | None
    user_agent: str | None
    source: Annotated[str | None, Field(description="Where the facts came from (eas-query, ucwa...)")]
    trusted_until: Time | None
    wipe_requested_at: Time | None
    wiped_at: Time | None
    approved_by: str | None
    approved_at: Time | None
    wipe_pending: bool


class Asp(Answer):
    """An application-specific password, without its secret."""

    id: str
    username: str
    label: str
    device_id: str | None
    created_at: Time
    last_used_at: Time | None
    revoked_at: Time | None
    active: bool


class NewAsp(Asp):
    """A new ASP: the password is in this answer only."""

    password: str


class UserSummary(Answer):
    """A user of ``GET /users``."""

    username: str
    upn: str | None
    display_name: str | None
    enabled: bool
    source: str
    devices: int
    totp: Literal["none", "pending", "active"]
    role: RoleName


class Totp(Answer):
    state: Literal["none", "pending", "active"]
    confirmed_at: Time | None
    last_used_at: Time | None
    recovery_codes_left: int


class DirectoryEntry(Answer):
    """What the directory says of the user now."""

    dn: str
    groups: list[str]
    blocked_reason: Annotated[str | None, Field(description="Why the account may not sign in, if so")]
    state: Annotated[dict[str, Any], Field(description="The account's state as read (secrets masked)")]


class DirectoryUnreadable(Answer):
    """The directory could not be read."""

    error: str


class User(Answer):
    """A user, with devices, ASPs and second factor."""

    username: str
    upn: str | None
    sip_uri: str | None
    display_name: str | None
    enabled: bool
    source: str
    role: RoleName
    totp: Totp
    devices: list[Device]
    asps: list[Asp]
    directory: Annotated[
        DirectoryEntry | DirectoryUnreadable | None, Field(description="null when no directory is configured")
    ]


class OtpReset(Answer):
    username: str
    reset: Annotated[bool, Field(description="false: no authenticator app was enrolled")]


class ActivityHour(Answer):
    hour: Time
    sign_ins: int
    denials: int


class Dashboard(Answer):
    """Live sessions, activity over the last 24 hours, quarantined devices."""

    live_sessions: Annotated[
        dict[str, Time] | None, Field(description="user: signed in since; null when the gateways cannot be asked")
    ]
    activity: list[ActivityHour]
    quarantined: list[Device]
    users: int


class AuditEvent(Answer):
    """One audit event (``docs/audit-event.schema.json`` describes each field)."""

    schema_version: Literal[1]
    id: int
    at: Time
    actor: str
    action: str
    user: str | None
    device: str | None
    service: str | None
    client_address: str | None
    result: str
    reason: str | None
    details: dict[str, Any]


class PolicySettings(Wire):
    """A group policy's device settings, the keys it sets: the body's ``settings`` of ``POST
    /policies`` (an unknown key is refused) and the answers' (the file's policies, the store's,
    the defaults)."""

    model_config = ConfigDict(extra="forbid")
    max_devices: Annotated[StrictInt, Field(ge=0)] | None = None
    trust_lifetime_hours: Annotated[StrictFloat, Field(gt=0)] | None = None
    certprov: CertprovName | None = None
    default_action: State | None = None
    problem_action: State | None = None
    require_second_factor: StrictBool | None = None


class Rule(Answer):
    """A device rule: the configuration file's (``source`` file, ``id`` null, read-only) or the
    store's."""

    source: Source
    id: Annotated[int | None, Field(description="null for the file's rules")]
    position: int
    name: str
    action: State
    device_type: str | None
    model: str | None
    os: str | None
    user_agent: str | None
    client_kind: str | None
    groups: list[str]
    created_at: Time | None = None
    created_by: str | None = None


class Policy(Answer):
    """A group policy: the file's or the store's."""

    source: Source
    id: Annotated[int | None, Field(description="null for the file's policies")]
    position: int
    name: str | None
    group: Annotated[str | None, Field(description="null: the default policy")]
    settings: PolicySettings
    created_at: Time | None = None
    created_by: str | None = None


class TwoFactor(Answer):
    default: str
    groups: dict[str, str]
    otp_trust_hours: float


class Rules(Answer):
    """The device rules and group policies in force, each list in the order it is evaluated."""

    device_rules: list[Rule]
    defaults: PolicySettings
    group_policies: list[Policy]
    two_factor: TwoFactor | None


class AnswerMismatch(Exception):
    """An answer its model does not describe (a bug: it is never sent); ``where`` is the first
    offending field's location."""

    def __init__(self, kind: Any, where: str) -> None:
        super().__init__(f"{getattr(kind, '__name__', kind)}: {where}")
        self.where = where


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def checked(kind: Any, data: Any) -> Any:
    """``data`` as JSON values, checked against ``kind`` (a model or ``list[Model]``), with the
    fields it has (a key it leaves out stays out); raises
    AnswerMismatch for an answer its model does not describe."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    try:
        return adapter.dump_python(adapter.validate_python(data), mode="json", exclude_unset=True)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        raise AnswerMismatch(kind, ".".join(str(p) for p in err["loc"]) + f" ({err['type']})") from None

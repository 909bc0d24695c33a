"""Prometheus metrics of every process (gateway, id service, web): in-memory counters, gauges and
histograms in the process's default registry, served as ``GET /metrics`` (the gateway's health
listener, the id service's and the web listener's apps; README "Metrics").

Label values are closed sets, never what a request chose: service names (``protocols.sfb``, or
the id service's and web's parts below), upstream names from the configuration, status codes
from a fixed list (others by class, ``5xx``), methods, results and reason codes from the fixed
lists here (anything else counts as ``other``). No user name, device id, path or user agent is
ever a label value.

Everything here is a memory update (one dict lookup and a locked add); rendering a scrape is
CPU-only and short, so a scrape never waits on I/O and never slows the proxy.
"""

from __future__ import annotations

import bisect
import datetime as dt
import ipaddress
import time
import weakref
from collections.abc import Iterable
from typing import Any

import prometheus_client
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

if hasattr(prometheus_client, "disable_created_metrics"):  # no *_created series beside each counter
    prometheus_client.disable_created_metrics()

# The classic text format, which generate_latest writes (newer clients call it 1.0.0, same text)
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"

# --- closed label sets ---------------------------------------------------------------------
STATUS_CODES = frozenset(
    {
        100,
        101,
        200,
        201,
        202,
        204,
        206,
        207,
        301,
        302,
        303,
        304,
        307,
        308,
        400,
        401,
        403,
        404,
        405,
        406,
        408,
        409,
        410,
        411,
        412,
        413,
        414,
        415,
        416,
        417,
        422,
        429,
        431,
        440,
        449,
        451,
        500,
        501,
        502,
        503,
        504,
        505,
    }
)
_CODES = {c: str(c) for c in STATUS_CODES}

# How a sign-in was presented (the Authorization scheme, or the identity's method).
AUTH_METHODS = frozenset(
    {"none", "basic", "ntlm", "negotiate", "kerberos", "bearer", "oauth-password", "portal", "sip", "other"}
)
# What came of it.
AUTH_RESULTS = frozenset({"allow", "challenge", "deny", "throttled", "unavailable"})
_NTLM_REASONS = (
    "anonymous",
    "bad-argument",
    "bad-mic",
    "lm-only",
    "malformed",
    "mic-missing",
    "ntlmv1",
    "stale-timestamp",
    "too-large",
    "unexpected-message",
    "unsupported",
    "unsupported-mech",
    "wrong-password",
    "channel-binding-mismatch",
    "channel-binding-missing",
)
# Reason codes of sign-ins (gateway.preauth, gateway.oauth, id.service, id.twofactor,
# policy.account, gateway.kerberos); any other value counts as "other".
AUTH_REASONS = frozenset(
    {
        "ok",
        "ok-otp",
        "ok-recovery-code",
        "ok-domain-password",
        "ok-device-approved",
        "2fa-trusted",
        "no-credentials",
        "ntlm-challenge",
        "unsupported-scheme",
        "no-authenticator",
        "unauthenticated",
        "basic-requires-tls",
        "basic-too-large",
        "basic-bad-base64",
        "basic-malformed",
        "token-too-large",
        "token-bad-base64",
        "bearer-unknown",
        "unknown-user",
        "user-disabled",
        "wrong-password",
        "anonymous",
        "invalid-name",
        "ambiguous",
        "disabled",
        "locked",
        "expired",
        "deleted",
        "password-must-change",
        "not-in-group",
        "password-changed",
        "otp-required",
        "otp-wrong",
        "otp-replayed",
        "otp-not-enrolled",
        "recovery-code-wrong",
        "recovery-wrong",
        "throttled",
        "directory-unavailable",
        "store-unavailable",
        "id-service-unavailable",
        "krb-bad-integrity",
        "krb-clock-skew",
        "krb-foreign-realm",
        "krb-incomplete",
        "krb-no-acceptor-key",
        "krb-not-a-user",
        "krb-refused",
        "krb-replay",
        "krb-stale-keytab",
        "krb-ticket-expired",
        "krb-ticket-not-yet-valid",
        "krb-wrong-principal",
        "oauth-bad-access-token",
        "oauth-no-access-token",
        "oauth-token-unreadable",
        "registrar-refused",
        "registrar-unavailable",
        "ntlm-user-mismatch",
        "sip-no-answer",
        *(f"ntlm-{r}" for r in _NTLM_REASONS),
    }
)
# Device decisions (gateway.devices): what the gateway did with a request for its device.
DEVICE_ACTIONS = frozenset({"allow", "quarantine", "block", "wipe", "challenge", "unavailable", "unknown-application"})
# The parts of the id service's and the web listener's apps (``service`` of ucgate_requests_total).
APP_PARTS = (
    ("/v1/", "id-api"),
    ("/api/", "rest-api"),
    ("/admin", "admin"),
    ("/portal", "portal"),
    ("/static", "static"),
    ("/healthz", "health"),
    ("/readyz", "health"),
    ("/metrics", "metrics"),
)
# TLS handshake failures (gateway.tlstransport), by the OpenSSL reason where it is one of these.
TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "wrong-version",
    "UNSUPPORTED_PROTOCOL": "unsupported-protocol",
    "VERSION_TOO_LOW": "unsupported-protocol",
    "TLSV1_ALERT_PROTOCOL_VERSION": "unsupported-protocol",
    "NO_PROTOCOLS_AVAILABLE": "unsupported-protocol",
    "NO_SHARED_CIPHER": "no-shared-cipher",
    "NO_SHARED_GROUPS": "no-shared-cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no-shared-cipher",
    "HTTP_REQUEST": "http-request",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate-refused",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate-refused",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate-refused",
    "UNEXPECTED_EOF_WHILE_READING": "eof",
    "EOF": "eof",
}
STATEMENTS = frozenset({"select", "insert", "update", "delete", "begin", "commit", "pragma"})

# --- the metrics -----------------------------------------------------------------------------
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class _LoopCounter:
    """A counter family for the proxy's hot path: plain ints in a dict (a tenth of a locked
    prometheus_client counter's cost), updated from the event loop's thread (every request of
    a process is answered on its loop), read at scrape time."""

    def __init__(self, name: str, doc: str, labels: list[str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, key: tuple[str, ...]) -> None:
        values = self.values
        values[key] = values.get(key, 0) + 1

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, n in list(self.values.items()):  # one C-level copy: no torn iteration
            fam.add_metric(list(key), n)
        return [fam]

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []


class _LoopHistogram:
    """A histogram family for the hot path, as :class:`_LoopCounter` (one label)."""

    def __init__(self, name: str, doc: str, label: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.label, self.bounds = name, doc, label, tuple(sorted(buckets))
        self.data: dict[str, list[Any]] = {}  # label value -> [counts per bucket + 1, sum]

    def observe(self, label: str, value: float) -> None:
        d = self.data.get(label)
        if d is None:
            d = self.data[label] = [[0] * (len(self.bounds) + 1), 0.0]
        d[0][bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        d[1] += value

    def collect(self) -> Iterable[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for label, (counts, total) in list(self.data.items()):
            cum, buckets = 0, []
            for bound, n in zip((*self.bounds, float("inf")), list(counts), strict=True):
                cum += n
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cum))
            fam.add_metric([label], buckets, sum_value=total)
        return [fam]

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return []


REQUESTS = _LoopCounter("ucgate_requests", "Requests answered, by service and status code", ["service", "code"])
REGISTRY.register(REQUESTS)
# plain ints too: a memoised Basic header or a Bearer token counts one attempt per keep-alive request
AUTH_ATTEMPTS = _LoopCounter(
    "ucgate_auth_attempts",
    "Sign-in attempts at the gateway, by method, result and reason",
    ["method", "result", "reason"],
)
REGISTRY.register(AUTH_ATTEMPTS)
ID_SIGN_INS = Counter(
    "ucgate_id_sign_ins",
    "Sign-ins checked and audited by the id service, by method, result and reason",
    ["method", "result", "reason"],
)
BUDGET_THROTTLES = Counter("ucgate_budget_throttles", "Sign-ins refused by the failure budget, by bucket", ["scope"])
DEVICE_DECISIONS = _LoopCounter(
    "ucgate_device_decisions", "Device decisions of the gateway, by service and action", ["service", "action"]
)
REGISTRY.register(DEVICE_DECISIONS)
EVENT_LAG = Histogram(
    "ucgate_event_propagation_seconds",
    "From an event's row in the store to its delivery in this process",
    ["via"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
UPSTREAM_LATENCY = _LoopHistogram(
    "ucgate_upstream_response_seconds", "From a request sent to an upstream to its response head", "upstream", _LATENCY
)
REGISTRY.register(UPSTREAM_LATENCY)
STORE_LATENCY = Histogram(
    "ucgate_store_statement_seconds", "One SQL statement in the store, by kind", ["statement"], buckets=_LATENCY
)
ID_SERVICE_LATENCY = Histogram(
    "ucgate_id_service_call_seconds", "A call of the gateway to the id service", ["call"], buckets=_LATENCY
)
TLS_HANDSHAKE_FAILURES = Counter("ucgate_tls_handshake_failures", "Client TLS handshakes that failed", ["reason"])
CONFIG_RELOADS = Counter("ucgate_config_reloads", "Configuration reloads (SIGHUP), by result", ["result"])


def _bounded(value: str | None, allowed: frozenset[str], other: str = "other") -> str:
    return value if value in allowed else other


def status_code(status: int) -> str:
    return _CODES.get(status) or f"{status // 100}xx"


_request_keys: dict[tuple[str | None, int], tuple[str, str]] = {}


def count_request(service: str | None, status: int) -> None:
    """One answered request; ``service`` a service name (or None: not recognised)."""
    key = _request_keys.get((service, status))
    if key is None:
        key = _request_keys[(service, status)] = (service or "unknown", status_code(status))
    REQUESTS.inc(key)


def auth_method(authorization: bytes | None) -> str:
    """The closed-set method of a request's Authorization scheme."""
    if authorization is None:
        return "none"
    scheme = authorization.split(b" ", 1)[0].lower()
    return {b"basic": "basic", b"ntlm": "ntlm", b"negotiate": "negotiate", b"bearer": "bearer"}.get(scheme, "other")


# the label values by the arguments (bounded to closed sets; the arguments are not, hence the cap)
_auth_keys: dict[tuple[str, str, str | None], tuple[str, str, str]] = {}
_device_keys: dict[tuple[str, str], tuple[str, str]] = {}


def count_auth(method: str, result: str, reason: str | None) -> None:
    args = (method, result, reason)
    key = _auth_keys.get(args)
    if key is None:
        key = (_bounded(method, AUTH_METHODS), _bounded(result, AUTH_RESULTS, "deny"), _bounded(reason, AUTH_REASONS))
        if len(_auth_keys) < 4096:
            _auth_keys[args] = key
    AUTH_ATTEMPTS.inc(key)


def auth_result(status: int, reason: str | None) -> str:
    """The result of a refused attempt from its answer."""
    if status == 429:
        return "throttled"
    if status == 503:
        return "unavailable"
    if status == 401 and reason in ("no-credentials", "ntlm-challenge"):
        return "challenge"
    return "deny"


def count_id_sign_in(method: str, ok: bool, reason: str) -> None:
    if ok:
        result = "allow"
    elif reason == "throttled":
        result = "throttled"
    elif reason in ("directory-unavailable", "store-unavailable"):
        result = "unavailable"
    else:
        result = "deny"
    ID_SIGN_INS.labels(_bounded(method, AUTH_METHODS), result, _bounded(reason, AUTH_REASONS)).inc()


def count_throttle(reason: str | None) -> None:
    BUDGET_THROTTLES.labels({"user-throttled": "user", "ip-throttled": "ip"}.get(reason or "", "other")).inc()


def count_device(service: str, action: str) -> None:
    args = (service, action)
    key = _device_keys.get(args)
    if key is None:
        key = (service, _bounded(action, DEVICE_ACTIONS, "block"))
        if len(_device_keys) < 4096:
            _device_keys[args] = key
    DEVICE_DECISIONS.inc(key)


def observe_event_lag(at: Any, via: str) -> None:
    """``at``: the event row's time (aware, or naive UTC as SQLite gives it back)."""
    if at is None:
        return
    ts = (at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)).timestamp()
    EVENT_LAG.labels(via).observe(max(0.0, time.time() - ts))


def tls_failure(exc: BaseException | None) -> None:
    """A failed client handshake: None is a timeout."""
    if exc is None:
        reason = "timeout"
    else:
        openssl = getattr(exc, "reason", None)
        if openssl is not None:
            reason = TLS_REASONS.get(str(openssl), "other")
        elif isinstance(exc, (ConnectionError, OSError)):
            reason = "connection-lost"
        else:
            reason = "other"
    TLS_HANDSHAKE_FAILURES.labels(reason).inc()


def app_part(path: str) -> str:
    for prefix, name in APP_PARTS:
        if path.startswith(prefix):
            return name
    return "other"


# --- gauges read at scrape time --------------------------------------------------------------
_gateways: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_gateway(gateway: Any) -> None:
    """Report ``gateway``'s live connections and signed-in users (a ``gateway.server.Gateway``)."""
    _gateways.add(gateway)


class _GatewayCollector:
    def collect(self) -> Iterable[GaugeMetricFamily]:
        conns = GaugeMetricFamily("ucgate_connections", "Open client connections of the gateway")
        signed = GaugeMetricFamily("ucgate_signed_in_connections", "Open client connections with a signed-in user")
        users = GaugeMetricFamily(
            "ucgate_signed_in_users", "Users signed in on the gateway (a connection or a Bearer token)"
        )
        n = s = u = 0
        for gw in list(_gateways):
            live = tuple(gw.connections)  # a copy in one step: the loop may change the set meanwhile
            n += len(live)
            s += sum(1 for c in live if c.principal is not None)
            try:
                u += len(gw.live_users())
            except RuntimeError:  # changed during the count (a scrape from another thread)
                pass
        conns.add_metric([], n)
        signed.add_metric([], s)
        users.add_metric([], u)
        return [conns, signed, users]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


REGISTRY.register(_GatewayCollector())


# --- the SIP relay (gateway.sip) ---------------------------------------------------------------
# Why the relay refused a message or closed a connection: its own reasons and protocols/sip.py's
# and sipauth.py's framing and field reasons; anything else counts as "other".
SIP_REASONS = frozenset(
    {
        "bare-cr-or-lf",
        "obs-fold",
        "bad-header-name",
        "bad-header-value",
        "bad-utf8-in-header",
        "duplicate-content-length",
        "missing-content-length",
        "bad-content-length",
        "head-too-large",
        "line-too-long",
        "message-too-large",
        "too-many-headers",
        "truncated-message",
        "unsupported-version",
        "bad-request-line",
        "bad-status-line",
        "cseq-method-mismatch",
        "bad-cseq",
        "bad-call-id",
        "bad-from",
        "bad-to",
        "duplicate-from",
        "duplicate-to",
        "duplicate-call-id",
        "duplicate-cseq",
        "missing-via",
        "missing-from",
        "missing-to",
        "missing-call-id",
        "missing-cseq",
        "not-a-sip-user",
        "register-from-to-mismatch",
        "unknown-auth-scheme",
        "bad-auth-param",
        "duplicate-auth-param",
        "unexpected-auth-param",
        "missing-auth-param",
        "incomplete-signature",
        "too-many-auth-params",
        "gssapi-data-too-large",
        "bad-gssapi-data",
        "ntlm-user-mismatch",
        "not-registered",
        "register-other-user",
        "from-not-registered-user",
        "device-changed",
        "several-credentials",
        "too-many-pending",
        "edge-unavailable",
        "throttled",
        "store-unavailable",
        "directory-unavailable",
        "sign-in-refused",
        "device-refused",
        "first-message-timeout",
        "idle-timeout",
        "message-timeout",
    }
)
SIP_MESSAGES = _LoopCounter(
    "ucgate_sip_messages",
    "SIP messages relayed unchanged, by direction (client: to the Access Edge; edge: to the client)",
    ["direction"],
)
REGISTRY.register(SIP_MESSAGES)
SIP_REFUSALS = Counter(
    "ucgate_sip_refusals", "SIP messages answered or connections closed by the relay itself, by reason", ["reason"]
)
_sip_relays: weakref.WeakSet[Any] = weakref.WeakSet()


def count_sip_refusal(reason: str) -> None:
    SIP_REFUSALS.labels(_bounded(reason, SIP_REASONS)).inc()


def watch_sip_relay(relay: Any) -> None:
    """Report ``relay``'s connections (a ``gateway.sip.SipRelay``)."""
    _sip_relays.add(relay)


class _SipCollector:
    def collect(self) -> Iterable[GaugeMetricFamily]:
        conns = GaugeMetricFamily("ucgate_sip_connections", "Open client connections of the SIP relay")
        reg = GaugeMetricFamily(
            "ucgate_sip_registered_connections", "SIP client connections with an admitted registration"
        )
        n = r = 0
        for relay in list(_sip_relays):
            live = tuple(relay.sessions)
            n += len(live)
            r += sum(1 for s in live if s.user is not None)
        conns.add_metric([], n)
        reg.add_metric([], r)
        return [conns, reg]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


REGISTRY.register(_SipCollector())


# --- the store ----------------------------------------------------------------------------------
def instrument_engine(engine: Any) -> None:
    """Time every statement on a SQLAlchemy engine (``ucgate_store_statement_seconds``)."""
    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany) -> None:
        conn.info.setdefault("ucgate_started", []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany) -> None:
        started = conn.info.get("ucgate_started")
        if not started:
            return
        kind = statement.lstrip()[:8].split(None, 1)[0].lower() if statement.strip() else ""
        STORE_LATENCY.labels(kind if kind in STATEMENTS else "other").observe(time.perf_counter() - started.pop())

    @event.listens_for(engine, "handle_error")
    def _error(ctx) -> None:
        conn = ctx.connection
        if conn is not None and conn.info.get("ucgate_started"):
            conn.info["ucgate_started"].pop()


# --- exposition ------------------------------------------------------------------------------------
def render() -> bytes:
    """The text exposition of this process's metrics."""
    return generate_latest(REGISTRY)


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def allowed_scraper(host: str | None, allow: tuple[Any, ...]) -> bool:
    """Whether a peer at ``host`` may read /metrics (``[metrics] allow``; loopback by default)."""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in allow)

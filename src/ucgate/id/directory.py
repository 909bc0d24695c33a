"""Active Directory (LDAP) connector.

Blocking (ldap3, synchronous strategy): asyncio callers run it in a thread
(``await asyncio.to_thread(directory.resolve, name)``). One service connection is
shared behind a lock; password checks use their own short-lived connections.

Security properties
-------------------
* TLS only by default: ``ldaps://`` or ``ldap://`` + StartTLS, TLS 1.2+, chain *and*
  host name verified (OpenSSL's check, IP SANs included) against ``ca_file`` or the
  system store. Plain LDAP needs ``allow_insecure=True`` (tests only).
* User input never reaches a filter unescaped: :func:`parse_name` validates and
  classifies a sign-in name, :func:`escape_filter_value` escapes per RFC 4515, and
  :func:`user_filters` builds the filters. All three are pure (no I/O) and unit tested.
* A directory outage raises ``DirectoryError("unavailable")`` after at most a few
  ``timeout`` seconds (connect timeout, receive timeout on every read including the
  TLS handshake); nothing waits forever.
* :meth:`Directory.verify_password` does the same work for an unknown user as for a
  known one (a directory search, then a fresh TLS connection and one simple bind,
  which for an unknown user targets a DN that cannot exist), and every call is padded
  to at least ``verify_floor`` seconds, so timing does not tell whether a name exists.

Failure reasons (``DirectoryError.reason``): ``invalid-name``, ``ambiguous``,
``unavailable``, ``tls-error``, ``service-bind-failed``, ``protocol-error``.
"""

from __future__ import annotations

import datetime as _dt
import math
import ssl
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from ..errors import UcgateError

__all__ = [
    "AccountState",
    "Directory",
    "DirectoryError",
    "DirectoryUser",
    "NameKind",
    "NameQuery",
    "escape_filter_value",
    "parse_name",
    "user_filters",
    "filetime_to_datetime",
    "MAX_NAME_LENGTH",
]

MAX_NAME_LENGTH = 256

# userAccountControl / msDS-User-Account-Control-Computed bits (MS-ADTS 2.2.16)
UF_ACCOUNTDISABLE = 0x0002
UF_LOCKOUT = 0x0010
UF_PASSWORD_EXPIRED = 0x800000

MATCHING_RULE_IN_CHAIN = "1.2.840.113556.1.4.1941"
SAM_USER_OBJECT = "805306368"  # sAMAccountType of user accounts (not computers, not contacts)
ATTR_SIP = "msRTCSIP-PrimaryUserAddress"
FILETIME_NEVER = (0, 0x7FFFFFFFFFFFFFFF)

# characters AD never allows in a sAMAccountName
_SAM_FORBIDDEN = set('"/\\[]:;|=,+*?<>')

_USER_ATTRS = [
    "distinguishedName",
    "sAMAccountName",
    "userPrincipalName",
    ATTR_SIP,
    "mail",
    "proxyAddresses",
    "displayName",
    "objectGUID",
    "objectSid",
    "primaryGroupID",
]
_STATE_ATTRS = [
    "userAccountControl",
    "msDS-User-Account-Control-Computed",
    "accountExpires",
    "pwdLastSet",
    "lockoutTime",
    "badPwdCount",
]


# --------------------------------------------------------------------------- errors, values


class DirectoryError(UcgateError):
    """A directory operation failed; ``reason`` is a stable code for callers/audit."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)


def filetime_to_datetime(value: int) -> _dt.datetime | None:
    """Windows FILETIME (100 ns ticks since 1601) -> aware UTC datetime; 0 / max -> None."""
    if value in FILETIME_NEVER or value <= 0:
        return None
    try:
        return _dt.datetime(1601, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(microseconds=value // 10)
    except OverflowError:
        return None


@dataclass(frozen=True)
class AccountState:
    disabled: bool = False
    locked: bool = False
    expired: bool = False
    password_must_change: bool = False
    password_expired: bool = False  # UF_PASSWORD_EXPIRED (maxPwdAge passed or pwdLastSet=0)
    password_last_set: _dt.datetime | None = None
    lockout_time: _dt.datetime | None = None
    account_expires: _dt.datetime | None = None
    bad_password_count: int = 0
    exists: bool = True

    def blocked_reason(self) -> str | None:
        """Why the account may not sign in now, or None. Checked in this order."""
        if not self.exists:
            return "deleted"
        if self.disabled:
            return "disabled"
        if self.locked:
            return "locked"
        if self.expired:
            return "expired"
        if self.password_must_change or self.password_expired:
            return "password-must-change"
        return None

    @property
    def blocked(self) -> bool:
        return self.blocked_reason() is not None


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    sam_account_name: str
    upn: str | None
    sip_uri: str | None
    mail: str | None
    display_name: str | None
    object_guid: str | None
    object_sid: str | None
    groups: frozenset[str]  # DNs of every group the user is in, nested ones included
    state: AccountState
    proxy_addresses: tuple[str, ...] = ()


# --------------------------------------------------------------------------- pure parsing


class NameKind(StrEnum):
    SAM = "sam"  # sAMAccountName (also DOMAIN\\user)
    UPN = "upn"  # user@suffix
    SIP = "sip"  # sip:user@domain


@dataclass(frozen=True)
class NameQuery:
    kind: NameKind
    value: str  # sam: account name; upn: user@suffix; sip: user@domain (no scheme)
    domain: str | None = None  # the DOMAIN of DOMAIN\\user

    def cache_key(self) -> tuple[str, str, str]:
        return (self.kind.value, self.value.casefold(), (self.domain or "").casefold())


def _invalid(why: str) -> DirectoryError:
    return DirectoryError("invalid-name", why)


def parse_name(name: object) -> NameQuery:
    """Classify a sign-in name: ``user``, ``DOMAIN\\user``, ``user@upn.suffix`` or
    ``sip:user@domain``. Raises ``DirectoryError("invalid-name")`` for anything else:
    non-strings, empty, longer than 256 characters, control characters, unpaired
    surrogates, malformed forms. Surrounding blanks are ignored.
    """
    if not isinstance(name, str):
        raise _invalid("not a string")
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid("too long")
    for ch in name:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Zl", "Zp") or ch in "\u200b\ufeff":  # NUL, controls, ...
            raise _invalid("control character")
    name = name.strip(" ")
    if not name:
        raise _invalid("empty")
    if any(ch.isspace() for ch in name if ch != " "):
        raise _invalid("whitespace")

    if name[:4].lower() == "sip:":
        rest = name[4:]
        local, at, host = rest.partition("@")
        if not at or not local or not host or "@" in host or " " in rest:
            raise _invalid("malformed SIP URI")
        if any(c in rest for c in ";?<>\\"):
            raise _invalid("SIP URI with parameters or headers")
        return NameQuery(NameKind.SIP, rest)

    if "\\" in name:
        domain, _, user = name.partition("\\")
        if not domain or not user or "\\" in user or "@" in user or "@" in domain:
            raise _invalid("malformed DOMAIN\\user")
        _check_sam(user)
        return NameQuery(NameKind.SAM, user, domain)

    if "@" in name:
        local, _, suffix = name.partition("@")
        if not local or not suffix or "@" in suffix:
            raise _invalid("malformed user@domain")
        return NameQuery(NameKind.UPN, name)

    _check_sam(name)
    return NameQuery(NameKind.SAM, name)


def _check_sam(user: str) -> None:
    if user.strip(" ") != user or not user:
        raise _invalid("blank account name")
    if any(c in _SAM_FORBIDDEN for c in user):
        raise _invalid("character not allowed in an account name")
    if user.endswith("."):
        raise _invalid("account name ends with '.'")


def escape_filter_value(value: str | bytes) -> str:
    """Escape an assertion value for an LDAP filter (RFC 4515 section 3).

    ``*``, ``(``, ``)``, ``\\`` and NUL become ``\\2a``, ``\\28``, ``\\29``, ``\\5c``,
    ``\\00``; bytes (e.g. a binary SID or GUID) are escaped entirely as ``\\xx``.
    Other characters pass through (ldap3 sends the filter as UTF-8).
    """
    if isinstance(value, (bytes, bytearray)):
        return "".join(f"\\{b:02x}" for b in value)
    out = []
    for ch in value:
        if ch in "*()\\\x00":
            out.append(f"\\{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def user_filters(query: NameQuery) -> list[str]:
    """The LDAP filters to try, in order, for a parsed name (first unique hit wins)."""
    v = escape_filter_value(query.value)
    user = f"(sAMAccountType={SAM_USER_OBJECT})"
    if query.kind is NameKind.SAM:
        return [f"(&{user}(sAMAccountName={v}))"]
    if query.kind is NameKind.UPN:
        return [f"(&{user}(userPrincipalName={v}))"]
    return [
        f"(&{user}({ATTR_SIP}=sip:{v}))",
        f"(&{user}(proxyAddresses=sip:{v}))",
        f"(&{user}(mail={v}))",
    ]


def normalize_dn(dn: str) -> str:
    """Case- and blank-insensitive form of a DN for comparisons."""
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except Exception:  # noqa: BLE001 - ldap3 raises assorted errors on a malformed DN; compare it as text
        return dn.strip().casefold()
    return ",".join(f"{a.strip().casefold()}={v.strip().casefold()}" for a, v, _ in parts)


def sid_to_str(raw: bytes) -> str:
    rev, count = raw[0], raw[1]
    auth = int.from_bytes(raw[2:8], "big")
    subs = [int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(count)]
    return "S-" + "-".join(str(x) for x in [rev, auth, *subs])


def state_from_attributes(attrs: dict[str, list[bytes]], now: _dt.datetime) -> AccountState:
    """AccountState from raw attribute values (keys lower-cased). Pure."""

    def num(key: str, default: int = 0) -> int:
        vals = attrs.get(key.lower())
        if not vals:
            return default
        try:
            return int(vals[0])
        except ValueError:
            return default

    uac = num("userAccountControl")
    computed_vals = attrs.get("msds-user-account-control-computed")
    computed = num("msDS-User-Account-Control-Computed")
    pwd_last_set_raw = num("pwdLastSet", default=-1)
    lockout_raw = num("lockoutTime")
    expires_raw = num("accountExpires")
    expires = filetime_to_datetime(expires_raw)
    if computed_vals:
        locked = bool(computed & UF_LOCKOUT)
    else:  # no constructed attribute: lockoutTime set means locked (conservative)
        locked = lockout_raw > 0
    return AccountState(
        disabled=bool(uac & UF_ACCOUNTDISABLE),
        locked=locked,
        expired=expires is not None and expires <= now,
        password_must_change=pwd_last_set_raw == 0,
        password_expired=bool(computed & UF_PASSWORD_EXPIRED),
        password_last_set=filetime_to_datetime(pwd_last_set_raw) if pwd_last_set_raw > 0 else None,
        lockout_time=filetime_to_datetime(lockout_raw),
        account_expires=expires,
        bad_password_count=num("badPwdCount"),
    )


# --------------------------------------------------------------------------- I/O


def _ldap3() -> Any:
    import ldap3  # imported lazily: the pure functions above need no ldap3

    return ldap3


class _StrictTls:
    """ldap3 Tls replacement: our SSLContext (TLS 1.2+, CERT_REQUIRED, check_hostname)."""

    def __new__(cls, context: ssl.SSLContext, server_hostname: str):
        tls_base: Any = _ldap3().Tls  # a class that comes at run time (ldap3 is imported lazily)

        class StrictTls(tls_base):
            def wrap_socket(self, connection, do_handshake=False):
                connection.socket = context.wrap_socket(
                    connection.socket,
                    server_side=False,
                    do_handshake_on_connect=do_handshake,
                    server_hostname=server_hostname,
                )

        return StrictTls(validate=ssl.CERT_REQUIRED)


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    use_ssl: bool


def _parse_url(url: str) -> _Endpoint:
    u = urlsplit(url)
    if u.scheme not in ("ldap", "ldaps") or not u.hostname:
        raise ValueError(f"directory url must be ldap:// or ldaps://host[:port], got {url!r}")
    ssl_ = u.scheme == "ldaps"
    return _Endpoint(u.hostname, u.port or (636 if ssl_ else 389), ssl_)


class Directory:
    """Look up users, their groups and account state; verify passwords by bind.

    ``url`` may be a list (several DCs): they are tried in order on connect.
    ``cache_ttl`` seconds on ``clock`` (monotonic by default) for :meth:`resolve`
    and group membership, negative answers included; :meth:`account_state` always
    reads fresh.
    """

    def __init__(
        self,
        *,
        url: str | Sequence[str],
        bind_dn: str,
        bind_password: str,
        base_dn: str,
        ca_file: str | None = None,
        start_tls: bool = False,
        timeout: float = 5.0,
        netbios_domain: str | None = None,
        cache_ttl: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.UTC),
        tls_server_name: str | None = None,
        allow_insecure: bool = False,
        verify_floor: float = 0.15,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("no directory url")
        self._endpoints = [_parse_url(u) for u in urls]
        for ep in self._endpoints:
            if not ep.use_ssl and not start_tls and not allow_insecure:
                raise ValueError("plain ldap:// needs start_tls=True (or allow_insecure for tests)")
        self._bind_dn = bind_dn
        self._bind_password = bind_password
        self.base_dn = base_dn
        self._start_tls = start_tls
        self._insecure = allow_insecure and not start_tls
        self.timeout = timeout
        self.netbios_domain = netbios_domain
        self.cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._clock = clock
        self._now = now
        self._tls_server_name = tls_server_name
        self._verify_floor = verify_floor
        self._ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ctx.check_hostname = True
        self._ctx.verify_mode = ssl.CERT_REQUIRED
        self._lock = threading.Lock()  # guards the shared service connection
        self._conn: Any = None
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()

    # ------------------------------------------------------------ connections

    def _server(self, ep: _Endpoint):
        ldap3 = _ldap3()
        tls = None
        if ep.use_ssl or self._start_tls:
            tls = _StrictTls(self._ctx, self._tls_server_name or ep.host)
        return ldap3.Server(
            ep.host, port=ep.port, use_ssl=ep.use_ssl, tls=tls, get_info=ldap3.NONE, connect_timeout=self.timeout
        )

    def _open(self, bind_dn: str, password: str, *, raise_bind: bool = True):
        """A connected, TLS-protected, bound connection, or DirectoryError.
        With raise_bind=False a refused bind returns None instead."""
        ldap3 = _ldap3()
        exc = ldap3.core.exceptions
        last: Exception | None = None
        for ep in self._endpoints:
            conn = ldap3.Connection(
                self._server(ep),
                user=bind_dn,
                password=password,
                # ldap3 packs receive_timeout into SO_RCVTIMEO as an integer
                authentication=ldap3.SIMPLE,
                receive_timeout=max(1, math.ceil(self.timeout)),
                raise_exceptions=True,
                check_names=False,
                auto_referrals=False,
                read_only=True,
                return_empty_attributes=False,
            )
            try:
                conn.open()
                if self._start_tls and not ep.use_ssl:
                    conn.start_tls()
                conn.bind()
                return conn
            except exc.LDAPInvalidCredentialsResult as e:
                _close(conn)
                if not raise_bind:
                    return None
                raise DirectoryError("service-bind-failed", _msg(e)) from None
            except exc.LDAPBindError as e:
                _close(conn)
                if not raise_bind:
                    return None
                raise DirectoryError("service-bind-failed", _msg(e)) from None
            except (ssl.SSLCertVerificationError, exc.LDAPCertificateError) as e:
                _close(conn)
                last = DirectoryError("tls-error", _msg(e))
            except exc.LDAPStartTLSError as e:
                _close(conn)
                cause = e.__context__ or e
                if isinstance(cause, ssl.SSLCertVerificationError) or "certificate" in str(e).lower():
                    last = DirectoryError("tls-error", _msg(e))
                else:
                    last = DirectoryError("unavailable", _msg(e))
            except (exc.LDAPException, OSError) as e:
                _close(conn)
                if _is_cert_error(e):
                    last = DirectoryError("tls-error", _msg(e))
                else:
                    last = DirectoryError("unavailable", f"{ep.host}:{ep.port}: {_msg(e)}")
        assert last is not None
        raise last

    def _with_service(self, fn: Callable[[Any], Any]) -> Any:
        """Run fn(conn) on the shared service connection; reconnect once if a reused
        connection turns out to be dead."""
        ldap3 = _ldap3()
        exc = ldap3.core.exceptions
        with self._lock:
            for attempt in (0, 1):
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = self._open(self._bind_dn, self._bind_password)
                try:
                    return fn(self._conn)
                except (
                    exc.LDAPCommunicationError,
                    exc.LDAPSocketOpenError,
                    exc.LDAPSessionTerminatedByServerError,
                    exc.LDAPResponseTimeoutError,
                    exc.LDAPSocketReceiveError,
                    exc.LDAPSocketSendError,
                    exc.LDAPBusyResult,
                    exc.LDAPUnavailableResult,
                    OSError,
                ) as e:
                    _close(self._conn)
                    self._conn = None
                    if not reused or attempt == 1:
                        raise DirectoryError("unavailable", _msg(e)) from None
                except exc.LDAPOperationResult as e:
                    raise DirectoryError("protocol-error", _msg(e)) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            _close(self._conn)
            self._conn = None

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ cache

    def _cache_get(self, key: tuple) -> tuple[bool, Any]:
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is None:
                return False, None
            if hit[0] <= self._clock():
                del self._cache[key]
                return False, None
            self._cache.move_to_end(key)
            return True, hit[1]

    def _cache_put(self, key: tuple, value: Any) -> None:
        if self.cache_ttl <= 0:
            return
        with self._cache_lock:
            self._cache[key] = (self._clock() + self.cache_ttl, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def invalidate(self, name: str | None = None) -> None:
        """Drop cached answers (all, or those for one sign-in name)."""
        with self._cache_lock:
            if name is None:
                self._cache.clear()
            else:
                self._cache.pop(("user",) + parse_name(name).cache_key(), None)

    # ------------------------------------------------------------ searches

    @staticmethod
    def _search(
        conn, base: str, filt: str, attrs: list[str], scope: str = "SUBTREE", size_limit: int = 0
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        ldap3 = _ldap3()
        entries: list[tuple[str, dict[str, list[bytes]]]] = []
        cookie = None
        while True:
            conn.search(
                base,
                filt,
                search_scope=getattr(ldap3, scope),
                attributes=attrs,
                size_limit=size_limit,
                paged_size=None if scope == "BASE" else 500,
                paged_cookie=cookie,
            )
            for r in conn.response or ():
                if r.get("type") != "searchResEntry":
                    continue
                entries.append((r["dn"], {k.lower(): list(v) for k, v in r.get("raw_attributes", {}).items()}))
            if scope == "BASE":
                break
            ctrl = (conn.result.get("controls") or {}).get("1.2.840.113556.1.4.319")
            cookie = ctrl and ctrl["value"]["cookie"]
            if not cookie:
                break
        return entries

    def _search_base(self, conn, dn: str, attrs: list[str]) -> dict[str, list[bytes]] | None:
        exc = _ldap3().core.exceptions
        try:
            found = self._search(conn, dn, "(objectClass=*)", attrs, scope="BASE")
        except exc.LDAPNoSuchObjectResult:
            return None
        return found[0][1] if found else None

    # ------------------------------------------------------------ public API

    def resolve(self, name: str) -> DirectoryUser | None:
        """The user a sign-in name denotes, or None if there is none (or it is in
        another NetBIOS domain). Raises DirectoryError (invalid-name, ambiguous,
        unavailable, ...)."""
        q = parse_name(name)
        if (
            q.domain is not None
            and self.netbios_domain is not None
            and q.domain.casefold() != self.netbios_domain.casefold()
        ):
            return None
        key = ("user",) + q.cache_key()
        hit, value = self._cache_get(key)
        if hit:
            return value
        user = self._with_service(lambda c: self._lookup(c, q))
        self._cache_put(key, user)
        return user

    def _lookup(self, conn, q: NameQuery) -> DirectoryUser | None:
        for filt in user_filters(q):
            found = self._search(conn, self.base_dn, filt, _USER_ATTRS + _STATE_ATTRS, size_limit=2)
            if len(found) > 1:
                raise DirectoryError("ambiguous", f"{len(found)} entries match")
            if found:
                dn, attrs = found[0]
                return self._build_user(conn, dn, attrs)
        return None

    def _build_user(self, conn, dn: str, attrs: dict[str, list[bytes]]) -> DirectoryUser:
        if "msds-user-account-control-computed" not in attrs:
            # some servers construct it only for base-scope searches
            more = self._search_base(conn, dn, ["msDS-User-Account-Control-Computed"]) or {}
            attrs = {**attrs, **more}
        sid = _first_bytes(attrs, "objectsid")
        guid = _first_bytes(attrs, "objectguid")
        proxies = tuple(_strs(attrs, "proxyaddresses"))
        sip = _first_str(attrs, ATTR_SIP.lower())
        if not sip:
            sip = next(("sip:" + p[4:] for p in proxies if p[:4].lower() == "sip:"), None)
        elif sip[:4].lower() == "sip:":
            sip = "sip:" + sip[4:]
        return DirectoryUser(
            dn=dn,
            sam_account_name=_first_str(attrs, "samaccountname") or "",
            upn=_first_str(attrs, "userprincipalname"),
            sip_uri=sip,
            mail=_first_str(attrs, "mail"),
            display_name=_first_str(attrs, "displayname"),
            object_guid=str(uuid.UUID(bytes_le=guid)) if guid and len(guid) == 16 else None,
            object_sid=sid_to_str(sid) if sid else None,
            groups=self._groups(conn, dn, sid, _first_str(attrs, "primarygroupid")),
            state=state_from_attributes(attrs, self._now()),
            proxy_addresses=proxies,
        )

    def _groups(self, conn, dn: str, sid: bytes | None, primary_rid: str | None) -> frozenset[str]:
        """All groups of ``dn``, transitively (LDAP_MATCHING_RULE_IN_CHAIN), plus the
        primary group (which is not in ``member``) and the groups it is nested in."""
        clauses = [f"(member:{MATCHING_RULE_IN_CHAIN}:={escape_filter_value(dn)})"]
        groups: set[str] = set()
        if sid and primary_rid and primary_rid.isdigit():
            group_sid = sid[:1] + bytes([sid[1]]) + sid[2:-4] + int(primary_rid).to_bytes(4, "little")
            prim = self._search(
                conn,
                self.base_dn,
                f"(&(objectClass=group)(objectSid={escape_filter_value(group_sid)}))",
                ["distinguishedName"],
                size_limit=1,
            )
            if prim:
                groups.add(prim[0][0])
                clauses.append(f"(member:{MATCHING_RULE_IN_CHAIN}:={escape_filter_value(prim[0][0])})")
        filt = f"(&(objectClass=group)(|{''.join(clauses)}))"
        groups.update(d for d, _ in self._search(conn, self.base_dn, filt, ["distinguishedName"]))
        return frozenset(groups)

    def account_state(self, user: DirectoryUser | str) -> AccountState:
        """Fresh read (never cached) of the account state, for re-checks of live
        sessions. Follows the objectGUID, so a renamed or moved account is found;
        a deleted one gives ``AccountState(exists=False)`` (blocked: "deleted")."""
        if isinstance(user, DirectoryUser):
            base = f"<GUID={user.object_guid}>" if user.object_guid else user.dn
        else:
            base = user

        def read(conn):
            attrs = self._search_base(conn, base, _STATE_ATTRS)
            if attrs is None:
                return AccountState(exists=False)
            return state_from_attributes(attrs, self._now())

        return self._with_service(read)

    def is_member(self, user: DirectoryUser, group: str) -> bool:
        """Is ``user`` in ``group`` (a DN, or a group's sAMAccountName / cn), nested
        membership included? Uses the user's group set (cached for cache_ttl)."""
        group_dn = self._group_dn(group)
        if group_dn is None:
            return False
        key = ("groups", normalize_dn(user.dn))
        hit, groups = self._cache_get(key)
        if not hit:
            groups = frozenset(normalize_dn(g) for g in user.groups)
            self._cache_put(key, groups)
        return normalize_dn(group_dn) in groups

    def _group_dn(self, group: str) -> str | None:
        if "=" in group:
            return group
        if len(group) > MAX_NAME_LENGTH or any(unicodedata.category(c) == "Cc" for c in group):
            raise DirectoryError("invalid-name", "group name")
        key = ("group", group.casefold())
        hit, dn = self._cache_get(key)
        if hit:
            return dn
        v = escape_filter_value(group)
        found = self._with_service(
            lambda c: self._search(
                c,
                self.base_dn,
                f"(&(objectClass=group)(|(sAMAccountName={v})(cn={v})))",
                ["distinguishedName"],
                size_limit=2,
            )
        )
        if len(found) > 1:
            raise DirectoryError("ambiguous", f"group {group!r}")
        dn = found[0][0] if found else None
        self._cache_put(key, dn)
        return dn

    def verify_password(self, user: DirectoryUser | str, password: str) -> bool:
        """Check a domain password by an LDAP simple bind as the user (fresh TLS
        connection). A refused bind (wrong password, but also disabled, locked,
        expired or must-change accounts) is False.

        Unknown names cost the same as known ones: the name is resolved (a search in
        both cases), then a bind is made in both cases -- for an unknown name to a
        DN under base_dn that cannot exist, which the server refuses with the same
        invalidCredentials. The whole call is padded to ``verify_floor`` seconds.
        Note the directory counts each failed bind towards its own lockout.
        """
        start = time.monotonic()
        try:
            if not isinstance(password, str) or not password or "\x00" in password:
                return False  # an empty password would be an *unauthenticated* bind
            if isinstance(user, DirectoryUser):
                target = user.dn
            else:
                found = self.resolve(user)
                target = found.dn if found else (f"CN=ucgate-no-such-user-{uuid.uuid4().hex},{self.base_dn}")
            conn = self._open(target, password, raise_bind=False)
            if conn is None:
                return False
            _close(conn)
            return True
        finally:
            left = self._verify_floor - (time.monotonic() - start)
            if left > 0:
                time.sleep(left)


# --------------------------------------------------------------------------- small helpers


def _close(conn) -> None:
    if conn is None:
        return
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001 - closing a broken connection; whatever it raises is moot
        pass


def _msg(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _is_cert_error(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        cur = cur.__cause__ or cur.__context__
    text = str(e)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text


def _first_bytes(attrs: dict[str, list[bytes]], key: str) -> bytes | None:
    vals = attrs.get(key)
    return bytes(vals[0]) if vals else None


def _strs(attrs: dict[str, list[bytes]], key: str) -> Iterable[str]:
    for v in attrs.get(key, ()):
        yield v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


def _first_str(attrs: dict[str, list[bytes]], key: str) -> str | None:
    return next(iter(_strs(attrs, key)), None)

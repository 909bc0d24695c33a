"""Kerberos from clients: accept an AP-REQ in ``Authorization: Negotiate`` with the pool's keytab.

Every gateway of a pool shares one service account and keytab for ``HTTP/<published name>``
(the Lync "Kerberos account" idea): the SPN is on exactly one account, so any node behind the
balancer can decrypt the ticket. :class:`KerberosAcceptor` is the acceptor side, on MIT krb5
through python-gssapi (``pip install gssapi``; Debian ``libkrb5-dev`` to build it):

* the token may be a raw Kerberos GSS token (``1.2.840.113554.1.2.2``) or SPNEGO carrying one;
  MIT's SPNEGO mechanism unwraps it and wraps the AP-REP for mutual authentication, which the
  caller sends back in ``WWW-Authenticate: Negotiate <token>``;
* only tickets for the configured service principal are accepted (the acceptor credential is
  acquired *for that name*), and only client principals of the configured realm; the user is
  the principal without the realm;
* expired, replayed (MIT's replay cache) and wrong-SPN tickets raise :class:`KerberosError`
  with a short ``reason`` (``krb-ticket-expired``, ``krb-replay``, ``krb-wrong-principal``,
  ``krb-bad-integrity`` (stale keytab), ``krb-clock-skew``, ``krb-foreign-realm``, ...).

gssapi calls block (a keytab read, a replay-cache write; never the network on the acceptor
side) and are run in a thread by the caller (``gateway.preauth``).

The keytab reader/writer and principal names are in ``protocols.keytab`` (pure), re-exported
here for the lab's and older callers' imports.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UcgateError
from ..protocols.keytab import (  # noqa: F401 - re-exported (the lab, older callers)
    ENCTYPES,
    SUPPORTED_ETYPE_BITS,
    KeytabEntry,
    split_principal,
)
from ..store.keytab import read_keytab, write_keytab  # noqa: F401 - re-exported

if TYPE_CHECKING:
    import gssapi

try:
    from gssapi.raw.misc import GSSError
except ImportError:  # python-gssapi missing: the constructors raise ImportError/BackendError first

    class GSSError(Exception):  # type: ignore[no-redef]  # the stand-in for the missing module's
        min_code = None


log = logging.getLogger("ucgate.gateway.kerberos")

# --- krb5 error codes (MIT: minor status = ERROR_TABLE_BASE_krb5 + code, unsigned) ------------
_KRB5_BASE = -1765328384


def _krb5_code(n: int) -> int:
    return (_KRB5_BASE + n) & 0xFFFFFFFF


KRB5_MINOR_REASONS: dict[int, str] = {
    _krb5_code(31): "krb-bad-integrity",  # KRB5KRB_AP_ERR_BAD_INTEGRITY: wrong key (stale keytab)
    _krb5_code(32): "krb-ticket-expired",  # KRB5KRB_AP_ERR_TKT_EXPIRED
    _krb5_code(33): "krb-ticket-not-yet-valid",  # KRB5KRB_AP_ERR_TKT_NYV
    _krb5_code(34): "krb-replay",  # KRB5KRB_AP_ERR_REPEAT
    _krb5_code(35): "krb-wrong-principal",  # KRB5KRB_AP_ERR_NOT_US
    _krb5_code(36): "krb-wrong-principal",  # KRB5KRB_AP_ERR_BADMATCH
    _krb5_code(37): "krb-clock-skew",  # KRB5KRB_AP_ERR_SKEW
    _krb5_code(41): "krb-bad-integrity",  # KRB5KRB_AP_ERR_MODIFIED
    _krb5_code(44): "krb-stale-keytab",  # KRB5KRB_AP_ERR_BADKEYVER: kvno not in the keytab
    _krb5_code(45): "krb-wrong-principal",  # KRB5KRB_AP_ERR_NOKEY
    _krb5_code(187): "krb-wrong-principal",  # KRB5KRB_AP_WRONG_PRINC
}

# The messages MIT uses for the same conditions (for minor codes not in the table above, e.g.
# keytab lookups, whose codes differ between versions).
_MESSAGE_REASONS = (
    ("expired", "krb-ticket-expired"),
    ("replay", "krb-replay"),
    ("not yet valid", "krb-ticket-not-yet-valid"),
    ("clock skew", "krb-clock-skew"),
    ("wrong principal", "krb-wrong-principal"),
    ("no key table entry", "krb-wrong-principal"),
    ("cannot find key", "krb-wrong-principal"),
    ("key version", "krb-stale-keytab"),
    ("integrity", "krb-bad-integrity"),
    ("decrypt", "krb-bad-integrity"),
)


class KerberosError(UcgateError):
    """A refused Kerberos token; ``reason`` is a short code for the log and the audit trail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)


def gss_reason(exc: BaseException, default: str = "krb-refused") -> str:
    """Map a gssapi GSSError (or anything) to one of our reason codes."""
    minor = getattr(exc, "min_code", None)
    if minor is not None and minor in KRB5_MINOR_REASONS:
        return KRB5_MINOR_REASONS[minor]
    text = str(exc).lower()
    # MIT: "Cannot decrypt ticket for A using keytab key for B": a ticket for another SPN
    m = re.search(r"decrypt ticket for (\S+) using keytab key for (\S+?)\)?$", text)
    if m and m.group(1) != m.group(2):
        return "krb-wrong-principal"
    for needle, reason in _MESSAGE_REASONS:
        if needle in text:
            return reason
    return default


def use_krb5_conf(krb5_conf: str | os.PathLike | None) -> None:
    """Point MIT krb5 at ``krb5_conf`` (the environment is read per library context, so this
    applies to later gssapi calls in the whole process). Refuses a second, different file."""
    if not krb5_conf:
        return
    value = str(krb5_conf)
    current = os.environ.get("KRB5_CONFIG")
    if current and current != value and os.environ.get("UCGATE_KRB5_CONFIG_SET") == "1":
        log.warning("KRB5_CONFIG changes from %s to %s (one krb5.conf per process)", current, value)
    os.environ["KRB5_CONFIG"] = value
    os.environ["UCGATE_KRB5_CONFIG_SET"] = "1"


# --- the acceptor -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KerberosResult:
    user: str  # sAMAccountName-style: the principal without the realm
    principal: str  # user@REALM as the ticket named it
    token: bytes | None  # the mutual-authentication reply (AP-REP, SPNEGO-wrapped if SPNEGO came in)


class KerberosAcceptor:
    """Verify AP-REQs for ``service_principal`` (``HTTP/gw.contoso.com``, realm appended when
    missing) with ``keytab``; clients must be of ``realm``.

    ``rcache``: a replay cache name for MIT (``dfl:`` default; ``none:`` disables replay
    detection, which you should not do).
    """

    def __init__(
        self,
        keytab: str | os.PathLike,
        service_principal: str,
        realm: str,
        *,
        krb5_conf: str | os.PathLike | None = None,
        rcache: str | None = None,
    ) -> None:
        import gssapi  # noqa: F401 - fail early with ImportError when python-gssapi is missing

        self.keytab = str(keytab)
        self.realm = realm
        name, r = split_principal(service_principal)
        self.service_principal = f"{name}@{r or realm}"
        self.rcache = rcache
        use_krb5_conf(krb5_conf)
        self._lock = threading.Lock()
        self._creds: gssapi.Credentials | None = None

    def _acceptor_creds(self) -> gssapi.Credentials:
        import gssapi

        with self._lock:
            if self._creds is None:
                store: dict[bytes | str, bytes | str] = {b"keytab": self.keytab.encode()}
                if self.rcache:
                    store[b"rcache"] = self.rcache.encode()
                name = gssapi.Name(self.service_principal, gssapi.NameType.kerberos_principal)
                try:
                    self._creds = gssapi.Credentials(name=name, usage="accept", store=store)
                except GSSError as e:
                    raise KerberosError(
                        "krb-no-acceptor-key", f"{self.service_principal} in {self.keytab}: {e}"
                    ) from None
            return self._creds

    def reload(self) -> None:
        """Forget the acceptor credential (after the keytab was replaced)."""
        with self._lock:
            self._creds = None

    def accept(self, token: bytes) -> KerberosResult:
        """Verify one AP-REQ (raw or in SPNEGO). Blocking: call it in a thread."""
        import gssapi

        creds = self._acceptor_creds()
        ctx = gssapi.SecurityContext(creds=creds, usage="accept")
        try:
            out = ctx.step(token)
            # python-gssapi may hand back an error token and raise the error on the next
            # attribute access (check_last_err): read everything inside the try
            complete = ctx.complete
            principal = str(ctx.initiator_name) if complete else ""
        except GSSError as e:
            raise KerberosError(gss_reason(e), str(e)) from None
        if not complete:
            # Kerberos completes in one leg; a continue-needed means a mechanism we do not
            # offer here (SPNEGO negotiating NTLM) or a DCE-style exchange.
            raise KerberosError("krb-incomplete", "the context needs more legs")
        user, realm = split_principal(principal)
        if realm.upper() != self.realm.upper():
            raise KerberosError("krb-foreign-realm", f"{principal} is not of realm {self.realm}")
        if not user or "/" in user:
            raise KerberosError("krb-not-a-user", f"{principal} is a service principal")
        return KerberosResult(user=user.replace("\\@", "@"), principal=principal, token=out or None)


def acceptor_from_config(kc) -> KerberosAcceptor | None:
    """The client-side acceptor from ``[kerberos]`` (None when ``accept_negotiate = false``)."""
    if kc is None or not kc.accept_negotiate:
        return None
    return KerberosAcceptor(kc.keytab, kc.service_principal, kc.realm, krb5_conf=kc.krb5_conf)

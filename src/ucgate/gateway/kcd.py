"""``kcd`` backend credentials: Kerberos constrained delegation with protocol transition.

The user authenticated to the gateway with an ASP (Basic/NTLM) or a Kerberos ticket; the front
end wants Kerberos. The gateway's service account (the pool's account, whose keys are in the
keytab) asks the KDC for

1. a TGT for itself (from the keytab: ``client_keytab`` credential store, kept in a memory
   ccache and renewed by MIT from the keytab when it expires),
2. **S4U2Self**: a service ticket *to itself* in the user's name (no user password needed;
   the account must be trusted for protocol transition, ``TRUSTED_TO_AUTH_FOR_DELEGATION``),
3. **S4U2Proxy**: with that ticket as evidence, a ticket *to the front end's SPN* in the
   user's name (the SPN must be in the account's ``msDS-AllowedToDelegateTo``),

and sends the AP-REQ as ``Authorization: Negotiate <token>`` (SPNEGO-wrapped by default, as
IIS/HTTP.sys and mod_auth_gssapi expect; ``mech="krb5"`` for a raw Kerberos token).

This is python-gssapi on MIT krb5 (``gss_acquire_cred_impersonate_name`` + ``gss_init_sec_context``).
The calls block on the KDC, so they run in a small thread pool of their own, each bounded by
``timeout`` (and by krb5.conf ``kdc_timeout``/``max_retries``): a dead KDC gives a 502 with a
reason, never a hang. The impersonated credential is cached per user for its lifetime (minus a
margin); MIT keeps the S4U2Proxy ticket in it, so later requests cost one local AP-REQ.

krb5.conf must say ``forwardable = true`` (S4U2Proxy needs a forwardable evidence ticket) and
should say ``dns_canonicalize_hostname = false`` and ``rdns = false`` (SPNs are used as given).

Reasons (``BackendError.reason``): ``kcd-kdc-unreachable``, ``kcd-keytab-rejected`` (the
account's key changed: stale keytab), ``kcd-tgt-failed``, ``kcd-user-unknown``,
``kcd-s4u2self-failed``, ``kcd-not-trusted-for-delegation`` (no protocol transition or the
target SPN not allowed), ``kcd-s4u2proxy-failed``, ``kcd-timeout``, ``kcd-unavailable``
(python-gssapi missing).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config import KcdMech
from ..protocols.http1 import RequestHead
from ..protocols.keytab import split_principal
from ..protocols.sfb import Service
from ..protocols.spnego import encode_neg_token_init
from ..store.keytab import account_from_keytab
from .backend import BackendAuth, BackendError
from .connection import Identity
from .kerberos import _krb5_code, use_krb5_conf

try:
    from gssapi.raw.misc import GSSError
except ImportError:  # python-gssapi missing: the constructors raise ImportError/BackendError first

    class GSSError(Exception):  # type: ignore[no-redef]  # the stand-in for the missing module's
        min_code = None


log = logging.getLogger("ucgate.gateway.kcd")

KRB5_OID = "1.2.840.113554.1.2.2"

# KDC error codes seen on the S4U legs (minor status = krb5 error table base + code)
_KDC_ERR_C_PRINCIPAL_UNKNOWN = _krb5_code(6)
_KDC_ERR_S_PRINCIPAL_UNKNOWN = _krb5_code(7)
_KDC_ERR_BADOPTION = _krb5_code(13)
_KDC_ERR_POLICY = _krb5_code(12)
_KDC_ERR_PREAUTH_FAILED = _krb5_code(24)
_KRB5KRB_AP_ERR_BAD_INTEGRITY = _krb5_code(31)
_KDC_ERR_CLIENT_REVOKED = _krb5_code(18)


def _text(e: BaseException) -> str:
    return str(e).lower()


def _kdc_unreachable(e: BaseException) -> bool:
    t = _text(e)
    return "cannot contact any kdc" in t or "cannot find kdc" in t or "connection refused" in t


@dataclass
class _Cached:
    creds: object
    expires: float  # monotonic


class KcdBackend:
    """Backend credentials by S4U2Self + S4U2Proxy.

    Args:
        keytab: the pool's keytab (holds the service account's keys).
        account: the principal the gateway gets its TGT as: the service account's
            sAMAccountName (``svc-ucgate-gw``) or ``name@REALM``. AD lets an account get a TGT
            by its sAMAccountName, not by an SPN.
        realm: the AD realm (users are ``user@realm``).
        target_spn_for: the front end's SPN for a service: a string (every service), a mapping
            service name -> SPN (key ``"*"`` for the rest), or a callable.
        krb5_conf: path to krb5.conf (sets KRB5_CONFIG for the process).
        mech: ``"spnego"`` (default) or ``"krb5"`` (a raw Kerberos token).
        timeout: bound of one S4U exchange in seconds.
        cache_margin: renew an impersonated credential this long before it expires.
        max_users: the per-user credential cache's size (LRU).
    """

    name = "kcd"

    def __init__(
        self,
        keytab: str | os.PathLike,
        account: str,
        realm: str,
        target_spn_for: str | Mapping[str, str] | Callable[[Service], str],
        *,
        krb5_conf: str | os.PathLike | None = None,
        mech: str = "spnego",
        timeout: float = 10.0,
        cache_margin: float = 300.0,
        max_users: int = 10000,
        ccache: str | None = None,
        threads: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keytab = str(keytab)
        name, r = split_principal(account)
        self.realm = realm
        self.account = f"{name}@{r or realm}"
        if isinstance(target_spn_for, str):
            spn = target_spn_for
            self._target = lambda service: spn
        elif isinstance(target_spn_for, Mapping):
            table = dict(target_spn_for)

            def _lookup(service: Service) -> str:
                v = table.get(service.name) or table.get("*")
                if not v:
                    raise BackendError("kcd-no-target-spn", f"no front-end SPN for service {service.name}")
                return v

            self._target = _lookup
        else:
            self._target = target_spn_for
        if mech not in tuple(KcdMech):
            raise ValueError("mech must be spnego or krb5")
        self.mech = mech
        self.timeout = timeout
        self.cache_margin = cache_margin
        self.max_users = max_users
        self.clock = clock
        # one memory ccache per backend object (its TGT); FILE:... for debugging
        # A random name, not id(self): MIT memory ccaches live as long as the process, and a
        # new backend at a recycled address would silently reuse an old backend's TGT (one
        # obtained with a keytab that is no longer valid, say).
        self.ccache = ccache or f"MEMORY:ucgate-kcd-{secrets.token_hex(8)}"
        use_krb5_conf(krb5_conf)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ucgate-kcd")
        self._lock = threading.Lock()
        self._service_creds = None
        self._users: OrderedDict[str, _Cached] = OrderedDict()

    # --- gssapi (blocking; in the pool) ------------------------------------------------------
    def _gssapi(self):
        try:
            import gssapi
        except ImportError:
            raise BackendError("kcd-unavailable", "python-gssapi is not installed (pip install gssapi)") from None
        return gssapi

    def _own_creds(self):
        gssapi = self._gssapi()
        with self._lock:
            if self._service_creds is not None:
                try:
                    if (self._service_creds.lifetime or 0) > 60:
                        return self._service_creds
                except GSSError:
                    pass
            name = gssapi.Name(self.account, gssapi.NameType.kerberos_principal)
            store = {b"client_keytab": self.keytab.encode(), b"ccache": self.ccache.encode()}
            try:
                creds = gssapi.Credentials(name=name, usage="initiate", store=store)
                creds.lifetime  # noqa: B018 - forces the AS exchange now (errors surface here)
            except GSSError as e:
                if _kdc_unreachable(e):
                    raise BackendError("kcd-kdc-unreachable", f"TGT for {self.account}: {e}") from None
                if (
                    e.min_code in (_KDC_ERR_PREAUTH_FAILED, _KRB5KRB_AP_ERR_BAD_INTEGRITY)
                    or "preauthentication failed" in _text(e)
                    or "password incorrect" in _text(e)
                ):
                    raise BackendError(
                        "kcd-keytab-rejected",
                        f"the KDC refused {self.account}'s key from {self.keytab} "
                        f"(password changed, keytab stale?): {e}",
                    ) from None
                raise BackendError("kcd-tgt-failed", f"TGT for {self.account}: {e}") from None
            self._service_creds = creds
            return creds

    def _impersonate(self, user: str):
        gssapi = self._gssapi()
        own = self._own_creds()
        principal = f"{user}@{self.realm}"
        try:
            imp = own.impersonate(gssapi.Name(principal, gssapi.NameType.kerberos_principal), usage="initiate")
            lifetime = imp.lifetime or 0
        except GSSError as e:
            if _kdc_unreachable(e):
                raise BackendError("kcd-kdc-unreachable", f"S4U2Self for {principal}: {e}") from None
            if e.min_code in (_KDC_ERR_C_PRINCIPAL_UNKNOWN,) or "not found in kerberos database" in _text(e):
                raise BackendError("kcd-user-unknown", f"S4U2Self for {principal}: {e}") from None
            if e.min_code == _KDC_ERR_CLIENT_REVOKED or "revoked" in _text(e):
                raise BackendError("kcd-user-revoked", f"S4U2Self for {principal}: {e}") from None
            raise BackendError("kcd-s4u2self-failed", f"S4U2Self for {principal}: {e}") from None
        return imp, lifetime

    def _token(self, creds, target: str) -> bytes:
        gssapi = self._gssapi()
        spn, r = split_principal(target)
        name = gssapi.Name(f"{spn}@{r or self.realm}", gssapi.NameType.kerberos_principal)
        try:
            ctx = gssapi.SecurityContext(name=name, creds=creds, usage="initiate", mech=gssapi.MechType.kerberos)
            token = ctx.step()
            if self.mech == KcdMech.SPNEGO:
                # MIT's SPNEGO mechanism does not take an impersonated krb5 credential ("cannot
                # find mechanisms to negotiate"): wrap the optimistic krb5 token ourselves.
                token = encode_neg_token_init([KRB5_OID], mech_token=token)
            return token
        except GSSError as e:
            if _kdc_unreachable(e):
                raise BackendError("kcd-kdc-unreachable", f"S4U2Proxy to {target}: {e}") from None
            if (
                e.min_code in (_KDC_ERR_BADOPTION, _KDC_ERR_POLICY)
                or "can't fulfill" in _text(e)
                or "policy" in _text(e)
            ):
                raise BackendError(
                    "kcd-not-trusted-for-delegation",
                    f"S4U2Proxy to {target} refused: is {self.account} trusted to "
                    f"delegate to {spn} (msDS-AllowedToDelegateTo) with protocol "
                    f"transition (TRUSTED_TO_AUTH_FOR_DELEGATION)? {e}",
                ) from None
            if e.min_code == _KDC_ERR_S_PRINCIPAL_UNKNOWN or "server not found" in _text(e):
                raise BackendError("kcd-target-unknown", f"no account has the SPN {target}: {e}") from None
            raise BackendError("kcd-s4u2proxy-failed", f"S4U2Proxy to {target}: {e}") from None

    def _user_creds(self, user: str):
        """Cached impersonated credential for ``user`` (blocking)."""
        now = self.clock()
        with self._lock:
            hit = self._users.get(user)
            if hit is not None and hit.expires > now:
                self._users.move_to_end(user)
                return hit.creds
        imp, lifetime = self._impersonate(user)
        with self._lock:
            self._users[user] = _Cached(imp, now + max(0.0, lifetime - self.cache_margin))
            self._users.move_to_end(user)
            while len(self._users) > self.max_users:
                self._users.popitem(last=False)
        return imp

    def _obtain(self, user: str, target: str) -> bytes:
        creds = self._user_creds(user)
        try:
            return self._token(creds, target)
        except BackendError:
            with self._lock:  # a refused or stale credential is not kept
                self._users.pop(user, None)
            raise

    # --- the BackendCredentials interface ------------------------------------------------------
    def target_spn(self, service: Service) -> str:
        return self._target(service)

    async def token_for(self, user: str, target: str) -> bytes:
        """The Negotiate token for ``user`` to ``target`` (raises BackendError)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, self._obtain, user, target)
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise BackendError(
                "kcd-timeout", f"no answer from the KDC within {self.timeout}s for {user} -> {target}"
            ) from None

    async def prepare(self, identity: Identity, service: Service, req: RequestHead) -> BackendAuth:
        user = identity.user
        if "\\" in user:  # DOMAIN\user from NTLM
            user = user.split("\\", 1)[1]
        user = split_principal(user)[0]  # user@domain: the account name part
        started = time.monotonic()
        token = await self.token_for(user, self.target_spn(service))
        log.debug("kcd: %s -> %s in %.1f ms", user, self.target_spn(service), (time.monotonic() - started) * 1000)
        return BackendAuth([(b"Authorization", b"Negotiate " + base64.b64encode(token))])

    def forget(self, user: str | None = None) -> None:
        """Drop cached credentials (one user's, or all and the TGT)."""
        with self._lock:
            if user is None:
                self._users.clear()
                self._service_creds = None
            else:
                self._users.pop(user, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def kcd_from_config(kc) -> KcdBackend:
    """The ``kcd`` mechanism from ``[kerberos]`` (``config.KerberosConfig``)."""
    if not kc.front_end_spns:
        raise ValueError('backend = "kcd" needs [kerberos] front_end_spn (the front end\'s SPN)')
    account = kc.account or account_from_keytab(kc.keytab, kc.realm)
    return KcdBackend(
        kc.keytab,
        account,
        kc.realm,
        dict(kc.front_end_spns),
        krb5_conf=kc.krb5_conf,
        mech=kc.kcd_mech,
        timeout=kc.kcd_timeout,
    )

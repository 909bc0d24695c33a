"""The contract between the gateway's id-service client and the id service: every request the
gateway can send is accepted (one wire definition, ``ucgate.id.api``), over the real API."""

from __future__ import annotations

import pytest

from ucgate.gateway.idclient import RemoteCredentials
from ucgate.id.api import AttemptContext, Method

from .test_http_api import SECRET, asp, ids, idsrv  # noqa: F401

# every method a gateway puts in context.method (the portal signs in in-process only)
GATEWAY_METHODS = [m for m in Method if m is not Method.PORTAL]


@pytest.mark.parametrize("method", GATEWAY_METHODS, ids=str)
def test_every_method_the_gateway_sends_is_accepted(idsrv, tls_files, asp, method, loop_thread):
    remote_holder = {}

    async def call():
        remote = RemoteCredentials(idsrv.url, secret=SECRET, ca_file=tls_files[0])
        remote_holder["r"] = remote
        try:
            ctx = AttemptContext("192.0.2.7", method, "ucwa", device_id="dev1", user_agent="ua")
            right = await remote.verify_password("alice", asp, ctx)
            wrong = await remote.verify_password("alice", "not-the-asp", ctx)
            account = await remote.check_account("alice", ctx)
            return right, wrong, account
        finally:
            await remote.aclose()

    right, wrong, account = loop_thread.run(call())
    # answered by the id service (not id-service-unavailable, which a 400 turns into)
    assert right.ok and right.reason.startswith("ok"), right
    assert (wrong.ok, wrong.reason) == (False, "wrong-password")
    assert account.ok, account


def test_context_round_trips_for_every_method():
    for m in Method:
        ctx = AttemptContext("2001:db8::1", m, "eas", device_id=None, user_agent="x" * 256)
        assert AttemptContext.from_json(ctx.to_json()) == ctx

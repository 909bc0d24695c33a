from __future__ import annotations

import pytest

from ucgate.gateway.tls import make_self_signed

from .audit_schema import AuditSchemaHook
from .support import LoopThread, RecordingUpstream


@pytest.fixture(scope="session", autouse=True)
def audit_schema_hook():
    """Every audit event the suite records is checked against docs/audit-event.schema.json."""
    hook = AuditSchemaHook()
    with pytest.MonkeyPatch.context() as mp:
        hook.install(mp)
        yield hook


@pytest.fixture(autouse=True)
def _audit_events_follow_the_schema(audit_schema_hook):
    yield
    bad, audit_schema_hook.bad[:] = list(audit_schema_hook.bad), []
    if bad:
        event, found = bad[0]
        pytest.fail(
            f"{len(bad)} audit event(s) do not follow docs/audit-event.schema.json; "
            f"first: {'; '.join(found)} in {event}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "gateway.crt", d / "gateway.key"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    return cert, key


@pytest.fixture
def upstream(loop_thread):
    up = RecordingUpstream()
    loop_thread.run(up.start())
    yield up
    loop_thread.run(up.stop())


from .lab.fixtures import samba_lab  # noqa: E402,F401  (session-scoped Samba AD DC on loopback)

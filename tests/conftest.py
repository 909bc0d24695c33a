from __future__ import annotations

import pytest

from ucgate.gateway.tls import make_self_signed

from .support import LoopThread, RecordingUpstream


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

"""An acknowledged write survives kill -9: a child creates ASPs in a loop and prints each id
after ``create`` returned; we SIGKILL it mid-stream and reopen the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ucgate.id.asp import AspService
from ucgate.id.keys import Keyring
from ucgate.store import open_repository

CHILD = textwrap.dedent("""
    import sys
    from ucgate.id.asp import AspService
    from ucgate.id.keys import Keyring
    from ucgate.id.users import UserService
    from ucgate.store import open_repository

    url, key = sys.argv[1], sys.argv[2]
    repo = open_repository(url)
    users, asps = UserService(repo), AspService(repo, Keyring.load_or_create(key))
    i = 0
    while True:
        if i % 20 == 0:
            name = f"user{i // 20}"
            users.add(name)
            print("user", name, flush=True)
        asp_id, _ = asps.create(name, f"asp {i}")
        print("asp", asp_id, name, flush=True)
        i += 1
""")


@pytest.mark.slow
def test_acknowledged_asps_survive_kill_9(store_url, tmp_path):
    key = tmp_path / "keys" / "ucgate.key"
    open_repository(store_url).close()  # migrate before the child starts
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url, str(key)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    acked_users, acked_asps = set(), {}
    deadline = time.monotonic() + 60
    try:
        while len(acked_asps) < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child died: {proc.stderr.read()}")
            kind, *rest = line.split()
            if kind == "user":
                acked_users.add(rest[0])
            else:
                acked_asps[rest[0]] = rest[1]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-transaction, most likely
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # whatever the child printed before the kill but we had not read yet was also acknowledged
    for line in proc.stdout.read().splitlines():
        kind, *rest = line.split()
        if kind == "user":
            acked_users.add(rest[0])
        elif len(rest) == 2:
            acked_asps[rest[0]] = rest[1]
    proc.stdout.close()
    proc.stderr.close()

    repo = open_repository(store_url)
    try:
        keyring = Keyring.load_or_create(key)
        svc = AspService(repo, keyring)
        for name in acked_users:
            assert repo.get_user(name) is not None, name
        stored = {a.id: name for name in acked_users for a in svc.list(name)}
        missing = set(acked_asps) - set(stored)
        assert not missing, f"{len(missing)} acknowledged ASPs lost"
        assert all(stored[i] == u for i, u in acked_asps.items())
        assert len(acked_asps) >= 150
        # and the store is consistent: every stored ASP still decrypts
        for name in acked_users:
            assert len(svc.nt_hash_candidates(name)) == 4 * len(svc.list(name))
    finally:
        repo.close()

"""`ucgate demo` as a new user runs it: every command it prints runs as printed (the device id
placeholder filled in from the printed `device list`), from a shell without the venv on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import free_port

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    """The shell commands of the demo's banner: lines that are not comments or prose, with
    their backslash continuations joined."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not re.match(r"^(curl|printf|/\S+) ", line):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        out.append(line)
    return out


@pytest.mark.slow
def test_every_printed_command_runs_as_printed(tmp_path):
    if not shutil.which("curl") or not shutil.which("openssl"):
        pytest.fail("curl and openssl are installed by scripts/bootstrap --test")
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}  # no venv on PATH
    proc = subprocess.Popen(
        [sys.executable, "-m", "ucgate", "demo", "--data-dir", str(tmp_path / "demo"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    banner: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("ucgate demo exited:\n" + "".join(banner))
            banner.append(line)
            if "Press Ctrl-C to stop." in line:
                break
        text = "".join(banner)
        cmds = _commands(text)
        assert len(cmds) >= 8, text
        ran: dict[str, subprocess.CompletedProcess] = {}
        device_id = None
        for cmd in cmds:
            if "<id from the list>" in cmd:
                assert device_id, "the printed `device list` showed no device"
                cmd = cmd.replace("<id from the list>", device_id)
            r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
            ran[cmd] = r
            assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
            if " device list " in cmd:
                ids = re.findall(r"^\s*(\d+)\s", r.stdout, re.M)
                device_id = ids[0] if ids else None
        outputs = {c: r.stdout for c, r in ran.items()}

        def out_of(fragment: str) -> str:
            return next(o for c, o in outputs.items() if fragment in c)

        assert '"_links"' in out_of("AutodiscoverService.svc/root")  # the front end's answer came through
        assert "HTTP/1.1 401" in out_of("-i https://127.0.0.1")  # the refused UCWA request
        assert "HTTP/1.1 400" in out_of("Transfer-Encoding: chunked")
        print(f"\n{len(ran)} printed commands ran as printed")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

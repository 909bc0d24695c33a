"""Installing ucgate like a service: the systemd units (``systemd-analyze verify`` where systemd
is installed), ``ucgate init``'s starter configuration and ``examples/ucgate.toml`` accepted by
``ucgate check-config``, the licence, and the documentation's links."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ucgate.cli import main
from ucgate.gateway.tls import make_self_signed
from ucgate.init import starter_config

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "examples" / "systemd").glob("*.service"))
CONTOSO = dict(
    published_name="lyncext.contoso.com",
    front_end="https://fepool.contoso.local:4443",
    exchange="https://mail.contoso.local",
)


def _unit(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_units_are_sandboxed_with_one_capability():
    assert [u.name for u in UNITS] == ["ucgate-gateway.service", "ucgate-id.service"]
    for path in UNITS:
        u = _unit(path)
        assert u["User"] == ["ucgate"] and u["NoNewPrivileges"] == ["yes"], path.name
        assert u["ProtectSystem"] == ["strict"] and u["ReadWritePaths"] == ["/var/lib/ucgate"]
        assert u["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"] == u["AmbientCapabilities"]
        assert u["PrivateTmp"] == u["ProtectHome"] == u["PrivateDevices"] == ["yes"]
        assert u["SystemCallFilter"] == ["@system-service"]
    gw = _unit(UNITS[0])
    assert gw["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # ucgate serve reloads on SIGHUP
    assert gw["ExecStart"] == ["/opt/ucgate/venv/bin/ucgate serve -c /etc/ucgate/ucgate.toml"]
    assert _unit(UNITS[1])["ExecStart"] == ["/opt/ucgate/venv/bin/ucgate id-service -c /etc/ucgate/id-service.toml"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze is not installed (Debian: the systemd package); the units are "
            "checked for their sandboxing directives by the test above"
        )
    # the unit as installed, but with this checkout's ucgate (verify checks that ExecStart exists)
    ucgate = Path(sys.executable).with_name("ucgate")
    assert ucgate.exists()
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/ucgate/venv/bin/ucgate", str(ucgate)))
    r = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if unit.name in line or "Unknown" in line]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr


def _relocate(text: str, tmp: Path) -> str:
    return text.replace("/etc/ucgate", str(tmp / "etc")).replace("/var/lib/ucgate", str(tmp / "data"))


def _certificate(etc: Path) -> None:
    make_self_signed(etc / "gateway.crt", etc / "gateway.key", ["lyncext.contoso.com"])


def test_the_example_configuration_is_what_init_writes_and_check_config_accepts_it(tmp_path, capsys):
    example = (ROOT / "examples" / "ucgate.toml").read_text()
    assert example == starter_config(**CONTOSO)  # regenerate it with `ucgate init` when init changes
    cfg = tmp_path / "ucgate.toml"
    cfg.write_text(_relocate(example, tmp_path))
    _certificate(tmp_path / "etc")
    assert main(["check-config", "-c", str(cfg)]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out and "upstream  exchange: https://mail.contoso.local" in out.out
    assert out.err == ""  # no warnings either
    assert (tmp_path / "etc" / "private" / "ucgate.key").exists()  # check-config made the key


def test_ucgate_init_writes_a_starter_configuration(tmp_path, capsys):
    out = tmp_path / "ucgate.toml"
    args = [
        "init",
        "--published-name",
        "LyncExt.Fabrikam.com",
        "--front-end",
        "https://pool01.fabrikam.local:4443",
        "--etc-dir",
        str(tmp_path / "etc"),
        "--data-dir",
        str(tmp_path / "data"),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    assert "check-config" in capsys.readouterr().err
    raw = tomllib.loads(out.read_text())
    assert raw["gateway"]["published_name"] == "lyncext.fabrikam.com"
    assert raw["upstreams"] == {"frontend": {"url": "https://pool01.fabrikam.local:4443", "verify": True}}
    assert raw["services"]["eas"] == {"enabled": False}  # no --exchange
    assert (raw["auth"]["netbios_domain"], raw["auth"]["dns_domain"]) == ("FABRIKAM", "fabrikam.com")
    assert "# [directory]" in out.read_text() and "# [id_service]" in out.read_text()
    _certificate(tmp_path / "etc")
    assert main(["check-config", "-c", str(out)]) == 0
    capsys.readouterr()
    # never over a file without --force
    before = out.read_text()
    assert main(args[:-2] + ["-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err and out.read_text() == before
    assert main(args + ["--force", "--exchange", "https://mail.fabrikam.local"]) == 0
    assert tomllib.loads(out.read_text())["upstreams"]["exchange"] == {"url": "https://mail.fabrikam.local"}
    # standard output without -o
    capsys.readouterr()
    assert main(args[:-2]) == 0
    assert capsys.readouterr().out.startswith("# ucgate configuration for lyncext.fabrikam.com")


@pytest.mark.parametrize(
    "option, value",
    [
        ("--published-name", "not a name"),
        ("--published-name", "localhost"),
        ("--front-end", "fepool.contoso.local:4443"),
        ("--front-end", "https://fepool/ucwa"),
        ("--front-end", "https://fepool:99999"),
        ("--exchange", "ftp://mail"),
    ],
)
def test_ucgate_init_refuses_what_cannot_work_naming_the_option(option, value, tmp_path, capsys):
    args = {
        "--published-name": "lyncext.contoso.com",
        "--front-end": "https://fepool.contoso.local:4443",
        option: value,
    }
    argv = ["init", *[x for kv in args.items() for x in kv], "-o", str(tmp_path / "u.toml")]
    assert main(argv) == 2
    assert option in capsys.readouterr().err and not (tmp_path / "u.toml").exists()


def test_licence_and_documentation_links():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {p.name for p in docs} >= {"README.md", "architecture.md", "deployment.md", "upgrade-and-backup.md"}
    for doc in docs:
        body = doc.read_text()
        assert "../shared" not in body, f"{doc.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", body):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"

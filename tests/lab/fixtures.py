"""pytest fixture for the Samba AD lab.

Use from tests/conftest.py (see tests/lab/samba.py for what the lab holds)::

    from tests.lab.fixtures import samba_lab  # noqa: F401

and mark tests that need it ``@pytest.mark.samba``.

* Not root, or the Debian packages missing and not installable: the tests are
  skipped with the reason -- except in CI (``CI=true``), where that is a failure.
* The packages are installed on demand (``scripts/install-samba-lab``) when running
  as root; set ``UCGATE_SAMBA_LAB_NO_INSTALL=1`` to forbid that.
* Failing to start a lab is always a failure, never a skip.
* The lab is shared by the whole session: tests that change account state should
  use ``samba_lab.new_user()`` rather than the seeded users.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .samba import REQUIRED_BINARIES, SambaLab, install_packages


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"Samba AD lab unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Samba AD lab unavailable: {reason}")


@pytest.fixture(scope="session")
def samba_lab():
    """A running Samba AD DC on 127.0.0.x (a SambaLab), for the whole session."""
    if os.geteuid() != 0:
        _unavailable("not running as root (samba binds ports 88/389/636)")
    if any(shutil.which(b) is None for b in REQUIRED_BINARIES):
        if os.environ.get("UCGATE_SAMBA_LAB_NO_INSTALL"):
            _unavailable("samba not installed (UCGATE_SAMBA_LAB_NO_INSTALL set); run scripts/install-samba-lab")
        try:
            install_packages()
        except (subprocess.CalledProcessError, OSError) as e:
            _unavailable(f"scripts/install-samba-lab failed: {e}")
        if any(shutil.which(b) is None for b in REQUIRED_BINARIES):
            _unavailable("samba still missing after scripts/install-samba-lab")
    lab = SambaLab.create()  # raises (test error) if it cannot start
    try:
        yield lab
    finally:
        lab.close()

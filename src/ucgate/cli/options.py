"""Options more than one command takes, defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import LogLevel

DEFAULT_CONFIG = Path("/etc/ucgate/ucgate.toml")  # where docs/deployment.md puts it
LOG_LEVELS = [level.value for level in LogLevel]  # the configuration's [log] level values


def config_parent() -> argparse.ArgumentParser:
    """``-c/--config FILE`` as an argparse parent: every command that reads the configuration
    takes it, with one default (README, "Once installed, the CLI")."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})"
    )
    return common


def json_parent() -> argparse.ArgumentParser:
    """``--json``: machine-readable output (the admin commands)."""
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="machine-readable output")
    return out

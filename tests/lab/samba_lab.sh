#!/usr/bin/env bash
# Run the Samba AD lab by hand: tests/lab/samba_lab.sh up|down|status|rebuild
# (same as: .venv/bin/python -m tests.lab.samba ...; needs root)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
[[ -x $py ]] || py=python3
exec "$py" -m tests.lab.samba "$@"

#!/usr/bin/env bash
# Runs every test: installs what the integration tests need beyond cargo (kafka-python,
# pinned in tests/requirements.txt), raises the locked-memory limit for io_uring, then
# `cargo test --workspace` (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -l unlimited 2>/dev/null || echo "warning: cannot raise the locked-memory limit (ulimit -l)" >&2
if ! python3 -c "import kafka" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
exec cargo test --workspace "$@"

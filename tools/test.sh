#!/usr/bin/env bash
# Runs every test: installs the clients the integration tests drive beyond cargo's own
# (kcat and iptables from apt, the Python clients pinned in tests/requirements.txt, KafkaJS locked in
# tests/clients/js), each only when missing or not at its pinned version, raises the
# locked-memory limit for io_uring, then `cargo test --workspace` (extra arguments are
# passed on). A client that cannot be installed is not skipped: its test fails and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -l unlimited 2>/dev/null || echo "warning: cannot raise the locked-memory limit (ulimit -l)" >&2

# kcat (Debian's, on librdkafka 2.0.2).
if ! command -v kcat >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
    else
        echo "warning: kcat is missing and this is not root: 'apt-get install kcat' as root," \
            "or the kcat test fails" >&2
    fi
fi

# iptables (Debian's), for the fault rounds' network partitions (tools/faults.py).
if ! command -v iptables >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null
fi

# The Python clients and their codecs, at exactly the pinned versions.
if ! python3 - tests/requirements.txt <<'EOF'
import importlib.metadata
import sys

for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = (part.strip() for part in line.split("=="))
    try:
        if importlib.metadata.version(name) != version:
            sys.exit(1)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(1)
EOF
then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        -r tests/requirements.txt
fi

# KafkaJS, as package-lock.json locks it; again whenever the lock file changes.
js=tests/clients/js
stamp="$js/node_modules/.installed-lock.sha256"
lock_hash=$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
    if command -v npm >/dev/null; then
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock_hash" >"$stamp"
    else
        echo "warning: npm is missing (Node.js 20 with npm is needed): the KafkaJS test fails" >&2
    fi
fi

exec cargo test --workspace "$@"

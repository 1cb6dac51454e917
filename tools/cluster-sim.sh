#!/usr/bin/env bash
# Runs the control plane's seeded simulation (cluster/src/controller/sim/) over many
# seeds in a release build: 3 and 5 controllers with 3 to 5 brokers under message loss,
# delay, duplication, partitions, crashes and restarts, checked for metadata safety (one
# committed log, every node's view a prefix of it), partition leadership safety, broker
# epochs and fencing, and liveness once healed.
#
#   tools/cluster-sim.sh                 # 1000 seeds from 0
#   tools/cluster-sim.sh 5000 20000      # 5000 seeds from 20000
#   SLUICE_SIM_SEED=1234 tools/cluster-sim.sh   # one seed, e.g. one that failed
#
# A failure prints its seed, the seed's knobs and the last events; rerun it alone with
# SLUICE_SIM_SEED=<seed> (in release here, or in debug with cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."

seeds="${1:-1000}"
start="${2:-0}"
export SLUICE_SIM_SEEDS="$seeds"
export SLUICE_SIM_SEED_START="$start"

exec cargo test --release -p sluice-cluster --lib controller::sim -- --nocapture --test-threads 2

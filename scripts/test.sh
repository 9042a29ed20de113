#!/usr/bin/env bash
# The project's test command (README, CI): setup, formatting, lints, the
# dependency-direction check, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/tools.sh
# The Kafka tests start their own tansu broker from this binary.
SLUICE_TANSU="$(scripts/kafka-broker.sh install)"
export SLUICE_TANSU
# Build artifacts live outside the clone so repeated runs (and CI on the same
# machine) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
export CARGO_TERM_COLOR=never
# Incremental caches only pay off for edit-compile loops; here they would
# double the size of the workspace's own artifacts.
export CARGO_INCREMENTAL=0

# A target directory kept between runs grows with every commit built; when
# the disk runs short, start it afresh rather than fail at link time.
mkdir -p "$CARGO_TARGET_DIR"
free_kib=$(df -Pk "$CARGO_TARGET_DIR" | awk 'NR==2 {print $4}')
if [ "${free_kib:-0}" -lt $((12 * 1024 * 1024)) ]; then
  echo "== less than 12 GiB free beside $CARGO_TARGET_DIR: removing old build artifacts"
  rm -rf "${CARGO_TARGET_DIR:?}/debug"
fi
df -h "$CARGO_TARGET_DIR" | tail -1

echo "== dependency direction"
# The data plane never names the control plane, and the protocol crate
# names no other Sluice crate.
names_sluice() { grep -E "^sluice-($2)( |=)" "$1" || true; }
for rule in \
  "engine/protocol/Cargo.toml:engine|web|cluster|operators|connectors|jobs" \
  "engine/web/Cargo.toml:engine|cluster|operators|connectors|jobs" \
  "engine/runtime/Cargo.toml:cluster|operators|connectors|jobs" \
  "operators/Cargo.toml:cluster|connectors|jobs" \
  "connectors/Cargo.toml:cluster|jobs"; do
  manifest=${rule%%:*}
  found=$(names_sluice "$manifest" "${rule#*:}")
  if [ -n "$found" ]; then
    echo "$manifest names a crate it must not depend on: $found" >&2
    exit 1
  fi
done
if grep -rn "sluice_cluster" engine/runtime/src engine/protocol/src engine/web/src operators/src connectors/src >/dev/null; then
  echo "a data-plane module names sluice_cluster:" >&2
  grep -rn "sluice_cluster" engine/runtime/src engine/protocol/src engine/web/src operators/src connectors/src >&2
  exit 1
fi
# A job binary links no coordinator, worker service or CLI.
if cargo tree --quiet -e normal -p sluice-jobs --prefix none | grep -E "^sluice-cluster " >/dev/null; then
  echo "sluice-jobs links sluice-cluster (the control plane)" >&2
  exit 1
fi

echo "== manifests"
# One version per external dependency; the library crates inherit nothing
# from this workspace (they build as path dependencies of a job crate).
python3 scripts/check-manifests.py

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The library crates without their default features (lib targets only:
# the tests' dev-dependencies would turn the features back on).
cargo clippy --quiet -p sluice-engine -p sluice-operators -p sluice-connectors \
  --no-default-features -- -D warnings

echo "== cargo test"
cargo test --workspace --quiet

echo "== a job crate outside the workspace"
scripts/external-job.sh

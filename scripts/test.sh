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

echo "== dependency direction: engine must not depend on other sluice crates"
if grep -E '^sluice-' engine/Cargo.toml; then
  echo "engine/Cargo.toml names another sluice crate" >&2
  exit 1
fi

echo "== cargo fmt"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --quiet

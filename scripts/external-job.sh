#!/usr/bin/env bash
# Builds and runs examples/external-job the way a user's job crate is
# built: a workspace of its own, outside this repository, reaching the
# Sluice crates by path through symlinks (cargo then finds no Sluice
# workspace above them, so nothing may be inherited from it). Twice: with
# the default features, and with `--no-default-features`, whose binary must
# link no RocksDB, Kafka, web server, S3 client or async runtime (OpenSSL it
# links: executors speak mTLS) and must refuse
# those parts with an error naming the feature. scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
export CARGO_INCREMENTAL=0

# A fixed place under the target dir rather than a fresh temporary one:
# cargo keys a path dependency's build by its path, so the same path lets
# the next run reuse this build (a fresh path rebuilt every Sluice crate
# and their dependencies, minutes on two cores). One run at a time.
mkdir -p "$CARGO_TARGET_DIR"
exec 9>"$CARGO_TARGET_DIR/external-job.lock"
flock 9
tmp="$CARGO_TARGET_DIR/external-job-workspace"
rm -rf "$tmp"
mkdir -p "$tmp"
# The repository's layout, rebuilt from symlinks, with the job copied in.
for dir in engine operators connectors; do
  ln -s "$repo/$dir" "$tmp/$dir"
done
mkdir -p "$tmp/examples/external-job"
cp -R examples/external-job/Cargo.toml examples/external-job/src "$tmp/examples/external-job/"
# The workspace's lock file: the same dependency versions, offline.
cp Cargo.lock "$tmp/examples/external-job/Cargo.lock"
job="$tmp/examples/external-job"
manifest="$job/Cargo.toml"
expected="$repo/examples/external-job/expected.txt"
bin="$CARGO_TARGET_DIR/debug/external-job"

fail() {
  echo "external job: $*" >&2
  exit 1
}

# Runs the job binary with "$@", checks its sorted output.
check_output() {
  local out="$tmp/out.txt"
  "$bin" "$@" >"$out" || fail "the job failed with $*"
  LC_ALL=C sort -o "$out" "$out"
  diff -u "$expected" "$out" || fail "unexpected output with $*"
}

# Runs the job binary with "$@" (and the environment), which must fail
# with an error naming `feature`.
check_refused() {
  local feature=$1
  shift
  local err="$tmp/err.txt"
  if "$bin" "$@" >/dev/null 2>"$err"; then
    fail "a build without \`$feature\` ran with $*"
  fi
  grep -q "\`$feature\` feature" "$err" || {
    cat "$err" >&2
    fail "the error for $* does not name the \`$feature\` feature"
  }
}

# Normal dependencies of the job, one crate name a line.
deps() {
  cargo tree --offline --quiet --manifest-path "$manifest" -e normal --prefix none "$@" |
    awk '{print $1}' | sort -u
}

# What a build costs: the crates it compiles, the size of its binary
# (benches/RESULTS.md records both variants).
report() {
  echo "   $(wc -l <"$1") crates, binary $(du -m "$bin" | cut -f1) MB"
}

# OpenSSL stays: an executor speaks mTLS to its cluster (the system's
# library, linked rather than built).
heavy='^(rocksdb|librocksdb-sys|rdkafka|rdkafka-sys|axum|axum-server|hyper|tokio|native-tls|rustls|reqwest|object_store|sluice-web)$'

echo "-- with the default features"
deps >"$tmp/deps-full.txt"
for want in rocksdb rdkafka axum object_store; do
  grep -qx "$want" "$tmp/deps-full.txt" || fail "the default build lacks $want"
done
cargo build --offline --quiet --manifest-path "$manifest"
report "$tmp/deps-full.txt"
check_output
check_output --state rocksdb
check_output --checkpoint-dir "$tmp/ck"
ls "$tmp/ck" | grep -q '^chk-' || fail "no checkpoint in $tmp/ck"

echo "-- with --no-default-features"
deps --no-default-features >"$tmp/deps-min.txt"
if grep -E "$heavy" "$tmp/deps-min.txt"; then
  fail "a build without default features depends on the crates above"
fi
cargo build --offline --quiet --manifest-path "$manifest" --no-default-features
report "$tmp/deps-min.txt"
check_output
check_output --checkpoint-dir "$tmp/ck-min"
check_refused rocksdb --state rocksdb
check_refused s3 --checkpoint-dir s3://bucket/checkpoints
SLUICE_UI=127.0.0.1:0 check_refused ui
echo "-- ok"

#!/usr/bin/env bash
# Runs every test: installs what the tests need (idempotent), then format, lint and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

# The build needs a few GB (the test binaries are linked in place); say how much there is, so a
# link that dies of a full disk is recognisable as that.
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" | awk 'NR == 2 { print $4 }')
echo "== disk: $((free_kb / 1024)) MiB free for $target_dir"
if (( free_kb < 3 * 1024 * 1024 )); then
    echo "warning: less than 3 GiB free where cargo builds; linking the test binaries may fail" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked

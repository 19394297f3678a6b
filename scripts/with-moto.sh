#!/usr/bin/env bash
# Runs a command with one moto server on a free loopback port, exported as MOTO_ENDPOINT, and
# stops the server afterwards whatever the command's outcome.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
moto="$root/.venv/bin/moto_server"
[[ -x $moto ]] || { echo "with-moto: $moto is missing: run 'make setup'" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t moto.XXXXXX.log)
"$moto" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 150); do
  if curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "with-moto: moto server exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.2
done
export MOTO_ENDPOINT="http://127.0.0.1:$port"
echo "with-moto: moto server at $MOTO_ENDPOINT"
"$@"

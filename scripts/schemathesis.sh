#!/usr/bin/env bash
# Runs schemathesis against a live `offboard serve`, generated from /openapi.json:
# no server error, and every response conforms to the documented status codes, content
# types and schemas. Uses its own database and Redis key prefix and removes both after.
#   scripts/schemathesis.sh [extra schemathesis args]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(scripts/pyenv.sh)

cargo build --quiet --bin offboard
bin=target/debug/offboard
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
db="offboard_schemathesis_$$"
# The server of DATABASE_URL (default: the local one), a database of our own on it.
server_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DATABASE_URL="${server_url%/*}/$db"
export OFFBOARD_QUEUE_PREFIX="schemathesis-$$"
export OFFBOARD_BIND="127.0.0.1:$port"
# The development token, for this loopback server alone.
export OFFBOARD_DEV_TOKEN=1
unset OFFBOARD_API_TOKENS
export RUST_LOG=error

server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$OFFBOARD_QUEUE_PREFIX:*" \
    | xargs -r redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null || true
  psql "$server_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT

# A company, so some ids exist (users 1..8, company 1).
"$bin" seed --users 8 --items-per-user 40 >/dev/null
"$bin" serve &
server=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

# The checks: no 5xx; documented status codes, content types, headers and body schemas;
# refusing requests the schema calls invalid; honouring authentication.
"$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer offboard-dev-token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,ignored_auth \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples 60 \
  --workers 1 \
  --request-timeout 10 \
  "$@"

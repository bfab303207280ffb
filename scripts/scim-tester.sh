#!/usr/bin/env bash
# Runs scim2-tester (PyPI; scripts/scim_tester.py) against a live `offboard serve` with a
# seeded company and a token scoped to it: every check must be a success or skipped (the
# skips are explained in the README, "Identity providers (SCIM 2.0)"). Uses its own
# database and Redis key prefix and removes both after.
#   scripts/scim-tester.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(scripts/pyenv.sh)

cargo build --quiet --bin offboard
bin=target/debug/offboard
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
db="offboard_scim_$$"
server_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DATABASE_URL="${server_url%/*}/$db"
export OFFBOARD_QUEUE_PREFIX="scim-tester-$$"
export OFFBOARD_BIND="127.0.0.1:$port"
token="scim-tester-token-0123456789"
export RUST_LOG=warn

server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$OFFBOARD_QUEUE_PREFIX:*" \
    | xargs -r redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null || true
  psql "$server_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT

# Company 1 with 8 users; seats for the users the suite creates (each holds one until its
# deactivation finishes).
"$bin" seed --users 8 --items-per-user 5 >/dev/null
psql "$DATABASE_URL" -qc "UPDATE crm.companies SET seats = 1000 WHERE id = 1"
# A real (company-scoped) token, so not the development one; and the secret real tokens need.
unset OFFBOARD_DEV_TOKEN
export OFFBOARD_API_TOKENS="$token@1"
export OFFBOARD_IDEMPOTENCY_SECRET="scim-tester-idempotency-secret-0123456789"
"$bin" serve &
server=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

"$venv/bin/python" scripts/scim_tester.py "http://127.0.0.1:$port/scim/v2" "$token"

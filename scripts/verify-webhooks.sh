#!/usr/bin/env bash
# The independent verifier: a live `offboard serve` delivers real events (deactivations,
# their transfers, a secret rotation) to a Python receiver that verifies every request with
# PyPI `standardwebhooks` (pinned in scripts/requirements-ci.txt) and refuses tampered
# copies. Uses its own database and Redis key prefix and removes both after.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(scripts/pyenv.sh)
cargo build --quiet --bin offboard
bin=target/debug/offboard
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
hook_port=$(free_port)
db="offboard_webhooks_$$"
server_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DATABASE_URL="${server_url%/*}/$db"
export OFFBOARD_QUEUE_PREFIX="verify-webhooks-$$"
export OFFBOARD_BIND="127.0.0.1:$port"
# The development token, for this loopback server alone.
export OFFBOARD_DEV_TOKEN=1
unset OFFBOARD_API_TOKENS
export OFFBOARD_WEBHOOK_ALLOW_PRIVATE=1
export OFFBOARD_WEBHOOK_RETRY_SCHEDULE=200ms,200ms
export RUST_LOG=error
work=$(mktemp -d)
api="http://127.0.0.1:$port"
auth="Authorization: Bearer offboard-dev-token"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$OFFBOARD_QUEUE_PREFIX:*" \
    | xargs -r redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null || true
  psql "$server_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

seeded=$("$bin" seed --users 8 --items-per-user 20)
company=$(jq -r .company_id <<<"$seeded")
admin=$(jq -r '.admin_ids[0]' <<<"$seeded")
mapfile -t regular < <(jq -r '.users[] | select(.is_admin | not) | .id' <<<"$seeded")

touch "$work/secrets" "$work/received.jsonl"
"$venv/bin/python" scripts/webhook_receiver.py serve "$hook_port" "$work/secrets" "$work/received.jsonl" &
pids+=($!)
"$bin" serve &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS "$api/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

endpoint=$(curl -fsS -H "$auth" -H 'content-type: application/json' "$api/v1/webhook-endpoints" \
  -d "{\"company_id\": $company, \"url\": \"http://127.0.0.1:$hook_port/hooks\"}")
id=$(jq -r .id <<<"$endpoint")
jq -r .secret <<<"$endpoint" >>"$work/secrets"

deactivate() { # user, recipients...
  local targets
  targets=$(printf '{"user_id": %s, "weight": 1},' "${@:2}")
  curl -fsS -o /dev/null -H "$auth" -H 'content-type: application/json' "$api/v1/offboardings" \
    -d "{\"company_id\": $company, \"user_id\": $1, \"actor_user_id\": $admin, \"action\": \"deactivate\",
         \"transfer\": {\"default\": {\"mode\": \"ratio\", \"targets\": [${targets%,}]}}}"
}
settled() { # no delivery pending or being sent, and at least $1 succeeded
  local d
  d=$(curl -fsS -H "$auth" "$api/v1/webhook-deliveries?endpoint_id=$id&limit=500")
  [ "$(jq '[.deliveries[] | select(.status == "pending" or .status == "sending")] | length' <<<"$d")" = 0 ] &&
    [ "$(jq '[.deliveries[] | select(.status == "succeeded")] | length' <<<"$d")" -ge "$1" ]
}
wait_settled() {
  for _ in $(seq 1 600); do settled "$1" && return 0; sleep 0.1; done
  echo "deliveries did not settle" >&2
  curl -fsS -H "$auth" "$api/v1/webhook-deliveries?endpoint_id=$id" >&2
  return 1
}

# offboarding.succeeded + items.transferred for each of two recipients.
deactivate "${regular[0]}" "${regular[1]}" "${regular[2]}"
wait_settled 3
# A rotation: the next deliveries carry two signatures, one per secret.
curl -fsS -X POST -H "$auth" "$api/v1/webhook-endpoints/$id/rotate-secret" | jq -r .secret >>"$work/secrets"
deactivate "${regular[3]}" "${regular[1]}"
wait_settled 5

"$venv/bin/python" scripts/webhook_receiver.py check "$work/received.jsonl" "$work/secrets" 5

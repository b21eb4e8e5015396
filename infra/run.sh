#!/usr/bin/env bash
# `make run`: the embedded default. Starts the native Kafka and schema registry (unless
# they are already up), creates the catalog's topics, registers the contract, then runs
# the webhook gateway, a load generator feeding it signed provider webhooks, the CRM and
# notification sinks, and a worker, and shows them live (`switchboard top`) on a terminal.
# Ctrl-C stops all of it, then whatever services it started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sb=.venv/bin/switchboard
# Logs and the notification outbox (the tests point it elsewhere).
out="${SWITCHBOARD_DEMO_DIR:-.run}"
started=()
children=()

cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  # Background children of a script ignore the terminal's Ctrl-C: stop them here. A worker
  # that does not finish its shutdown in time is killed: exactly-once makes that safe.
  for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${children[@]}"; do
    for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    case "${started[$i]}" in
      kafka) bash infra/kafka/kafka.sh stop single ;;
      registry) bash infra/registry/registry.sh stop ;;
    esac
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! bash infra/kafka/kafka.sh status single >/dev/null 2>&1; then
  started+=(kafka)
  bash infra/kafka/kafka.sh start single
fi
if ! bash infra/registry/registry.sh status >/dev/null 2>&1; then
  started+=(registry)
  bash infra/registry/registry.sh start
fi
"$sb" topics create
"$sb" schemas register
"$sb" roster load processors/rules/roster.example.yaml

# Fresh signing secrets for this run only, shared by the gateway and the load generator;
# a real deployment sets each SWITCHBOARD_SECRET_<SOURCE> to the provider's secret.
for source in STRIPE TWILIO VAPI CALENDLY TYPEFORM FORMS JOBS MAILGUN MAILGUN_INBOUND HUBSPOT; do
  export "SWITCHBOARD_SECRET_$source=demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
done
export SWITCHBOARD_SECRET_MAILGUN_INBOUND="$SWITCHBOARD_SECRET_MAILGUN"

mkdir -p "$out"
# The worker's contact views want a bearer token; `switchboard explain` from another
# terminal reads it from the same variable (kept in a file only this user can read).
if [ -z "${SWITCHBOARD_SECRET_VIEWS_TOKEN:-}" ]; then
  export SWITCHBOARD_SECRET_VIEWS_TOKEN="demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
fi
(umask 077 && printf '%s\n' "$SWITCHBOARD_SECRET_VIEWS_TOKEN" >"$out/views-token")
# The caller lookup's token: the gateway carries it for Vapi's lookup_caller tool.
if [ -z "${SWITCHBOARD_SECRET_LOOKUP_TOKEN:-}" ]; then
  export SWITCHBOARD_SECRET_LOOKUP_TOKEN="demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
fi
(umask 077 && printf '%s\n' "$SWITCHBOARD_SECRET_LOOKUP_TOKEN" >"$out/lookup-token")
"$sb" gateway >"$out/gateway.log" 2>&1 &
children+=($!)
port="${SWITCHBOARD_GATEWAY_PORT:-8787}"
until curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; do
  kill -0 "${children[0]}" 2>/dev/null || { cat "$out/gateway.log" >&2; exit 1; }
  sleep 0.2
done
# A new seed each run (SWITCHBOARD_DEMO_SEED repeats one): the same seed would replay the
# same people and events, which the pipeline rightly treats as duplicates.
"$sb" loadgen --rate "${SWITCHBOARD_DEMO_RATE:-20}" --duration 86400 \
  --seed "${SWITCHBOARD_DEMO_SEED:-$(date +%s)}" >"$out/loadgen.log" 2>&1 &
children+=($!)
# The sinks: CRM commands into the embedded SQL store (SQLite, .run/crm.db), and
# notifications, with no mail server or Slack configured, into the outbox file.
SWITCHBOARD_METRICS_PORT="${SWITCHBOARD_METRICS_PORT:-9464}" "$sb" sink crm >"$out/sink-crm.log" 2>&1 &
children+=($!)
SWITCHBOARD_METRICS_PORT=$((${SWITCHBOARD_METRICS_PORT:-9464} + 1)) \
  SWITCHBOARD_NOTIFY_OUTBOX="${SWITCHBOARD_NOTIFY_OUTBOX:-$out/outbox.jsonl}" \
  "$sb" sink notify >"$out/sink-notify.log" 2>&1 &
children+=($!)

# In the background too, so that Ctrl-C reaches this script at once (a foreground child
# would make it wait for the worker's own shutdown) and cleanup() bounds how long it takes.
SWITCHBOARD_LOG_LEVEL="${SWITCHBOARD_LOG_LEVEL:-warning}" "$sb" worker >"$out/worker.log" 2>&1 &
worker=$!
children+=("$worker")
"$sb" lookup >"$out/lookup.log" 2>&1 &
children+=($!)

echo "switchboard: gateway http://127.0.0.1:$port/webhooks/<source> (log $out/gateway.log),"
echo "             load generator at ${SWITCHBOARD_DEMO_RATE:-20} webhooks/s ($out/loadgen.log),"
echo "             worker metrics http://127.0.0.1:${SWITCHBOARD_WEB_PORT:-6066}/metrics ($out/worker.log),"
echo "             CRM sink into ${SWITCHBOARD_CRM_DATABASE_URL:-.run/crm.db (SQLite)} ($out/sink-crm.log),"
echo "             notifications into ${SWITCHBOARD_NOTIFY_OUTBOX:-$out/outbox.jsonl} ($out/sink-notify.log)."
echo "             In another terminal: make observe (Prometheus), and"
echo "               SWITCHBOARD_SECRET_VIEWS_TOKEN=\$(cat $out/views-token) .venv/bin/switchboard explain CONTACT"
echo "             Caller lookup http://127.0.0.1:${SWITCHBOARD_LOOKUP_PORT:-8790}/v1/contacts/lookup?phone=+1… (Bearer \$(cat $out/lookup-token))."
echo "             Ctrl-C stops everything."
if [ -t 1 ]; then
  # The live view in the foreground: Ctrl-C ends it, and cleanup() the rest.
  "$sb" top || wait "$worker"
else
  wait "$worker"
fi

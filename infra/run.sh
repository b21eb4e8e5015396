#!/usr/bin/env bash
# `make run`: the embedded default. Starts the native Kafka and schema registry (unless
# they are already up), creates the catalog's topics, registers the contract and runs a
# worker in the foreground. Ctrl-C stops the worker, then whatever this script started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
started=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
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

echo "switchboard: worker metrics on http://127.0.0.1:${SWITCHBOARD_WEB_PORT:-6066}/metrics; Ctrl-C stops everything"
# Not exec: this shell must outlive the worker to stop the services after it.
.venv/bin/switchboard run

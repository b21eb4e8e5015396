# Sourced by infra/*/…sh that run one background process recorded in a pid file.
#
#   pid_of PIDFILE          print the pid when that process still runs (else fail)
#   stop_pid NAME PIDFILE   TERM it, KILL it after 20 s, forget the pid file

pid_of() {
  [ -f "$1" ] || return 1
  local pid
  pid="$(cat "$1")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

stop_pid() {
  local name=$1 pidfile=$2 pid deadline
  if pid="$(pid_of "$pidfile")"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  echo "$name: stopped"
}

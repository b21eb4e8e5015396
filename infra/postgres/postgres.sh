#!/usr/bin/env bash
# Runs PostgreSQL natively for the SQL CRM store and the delivery ledger.
#
#   infra/postgres/postgres.sh start|stop|status|url
#
# Serves database `switchboard` (superuser `switchboard`, no password) on
# 127.0.0.1:54329 (POSTGRES_PORT), off the 5432 a system PostgreSQL would take. Trust
# auth holds for loopback only, and it listens on nothing else. The binaries are the
# newest /usr/lib/postgresql/*/bin (Debian's `postgresql` package) or POSTGRES_BIN.
# The cluster and its log live under .run/postgres/ (git-ignored); initdb runs once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
action="${1:-status}"
port="${POSTGRES_PORT:-54329}"
run_dir="${SWITCHBOARD_RUN_DIR:-$root/.run}/postgres"
data="$run_dir/data"
log="$run_dir/postgres.log"
db=switchboard
url="postgresql+psycopg://switchboard@127.0.0.1:$port/$db"

# PostgreSQL refuses to run as root: root runs it as the `postgres` user that Debian's
# package creates (else `nobody`), which then owns everything under .run/postgres.
if [ "$(id -u)" -eq 0 ]; then
  if [ -n "${POSTGRES_OS_USER:-}" ]; then
    os_user="$POSTGRES_OS_USER"
  elif id -u postgres >/dev/null 2>&1; then
    os_user=postgres
  else
    os_user=nobody
  fi
  # cd /: the caller's directory (say /root) may be closed to that user.
  as_db_user() { (cd / && runuser -u "$os_user" -- "$@"); }
else
  os_user="$(id -un)"
  as_db_user() { "$@"; }
fi

# The binaries of the version that made the cluster, else the newest installed.
find_bin() {
  if [ -n "${POSTGRES_BIN:-}" ]; then bin="$POSTGRES_BIN"; return; fi
  bin=""
  if [ -f "$data/PG_VERSION" ] && [ -x "/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin/pg_ctl" ]; then
    bin="/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin"
    return
  fi
  local d
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
    [ -x "$d/initdb" ] && bin="$d"
  done
  if [ -z "$bin" ] && command -v initdb >/dev/null; then
    bin="$(dirname "$(command -v initdb)")"
  fi
  if [ -z "$bin" ] && [ "$action" = start ] && install_server; then
    find_bin
    return
  fi
  if [ -z "$bin" ]; then
    echo "postgres: no PostgreSQL server binaries found; install them" \
      "(apt-get install postgresql) or set POSTGRES_BIN to the directory holding initdb" >&2
    exit 1
  fi
}

# On a fresh Debian/Ubuntu machine, `start` installs the server from the distribution's
# packages (as root, or with passwordless sudo). The package's own `main` cluster on 5432
# is switched off first: nothing here uses it.
install_server() {
  command -v apt-get >/dev/null || return 1
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || return 1
    sudo="sudo -n"
  fi
  echo "postgres: installing Debian's postgresql package (once)" >&2
  $sudo mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" |
    $sudo tee /etc/postgresql-common/createcluster.d/switchboard.conf >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      postgresql >/dev/null
}

running_pid() {
  [ -f "$data/postmaster.pid" ] || return 1
  local pid
  pid="$(head -n 1 "$data/postmaster.pid")"
  alive "$pid" || return 1
  # A pid left behind by a crash may since belong to something else.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null || echo postgres)" = postgres ] || return 1
  echo "$pid"
}

# A killed postmaster stays a zombie until it is reaped (by init, which may take
# seconds), and PostgreSQL refuses to start while the pid in postmaster.pid exists.
await_reaped() {
  [ -f "$data/postmaster.pid" ] || return 0
  local pid deadline=$((SECONDS + 30))
  pid="$(head -n 1 "$data/postmaster.pid")"
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

answers() { "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U switchboard -d postgres; }

# kill -0 also succeeds on a zombie, which an orphaned postmaster stays until reaped.
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

prepare_dir() {
  mkdir -p "$run_dir"
  if [ "$(id -u)" -eq 0 ] && [ "$(stat -c %U "$run_dir")" != "$os_user" ]; then
    chown -R "$os_user" "$run_dir"
  fi
  if ! as_db_user test -w "$run_dir"; then
    echo "postgres: user $os_user cannot write $run_dir (it, or a parent, is closed to" \
      "that user); set SWITCHBOARD_RUN_DIR to a directory it can reach" >&2
    exit 1
  fi
}

init_cluster() {
  # initdb into a scratch directory, renamed only when complete: an interrupted first
  # start must not leave a half-made cluster that later starts would trip over.
  rm -rf "$data.new"
  # --no-sync: no fsync of the fresh cluster's ~40 MB; the OS writes it out in its own
  # time, and a development cluster lost to a power cut is rebuilt by deleting it.
  as_db_user "$bin/initdb" -D "$data.new" -U switchboard --auth=trust --no-locale \
    --encoding=UTF8 --no-sync >"$run_dir/initdb.log" 2>&1 ||
    { cat "$run_dir/initdb.log" >&2; exit 1; }
  echo "include 'switchboard.conf'" >>"$data.new/postgresql.conf"
  mv "$data.new" "$data"
}

write_config() {
  # Rewritten at each start so that POSTGRES_PORT applies to an existing cluster.
  as_db_user tee "$data/switchboard.conf" >/dev/null <<EOF
# Written by infra/postgres/postgres.sh; edits are overwritten at the next start.
listen_addresses = '127.0.0.1'
port = $port
# TCP only: no socket directory to own, and no 107-byte socket path limit to outgrow.
unix_socket_directories = ''
max_connections = 200
EOF
}

start() {
  find_bin
  if running_pid >/dev/null; then
    wait_ready
    echo "postgres: up at $url"
    return
  fi
  if port_open "$port"; then
    echo "postgres: port $port is taken by a process this script did not start" \
      "(set POSTGRES_PORT to use another)" >&2
    exit 1
  fi
  prepare_dir
  [ -f "$data/PG_VERSION" ] || init_cluster
  await_reaped
  write_config
  # pg_ctl puts the server in its own session, so Ctrl-C in the terminal that ran
  # `make run` does not reach it; the caller stops it explicitly. 9>&-: the server must
  # not inherit (and so hold forever) the lock that start and stop take.
  if ! as_db_user "$bin/pg_ctl" start -D "$data" -l "$log" -s -w \
    -t "${POSTGRES_START_TIMEOUT:-60}" >/dev/null 9>&-; then
    echo "postgres: did not start; last lines of its log:" >&2
    tail -n 30 "$log" >&2 || true
    exit 1
  fi
  wait_ready
  create_database
  echo "postgres: up at $url"
}

wait_ready() {
  local deadline=$((SECONDS + ${POSTGRES_START_TIMEOUT:-60}))
  until answers; do
    if ! running_pid >/dev/null; then
      echo "postgres: exited during start; last lines of its log:" >&2
      tail -n 30 "$log" >&2 || true
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "postgres: did not answer within ${POSTGRES_START_TIMEOUT:-60}s" >&2
      exit 1
    fi
    sleep 0.1
  done
}

create_database() {
  local psql=("$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U switchboard -v ON_ERROR_STOP=1)
  if [ "$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    "${psql[@]}" -d postgres -c "CREATE DATABASE $db"
  fi
}

stop() {
  local pid deadline
  if pid="$(running_pid)"; then
    # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, then a clean
    # checkpoint. (SIGTERM, the smart mode, would wait for every pooled connection.)
    kill -INT "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "postgres: stopped"
}

status() {
  if pid="$(running_pid)"; then
    echo "postgres: up (pid $pid) at $url"
  else
    echo "postgres: down"
    return 1
  fi
}

# One start or stop at a time: `make infra-up` and a test session may both start it.
locked() {
  mkdir -p "$run_dir"
  exec 9>>"$run_dir/.lock"
  flock 9
  "$@"
}

case "$action" in
  start) locked start ;;
  stop) locked stop ;;
  status) status ;;
  url) echo "$url" ;;
  *) echo "usage: postgres.sh start|stop|status|url" >&2; exit 2 ;;
esac

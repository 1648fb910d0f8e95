#!/usr/bin/env bash
# Start a throwaway BuildGrid server (plus the PostgreSQL cluster its
# scheduler needs) on 127.0.0.1:PORT, keeping all state under DIR.
#
#   buildgrid/start.sh PORT DIR
#
# Waits until the gRPC port accepts connections, then returns (exit 0).
# Writes DIR/bgd.pid and DIR/bgd.log; stop everything with
# `buildgrid/stop.sh DIR`.
#
# Environment:
#   BGD_VENV    venv with buildgrid[database] installed
#               (default: target/buildgrid-venv of the workspace, as
#               installed by .ci/setup)
#   PG_BINDIR   PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)
#   BGD_START_TIMEOUT  seconds to wait for the port (default 60)
set -euo pipefail

PORT=${1:?usage: start.sh PORT DIR}
DIR=${2:?usage: start.sh PORT DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${BGD_VENV:-$HERE/../../target/buildgrid-venv}
TIMEOUT=${BGD_START_TIMEOUT:-60}

if [ ! -x "$VENV/bin/bgd" ]; then
    echo "start.sh: no bgd in $VENV (set BGD_VENV)" >&2
    exit 2
fi
if [ -z "${PG_BINDIR:-}" ]; then
    PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
fi
if [ -z "$PG_BINDIR" ] || [ ! -x "$PG_BINDIR/initdb" ]; then
    echo "start.sh: PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BINDIR)" >&2
    exit 2
fi

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PGDATA="$DIR/pg"
PGSOCK="$DIR/pgsock"
mkdir -p "$PGSOCK"

# PostgreSQL refuses to run as root: use the `postgres` system user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
if [ "$(id -u)" = 0 ]; then
    chmod 755 "$DIR"
    chown postgres "$PGSOCK"
    mkdir -p "$PGDATA" && chown postgres "$PGDATA"
fi

as_pg "$PG_BINDIR/initdb" -D "$PGDATA" -U bgd --auth=trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1 \
    || { echo "start.sh: initdb failed, see $DIR/initdb.log" >&2; cat "$DIR/initdb.log" >&2; exit 1; }
as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA" -l "$PGSOCK/pg.log" -w -t 60 \
    -o "-c listen_addresses='' -k $PGSOCK -c fsync=off -c max_connections=100" start >/dev/null \
    || { echo "start.sh: postgres failed to start, see $PGSOCK/pg.log" >&2; cat "$PGSOCK/pg.log" >&2; exit 1; }
as_pg "$PG_BINDIR/createdb" -h "$PGSOCK" -U bgd bgd

# Explicit psycopg2 driver: BuildGrid's LISTEN/NOTIFY notifier needs a psycopg2
# connection, while SQLAlchemy 2.1 defaults "postgresql://" to psycopg 3.
export BGD_SQL="postgresql+psycopg2://bgd@/bgd?host=$PGSOCK"
export BGD_ADDRESS="127.0.0.1:$PORT"
export BGD_CAS_DIR="$DIR/cas"
mkdir -p "$BGD_CAS_DIR"
"$VENV/bin/bgd" migrate apply "$BGD_SQL" >"$DIR/migrate.log" 2>&1 \
    || { echo "start.sh: bgd migrate failed" >&2; cat "$DIR/migrate.log" >&2; exit 1; }

# setsid: own process group, so stop.sh can kill the server and its children.
setsid "$VENV/bin/bgd" server start -v "$HERE/server.yml" >"$DIR/bgd.log" 2>&1 &
echo $! >"$DIR/bgd.pid"

deadline=$((SECONDS + TIMEOUT))
while ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ! kill -0 "$(cat "$DIR/bgd.pid")" 2>/dev/null; then
        echo "start.sh: bgd exited early; last log lines:" >&2
        tail -n 40 "$DIR/bgd.log" >&2
        exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
        echo "start.sh: port $PORT not answering after ${TIMEOUT}s; last log lines:" >&2
        tail -n 40 "$DIR/bgd.log" >&2
        exit 1
    fi
    sleep 0.2
done
echo "start.sh: BuildGrid listening on 127.0.0.1:$PORT (state in $DIR)"

#!/usr/bin/env bash
# Stop a server started by `buildgrid/start.sh PORT DIR`: `stop.sh DIR`.
# Kills the bgd process group recorded in DIR/bgd.pid and stops the
# PostgreSQL cluster in DIR/pg. Safe to call twice.
set -uo pipefail
DIR=${1:?usage: stop.sh DIR}
if [ -f "$DIR/bgd.pid" ]; then
    pid=$(cat "$DIR/bgd.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null
    rm -f "$DIR/bgd.pid"
fi
if [ -z "${PG_BINDIR:-}" ]; then
    PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
fi
if [ -f "$DIR/pg/postmaster.pid" ] && [ -n "$PG_BINDIR" ]; then
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$PG_BINDIR/pg_ctl" -D "$DIR/pg" -m immediate stop >/dev/null 2>&1
    else
        "$PG_BINDIR/pg_ctl" -D "$DIR/pg" -m immediate stop >/dev/null 2>&1
    fi
fi
exit 0

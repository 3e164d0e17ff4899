# A throwaway PostgreSQL cluster for the service's test and load scripts. Source after lib.sh.
#
# pg_start: installs postgresql with apt-get when missing, runs initdb and pg_ctl as a non-root
#   user (as root: `postgres` if it exists, else a system user `cacheobj-pg` created here) on a
#   free loopback port with pg_stat_statements, and exports SERVICE_TEST_PG_URL (a superuser
#   URL, trust authentication, loopback only). Sets PG_DIR.
# pg_stop: stops it and removes its directory. Safe to call twice, or before pg_start.

PG_DIR=""
PG_BIN=""
PG_USER=""

pg_find_bin() {
    local dir
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        PG_BIN=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
        return 0
    fi
    # Debian keeps them out of PATH, per major version; take the newest.
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            PG_BIN=$dir
            return 0
        fi
    done
    return 1
}

ensure_postgresql() {
    if pg_find_bin; then
        log "using PostgreSQL from $PG_BIN ($("$PG_BIN/postgres" --version))"
        return 0
    fi
    log "initdb/pg_ctl not found; installing the postgresql package with apt-get"
    apt_get_cmd postgresql
    export DEBIAN_FRONTEND=noninteractive
    "${APT[@]}" update || die "'apt-get update' failed; cannot install postgresql"
    # The package starts a cluster on 5432 through its init script on some systems; this
    # script never uses it (it starts its own on a free port).
    "${APT[@]}" install -y --no-install-recommends postgresql postgresql-contrib \
        || "${APT[@]}" install -y --no-install-recommends postgresql \
        || die "'apt-get install -y postgresql' failed; install postgresql manually"
    pg_find_bin || die "initdb/pg_ctl still not found after installing postgresql"
    log "installed PostgreSQL in $PG_BIN ($("$PG_BIN/postgres" --version))"
}

# pg_as CMD...: runs CMD as the cluster's owner.
pg_as() {
    if [ -n "$PG_USER" ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

pg_start() {
    ensure_postgresql
    command -v psql >/dev/null 2>&1 || [ -x "$PG_BIN/psql" ] \
        || die "psql not found next to $PG_BIN"
    if [ "$(id -u)" -eq 0 ]; then
        # PostgreSQL refuses to run as root.
        if id postgres >/dev/null 2>&1; then
            PG_USER=postgres
        else
            id cacheobj-pg >/dev/null 2>&1 \
                || useradd --system --no-create-home --shell /usr/sbin/nologin cacheobj-pg \
                || die "could not create a user to run PostgreSQL as (useradd cacheobj-pg)"
            PG_USER=cacheobj-pg
        fi
        command -v runuser >/dev/null 2>&1 || die "runuser not found (util-linux)"
    fi
    PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cacheobj-pg.XXXXXX")
    chmod 755 "$PG_DIR"
    [ -z "$PG_USER" ] || chown "$PG_USER" "$PG_DIR"
    log "initdb in $PG_DIR${PG_USER:+ as $PG_USER}"
    pg_as "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust --encoding=UTF8 \
        --no-sync >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
    local attempt port
    for attempt in 1 2 3 4 5; do
        port=$(pick_free_port) || die "could not find a free loopback TCP port"
        log "starting throwaway PostgreSQL on 127.0.0.1:$port (attempt $attempt)"
        # Durability off (a test cluster), pg_stat_statements on (queries counted by the
        # database), enough connections for four services plus the tests.
        if pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 30 \
            -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_DIR \
                -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top \
                -c max_connections=300 -c fsync=off -c synchronous_commit=off \
                -c full_page_writes=off" start >"$PG_DIR/pg_ctl.log" 2>&1; then
            break
        fi
        cat "$PG_DIR/pg_ctl.log" "$PG_DIR/postgres.log" >&2 2>/dev/null || true
        port=""
    done
    [ -n "$port" ] || die "could not start a throwaway PostgreSQL (5 attempts; see above)"
    local psql=psql
    [ -x "$PG_BIN/psql" ] && psql="$PG_BIN/psql"
    # Make sure the server on that port is ours, then enable the extension.
    local dir
    dir=$("$psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc 'SHOW data_directory') \
        || die "cannot query the throwaway PostgreSQL on 127.0.0.1:$port"
    [ "$dir" = "$PG_DIR/data" ] \
        || die "127.0.0.1:$port answers with data_directory $dir, not ours ($PG_DIR/data)"
    "$psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc \
        'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' \
        || die "CREATE EXTENSION pg_stat_statements failed (is postgresql-contrib installed?)"
    PG_PORT=$port
    export SERVICE_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    log "PostgreSQL ready: SERVICE_TEST_PG_URL=$SERVICE_TEST_PG_URL"
}

pg_stop() {
    if [ -n "$PG_DIR" ] && [ -f "$PG_DIR/data/postmaster.pid" ]; then
        log "stopping throwaway PostgreSQL ($PG_DIR)"
        pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$PG_DIR" ]; then
        rm -rf -- "$PG_DIR"
        PG_DIR=""
    fi
}

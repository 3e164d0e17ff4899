#!/usr/bin/env bash
# Run the whole cacheobj test suite against throwaway Redis servers.
#
# Usage: bash scripts/test.sh              the whole suite (lib, bins, tests, examples, the
#                                          `metrics` feature's test, doctests)
#        bash scripts/test.sh ARGS...      only `cargo test ARGS...` (say, `--test batch`),
#                                          against the same servers
#
# Starts, on free loopback ports (never touching any other Redis on the machine):
#   * a standalone redis-server:     CACHEOBJ_TEST_REDIS_URL, CACHEOBJ_REDIS_SERVER
#   * a 3-master Redis Cluster:       CACHEOBJ_TEST_CLUSTER_NODES (comma-separated URLs)
#   * a TLS-only redis-server with a CA and server certificate generated here with
#     openssl:                        CACHEOBJ_TEST_TLS_URL, CACHEOBJ_TEST_CA_CERT
# runs the tests, and stops every server (removing the temp dir) on exit. Then runs
# scripts/service_test.sh: the service (service/) over HTTP on a throwaway PostgreSQL and on
# SQLite, each test with its own redis-server; and, last, scripts/compat.sh: a focused part of
# the suite on Redis 6.2 and Valkey 8.1 (whole-suite mode only, not with ARGS).
set -euo pipefail

SCRIPT=test.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- 1. redis-server / redis-cli / openssl -----------------------------------
ensure_redis_server

if command -v openssl >/dev/null 2>&1; then
    log "using $(command -v openssl) ($(openssl version | head -n1))"
else
    log "openssl not found; installing the openssl package with apt-get (for the TLS test certificates)"
    apt_get_cmd openssl
    export DEBIAN_FRONTEND=noninteractive
    "${APT[@]}" update \
        || die "'apt-get update' failed; cannot install openssl"
    "${APT[@]}" install -y --no-install-recommends openssl \
        || die "'apt-get install -y openssl' failed; install openssl manually"
    command -v openssl >/dev/null 2>&1 \
        || die "openssl still not on PATH after installing the openssl package"
    log "installed $(command -v openssl) ($(openssl version | head -n1))"
fi

# --- 2. throwaway redis-server ----------------------------------------------
REDIS_PID=""
REDIS_DIR=""
# The cluster nodes and the TLS server: "pid:description" entries.
EXTRA_SERVERS=()

cleanup() {
    if [ "${#EXTRA_SERVERS[@]}" -gt 0 ]; then
        stop_servers "${EXTRA_SERVERS[@]}"
        EXTRA_SERVERS=()
    fi
    if [ -n "$REDIS_PID" ]; then
        if kill -0 "$REDIS_PID" 2>/dev/null; then
            log "stopping throwaway redis-server (pid $REDIS_PID)"
            kill -TERM "$REDIS_PID" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$REDIS_PID" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$REDIS_PID" 2>/dev/null || true
        fi
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
    if [ -n "$REDIS_DIR" ]; then
        rm -rf -- "$REDIS_DIR"
        REDIS_DIR=""
    fi
}
on_exit() {
    local rc=$?
    trap - EXIT
    cleanup
    exit "$rc"
}
on_signal() {
    local rc=$1
    trap - EXIT INT TERM
    log "interrupted"
    cleanup
    exit "$rc"
}
trap on_exit EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cacheobj-test-redis.XXXXXX")
PORT=""
for attempt in 1 2 3 4 5; do
    PORT=$(pick_free_port) || die "could not find a free loopback TCP port"
    log "starting throwaway redis-server on 127.0.0.1:$PORT (attempt $attempt, dir $REDIS_DIR)"
    redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" \
        >"$REDIS_DIR/stdout.log" 2>&1 &
    REDIS_PID=$!

    ready=""
    deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "$REDIS_PID" 2>/dev/null; then
            break # exited (e.g. the port was grabbed meanwhile); retry below
        fi
        if [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null || true)" = "PONG" ]; then
            # Make sure the PONG came from *our* server, not some other one.
            if redis-cli -h 127.0.0.1 -p "$PORT" info server 2>/dev/null \
                | tr -d '\r' | grep -qx "process_id:$REDIS_PID"; then
                ready=1
                break
            fi
        fi
        sleep 0.1
    done
    [ -n "$ready" ] && break

    if kill -0 "$REDIS_PID" 2>/dev/null; then
        # Alive but not answering within 10 s: that is not a port race.
        log "redis-server log:"
        cat "$REDIS_DIR/redis.log" "$REDIS_DIR/stdout.log" >&2 2>/dev/null || true
        die "throwaway redis-server on 127.0.0.1:$PORT did not answer PING with PONG within 10 s"
    fi
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
    log "redis-server exited before becoming ready; its log:"
    cat "$REDIS_DIR/redis.log" "$REDIS_DIR/stdout.log" >&2 2>/dev/null || true
done
[ -n "$REDIS_PID" ] || die "could not start a throwaway redis-server (5 attempts failed; see log above)"
log "redis-server ready on 127.0.0.1:$PORT (pid $REDIS_PID)"

export CACHEOBJ_TEST_REDIS_URL="redis://127.0.0.1:$PORT/"
CACHEOBJ_REDIS_SERVER=$(command -v redis-server)
export CACHEOBJ_REDIS_SERVER
log "CACHEOBJ_TEST_REDIS_URL=$CACHEOBJ_TEST_REDIS_URL CACHEOBJ_REDIS_SERVER=$CACHEOBJ_REDIS_SERVER"

# --- 3. throwaway 3-master Redis Cluster ------------------------------------
CLUSTER_DIR="$REDIS_DIR/cluster"
mkdir -p "$CLUSTER_DIR"
CLUSTER_PORTS=()
for attempt in 1 2 3 4 5; do
    # Three client ports and three cluster-bus ports (--cluster-port, so the bus port is not
    # client port + 10000, which may be taken or past 65535).
    mapfile -t ports < <(pick_free_ports 6) || true
    [ "${#ports[@]}" -eq 6 ] || die "could not find 6 free loopback TCP ports for the cluster"
    CLUSTER_PORTS=("${ports[@]:0:3}")
    log "starting a throwaway 3-master Redis Cluster on 127.0.0.1:${CLUSTER_PORTS[*]} (attempt $attempt, dir $CLUSTER_DIR)"
    attempt_servers=()
    for i in 0 1 2; do
        p=${ports[$i]}
        redis-server --port "$p" --cluster-enabled yes --cluster-port "${ports[$((i + 3))]}" \
            --cluster-config-file "$CLUSTER_DIR/nodes-$p.conf" \
            --save '' --appendonly no --bind 127.0.0.1 --daemonize no \
            --dir "$CLUSTER_DIR" --logfile "$CLUSTER_DIR/redis-$p.log" \
            >"$CLUSTER_DIR/stdout-$p.log" 2>&1 &
        attempt_servers+=("$!:cluster node redis-server 127.0.0.1:$p")
        EXTRA_SERVERS+=("$!:cluster node redis-server 127.0.0.1:$p")
    done
    failed=""
    for entry in "${attempt_servers[@]}"; do
        pid=${entry%%:*}
        p=${entry##*:}
        rc=0
        wait_ready "$pid" -h 127.0.0.1 -p "$p" || rc=$?
        if [ "$rc" -eq 1 ]; then
            show_logs "$CLUSTER_DIR/redis-$p.log" "$CLUSTER_DIR/stdout-$p.log"
            die "cluster node redis-server on 127.0.0.1:$p did not answer PING with PONG within 10 s"
        elif [ "$rc" -eq 2 ]; then
            log "cluster node redis-server on 127.0.0.1:$p exited before becoming ready; its log:"
            show_logs "$CLUSTER_DIR/redis-$p.log" "$CLUSTER_DIR/stdout-$p.log"
            failed=1
            break
        fi
    done
    if [ -z "$failed" ]; then
        break
    fi
    # A port was most likely grabbed in between: stop this attempt's nodes and retry.
    stop_servers "${attempt_servers[@]}"
    EXTRA_SERVERS=()
    CLUSTER_PORTS=()
done
[ "${#CLUSTER_PORTS[@]}" -eq 3 ] \
    || die "could not start the cluster's redis-servers (5 attempts failed; see log above)"

log "creating the cluster: redis-cli --cluster create 127.0.0.1:${CLUSTER_PORTS[0]} 127.0.0.1:${CLUSTER_PORTS[1]} 127.0.0.1:${CLUSTER_PORTS[2]} --cluster-replicas 0 --cluster-yes"
if ! redis-cli --cluster create "127.0.0.1:${CLUSTER_PORTS[0]}" "127.0.0.1:${CLUSTER_PORTS[1]}" \
    "127.0.0.1:${CLUSTER_PORTS[2]}" --cluster-replicas 0 --cluster-yes \
    >"$CLUSTER_DIR/create.log" 2>&1 </dev/null; then
    show_logs "$CLUSTER_DIR/create.log"
    die "'redis-cli --cluster create' failed for 127.0.0.1:${CLUSTER_PORTS[*]}"
fi

# Every node must see the whole cluster (all 16384 slots assigned and reachable).
deadline=$((SECONDS + 20))
while :; do
    not_ok=""
    for p in "${CLUSTER_PORTS[@]}"; do
        if ! redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null \
            | tr -d '\r' | grep -qx 'cluster_state:ok'; then
            not_ok="$not_ok $p"
        fi
    done
    [ -n "$not_ok" ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
        for p in $not_ok; do
            log "CLUSTER INFO of 127.0.0.1:$p:"
            redis-cli -h 127.0.0.1 -p "$p" cluster info >&2 2>/dev/null || true
        done
        show_logs "$CLUSTER_DIR/create.log"
        die "the throwaway Redis Cluster did not reach cluster_state:ok within 20 s (nodes not ok: 127.0.0.1:${not_ok# })"
    fi
    sleep 0.2
done
CACHEOBJ_TEST_CLUSTER_NODES=""
for p in "${CLUSTER_PORTS[@]}"; do
    CACHEOBJ_TEST_CLUSTER_NODES="${CACHEOBJ_TEST_CLUSTER_NODES:+$CACHEOBJ_TEST_CLUSTER_NODES,}redis://127.0.0.1:$p/"
done
export CACHEOBJ_TEST_CLUSTER_NODES
log "Redis Cluster ready: CACHEOBJ_TEST_CLUSTER_NODES=$CACHEOBJ_TEST_CLUSTER_NODES"

# --- 4. throwaway TLS redis-server ------------------------------------------
TLS_DIR="$REDIS_DIR/tls"
mkdir -p "$TLS_DIR"
log "generating a test CA and a server certificate for 127.0.0.1/localhost in $TLS_DIR"
cat >"$TLS_DIR/ca.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = cacheobj test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
cat >"$TLS_DIR/server.ext" <<'CNF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
if ! {
    openssl req -x509 -new -nodes -config "$TLS_DIR/ca.cnf" \
        -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" -days 2 \
        && openssl req -new -nodes -subj "/CN=localhost" \
            -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" \
        && openssl x509 -req -in "$TLS_DIR/server.csr" \
            -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
            -extfile "$TLS_DIR/server.ext" -days 2 -out "$TLS_DIR/server.crt"
} >"$TLS_DIR/openssl.log" 2>&1; then
    show_logs "$TLS_DIR/openssl.log"
    die "openssl could not generate the test certificates"
fi

TLS_PORT=""
for attempt in 1 2 3 4 5; do
    TLS_PORT=$(pick_free_port) || die "could not find a free loopback TCP port"
    log "starting throwaway TLS redis-server on 127.0.0.1:$TLS_PORT (attempt $attempt, dir $TLS_DIR)"
    redis-server --port 0 --tls-port "$TLS_PORT" \
        --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
        --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no \
        --save '' --appendonly no --bind 127.0.0.1 --daemonize no \
        --dir "$TLS_DIR" --logfile "$TLS_DIR/redis.log" \
        >"$TLS_DIR/stdout.log" 2>&1 &
    tls_pid=$!
    EXTRA_SERVERS+=("$tls_pid:TLS redis-server 127.0.0.1:$TLS_PORT")
    rc=0
    wait_ready "$tls_pid" --tls --cacert "$TLS_DIR/ca.crt" -h 127.0.0.1 -p "$TLS_PORT" || rc=$?
    [ "$rc" -eq 0 ] && break
    if [ "$rc" -eq 1 ]; then
        show_logs "$TLS_DIR/redis.log" "$TLS_DIR/stdout.log"
        die "throwaway TLS redis-server on 127.0.0.1:$TLS_PORT did not answer PING with PONG within 10 s (is redis-server built with TLS support?)"
    fi
    log "TLS redis-server exited before becoming ready; its log:"
    show_logs "$TLS_DIR/redis.log" "$TLS_DIR/stdout.log"
    stop_servers "$tls_pid:TLS redis-server"
    unset 'EXTRA_SERVERS[-1]'
    TLS_PORT=""
done
[ -n "$TLS_PORT" ] || die "could not start a throwaway TLS redis-server (5 attempts failed; see log above)"

export CACHEOBJ_TEST_TLS_URL="rediss://127.0.0.1:$TLS_PORT/"
export CACHEOBJ_TEST_CA_CERT="$TLS_DIR/ca.crt"
log "TLS redis-server ready: CACHEOBJ_TEST_TLS_URL=$CACHEOBJ_TEST_TLS_URL CACHEOBJ_TEST_CA_CERT=$CACHEOBJ_TEST_CA_CERT"

# --- 5. tests ---------------------------------------------------------------
if [ "$#" -gt 0 ]; then
    log "running: cargo test $*"
    cargo test "$@"
    log "selected tests passed"
    exit 0
fi

# The service's tests need PostgreSQL too: scripts/service_test.sh runs them below.
log "running: cargo test --workspace --exclude cacheobj-service --lib --bins --tests --examples"
cargo test --workspace --exclude cacheobj-service --lib --bins --tests --examples

log "running: cargo test --features metrics --test metrics"
cargo test --features metrics --test metrics

log "running: cargo test --workspace --doc"
cargo test --workspace --doc

log "running: bash scripts/service_test.sh (the service over HTTP, on PostgreSQL and SQLite)"
bash scripts/service_test.sh

log "running: bash scripts/compat.sh (the local tier, the behaviour suite and more on Redis 6.2 and Valkey 8.1)"
bash scripts/compat.sh

log "all tests passed"

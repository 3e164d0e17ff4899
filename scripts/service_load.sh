#!/usr/bin/env bash
# Load figures for the service (not CI): wrk on loopback, 64 connections, a Zipf-like key
# mix over 10,000 items (service/load/zipf.lua), on a throwaway PostgreSQL, with the cache on
# (Redis; and the embedded backend) and off (CACHE_BYPASS=1). Each run starts from a cold
# cache. Prints requests/s, p50/p90/p99/p99.9, database queries/s (pg_stat_statements) and
# the hit rate (the service's /metrics), and writes service/load/results.md and
# service/load/latency.svg (latency percentiles, with and without the cache).
#
# Usage: bash scripts/service_load.sh [SECONDS]     (default 20 per run)
#        THREADS=2 CONNECTIONS=64 ZIPF_S=1.0 bash scripts/service_load.sh
set -euo pipefail

SCRIPT=service_load.sh
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/pg.sh
. "$(dirname "${BASH_SOURCE[0]}")/pg.sh"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SECS=${1:-20}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
export ITEMS=10000 ZIPF_S=${ZIPF_S:-1.0}
OUT=service/load

ensure_redis_server
if ! command -v wrk >/dev/null 2>&1; then
    log "wrk not found; installing the wrk package with apt-get"
    apt_get_cmd wrk
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends wrk \
        || die "'apt-get install -y wrk' failed"
fi

REDIS_PID=""
SERVICE_PID=""
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cacheobj-load.XXXXXX")
# stop PID: SIGTERM, up to 10 s to exit, then SIGKILL. (A SIGTERM that lands before the
# forked shell has exec'ed the program runs this script's trap instead: hence the SIGKILL.)
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    [ -z "$SERVICE_PID" ] || stop "$SERVICE_PID"
    [ -z "$REDIS_PID" ] || stop "$REDIS_PID"
    pg_stop
    rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM

log "building the service (release)"
cargo build --release -p cacheobj-service
BIN=$ROOT/target/release/cacheobj-service

pg_start
PSQL=psql
[ -x "$PG_BIN/psql" ] && PSQL="$PG_BIN/psql"
psql_admin() { "$PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc "$1"; }
psql_admin 'CREATE DATABASE load'

REDIS_PORT=$(pick_free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null || true)" = PONG ] && break
    sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null || true)" = PONG ] || die "redis-server did not start"

# item_reads: item-row SELECTs the load database has run (pg_stat_statements).
item_reads() {
    psql_admin "SELECT COALESCE(SUM(s.calls),0) FROM pg_stat_statements s JOIN pg_database d
        ON d.oid = s.dbid WHERE d.datname = 'load' AND s.query ILIKE 'select % from items %'"
}
metric() { # metric URL NAME: a value from /metrics (0 when absent)
    curl -fsS "$1/metrics" | awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}

# start_service NAME ENV...: starts the service with ENV, waits until it prints its address
# (sets URL and SERVICE_PID).
start_service() {
    local name=$1
    shift
    : >"$WORK/$name.out"
    env "$@" "$BIN" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SERVICE_PID=$!
    URL=""
    for _ in $(seq 1 300); do
        URL=$(sed -n 's/^listening on //p' "$WORK/$name.out")
        [ -n "$URL" ] && return 0
        kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/$name.err" >&2; die "the service exited"; }
        sleep 0.1
    done
    die "the service did not print its address within 30 s"
}

# run MODE: starts the service in MODE (redis | embedded | off), runs wrk, records figures.
run() {
    local mode=$1 env=(BIND=127.0.0.1:0 DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/load"
        SEED_ITEMS=$ITEMS DB_MAX_CONNECTIONS=16 RUST_LOG=warn CACHE_PREFIX="load:")
    case $mode in
        redis) env+=(CACHE_URL="redis://127.0.0.1:$REDIS_PORT/") ;;
        embedded) ;;
        off) env+=(CACHE_BYPASS=1) ;;
    esac
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    local url
    start_service "$mode" "${env[@]}"
    url=$URL
    local q0 h0 m0 q1 h1 m1
    q0=$(item_reads); h0=$(metric "$url" cacheobj_hits_total); m0=$(metric "$url" cacheobj_misses_total)
    log "cache $mode: wrk -t$THREADS -c$CONNECTIONS -d${SECS}s on $url"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECS}s" --latency -s "$OUT/zipf.lua" "$url" \
        >"$WORK/$mode.wrk"
    q1=$(item_reads); h1=$(metric "$url" cacheobj_hits_total); m1=$(metric "$url" cacheobj_misses_total)
    stop "$SERVICE_PID"; SERVICE_PID=""
    grep -q '^RESULT' "$WORK/$mode.wrk" || { cat "$WORK/$mode.wrk" >&2; die "wrk printed no result"; }
    awk -v mode="$mode" -v q="$((q1 - q0))" -v h="$((h1 - h0))" -v m="$((m1 - m0))" '
        /^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] } }
        /^PCT/ { p[$2] = $3 }
        END {
            secs = r["duration_us"] / 1e6
            hit = (h + m) > 0 ? 100 * h / (h + m) : 0
            printf "%s %.0f %.3f %.3f %.3f %.3f %.0f %.1f %d %d\n", mode, r["requests"] / secs,
                p["p50"] / 1000, p["p90"] / 1000, p["p99"] / 1000, p["p99.9"] / 1000,
                q / secs, hit, r["non2xx"], r["socket_errors"]
        }' "$WORK/$mode.wrk" >>"$WORK/figures"
    tail -n1 "$WORK/figures" >&2
}

: >"$WORK/figures"
for mode in off redis embedded; do run "$mode"; done

# The ceiling on this machine: the same service answering its JSON 404 fallback (routing and
# a JSON body, no cache, no database), so the ratios above can be read against it.
start_service ceiling BIND=127.0.0.1:0 SEED_ITEMS=0 RUST_LOG=warn \
    DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/load"
log "ceiling: wrk -t$THREADS -c$CONNECTIONS -d10s $URL/nowhere"
CEILING=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d10s "$URL/nowhere" | awk '/^Requests\/sec/ { printf "%.0f", $2 }')
stop "$SERVICE_PID"; SERVICE_PID=""

# results.md: the table, with the ratios against the cache-off run.
{
    echo "| cache | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | DB queries/s | hit rate | non-2xx |"
    echo "|---|---|---|---|---|---|---|---|---|"
    awk '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
        ($1 == "off" ? "off (CACHE_BYPASS=1)" : "on, " $1), $2, $3, $4, $5, $6, $7,
        ($1 == "off" ? "-" : $8 " %"), $9 + $10 }' "$WORK/figures"
    echo
    awk '$1 == "off" { rps = $2; q = $7 } $1 != "off" { name[++n] = $1; r[n] = $2; qq[n] = $7 }
        END { for (i = 1; i <= n; i++)
            printf "- cache on (%s): %.1fx the requests/s; database queries/s cut by %.1f %%, queries per request by %.1f %%\n",
                name[i], r[i] / rps, (q > 0 ? 100 * (1 - qq[i] / q) : 0),
                (q > 0 ? 100 * (1 - (qq[i] / r[i]) / (q / rps)) : 0) }' "$WORK/figures"
    awk -v c="$CEILING" '$1 == "off" { printf "- ceiling: the same service answers a bare JSON 404 route at %s requests/s, %.1fx the cache-off rate\n", c, c / $2 }' "$WORK/figures"
    echo
    echo "wrk -t$THREADS -c$CONNECTIONS -d${SECS}s, Zipf s=$ZIPF_S over $ITEMS items, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), cold cache at the start of each run, $(nproc) CPUs shared by wrk, the service, PostgreSQL and Redis."
} >"$OUT/results.md"

# latency.svg: grouped bars of p50/p90/p99/p99.9 per mode, log-scale milliseconds.
awk 'BEGIN {
    W = 640; H = 360; L = 60; R = 20; T = 40; B = 60
    lo = -2; hi = 2   # 10^-2 .. 10^2 ms
    color["off"] = "#d62728"; color["redis"] = "#1f77b4"; color["embedded"] = "#2ca02c"
    label["off"] = "cache off"; label["redis"] = "cache on (Redis)"; label["embedded"] = "cache on (embedded)"
    pct[1] = "p50"; pct[2] = "p90"; pct[3] = "p99"; pct[4] = "p99.9"
}
{ mode[++n] = $1; for (i = 1; i <= 4; i++) v[n, i] = $(i + 2) }
function y(ms) { if (ms < 0.01) ms = 0.01; return T + (H - T - B) * (hi - log(ms) / log(10)) / (hi - lo) }
END {
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
    printf "<text x=\"%d\" y=\"22\" font-size=\"14\">GET /items/{id} latency, 64 connections, Zipf over 10,000 items (ms, log scale)</text>\n", L
    for (e = lo; e <= hi; e++) {
        yy = y(10 ^ e)
        printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, W - R, yy, yy
        printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 6, yy + 4, 10 ^ e
    }
    gw = (W - L - R) / 4; bw = gw / (n + 1)
    for (i = 1; i <= 4; i++) {
        x0 = L + (i - 1) * gw + bw / 2
        printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", x0 + n * bw / 2, H - B + 18, pct[i]
        for (k = 1; k <= n; k++) {
            yy = y(v[k, i]); base = H - B
            printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>%s %s: %s ms</title></rect>\n", x0 + (k - 1) * bw, yy, bw - 2, base - yy, color[mode[k]], label[mode[k]], pct[i], v[k, i]
        }
    }
    for (k = 1; k <= n; k++) {
        lx = L + (k - 1) * 180
        printf "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/>\n", lx, H - 24, color[mode[k]]
        printf "<text x=\"%d\" y=\"%d\">%s</text>\n", lx + 16, H - 14, label[mode[k]]
    }
    print "</svg>"
}' "$WORK/figures" >"$OUT/latency.svg"

cat "$OUT/results.md"
log "wrote $OUT/results.md and $OUT/latency.svg"

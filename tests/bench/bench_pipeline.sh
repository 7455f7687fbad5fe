#!/usr/bin/env bash
# bench_pipeline.sh: measures the hub against a plain Paho relay on a private mosquitto.
#
# For each QoS: (a) throughput: twinsim sends N messages from D devices as fast as it can
# (--rate 0); throughput = N / (the time bench_sub saw every device reach its last seq - the
# time twinsim started); the hub's twins/+/state and the relay's relay/+/telemetry are timed
# the same way. (b) latency: twinsim at a fixed total rate below saturation for S seconds;
# bench_sub's percentiles of now - ts. It prints figures and never judges them; it exits
# non-zero only when something did not work (a program missing or dying, the broker not
# starting, a subscriber that never saw every device finish).
#
# Everything it starts (broker, hub, relay, subscribers, twinsim) is stopped on every exit
# path, and its temporary directory removed.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

DEVICES=100
MESSAGES=100000
BUILD="$repo/build"
LAT_RATE=2000
LAT_SECONDS=10
QOS_LIST="0 1"
TIMEOUT=120
MOSQUITTO=""
USE_HUB=auto
KEEP=0
SIM_INFLIGHT=""
SIM_CONNECTIONS=""
HUB_SETS=()

usage() {
    cat <<EOF
usage: bench_pipeline.sh [options]
  --devices D           simulated devices (default $DEVICES)
  --messages N          messages in each throughput run, over all devices (default $MESSAGES)
  --build DIR           build directory with hub/twinhub, sim/twinsim, tests/bench/*
                        (default $repo/build)
  --latency-rate R      total msg/s of the latency runs (default $LAT_RATE)
  --latency-seconds S   length of each latency run (default $LAT_SECONDS)
  --qos "0 1"           the QoS levels to run (default "$QOS_LIST")
  --timeout T           seconds bench_sub waits for the last seq (default $TIMEOUT)
  --mosquitto PATH      the broker binary (default: mosquitto on PATH or /usr/sbin)
  --sim-inflight W      twinsim --max-inflight (default: twinsim's)
  --sim-connections K   twinsim --connections (default: one per device)
  --hub-set KEY=VALUE   passed to twinhub as --set KEY=VALUE (repeatable)
  --no-hub              measure the relay only
  --keep                keep the temporary directory (logs) and print its path
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --devices) DEVICES=$2; shift 2 ;;
    --messages) MESSAGES=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --latency-rate) LAT_RATE=$2; shift 2 ;;
    --latency-seconds) LAT_SECONDS=$2; shift 2 ;;
    --qos) QOS_LIST=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --mosquitto) MOSQUITTO=$2; shift 2 ;;
    --sim-inflight) SIM_INFLIGHT=$2; shift 2 ;;
    --sim-connections) SIM_CONNECTIONS=$2; shift 2 ;;
    --hub-set) HUB_SETS+=(--set "$2"); shift 2 ;;
    --no-hub) USE_HUB=no; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench_pipeline: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

for v in DEVICES MESSAGES LAT_RATE LAT_SECONDS TIMEOUT ${SIM_INFLIGHT:+SIM_INFLIGHT} \
    ${SIM_CONNECTIONS:+SIM_CONNECTIONS}; do
    case "${!v}" in
    '' | *[!0-9]* | 0) echo "bench_pipeline: $v must be a positive integer, got '${!v}'" >&2; exit 2 ;;
    esac
done
for q in $QOS_LIST; do
    case "$q" in 0 | 1) ;; *) echo "bench_pipeline: --qos: 0 and/or 1, got '$q'" >&2; exit 2 ;; esac
done

BUILD=$(cd "$BUILD" 2>/dev/null && pwd) || { echo "bench_pipeline: no build directory" >&2; exit 2; }
SIM="$BUILD/sim/twinsim"
HUB="$BUILD/hub/twinhub"
SUB="$BUILD/tests/bench/bench_sub"
RELAY="$BUILD/tests/bench/bench_relay"
for b in "$SIM" "$SUB" "$RELAY"; do
    [ -x "$b" ] || { echo "bench_pipeline: $b is not built" >&2; exit 2; }
done
if [ -z "$MOSQUITTO" ]; then
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
[ -x "$MOSQUITTO" ] || { echo "bench_pipeline: no mosquitto ($MOSQUITTO)" >&2; exit 2; }
for b in mosquitto_pub mosquitto_sub python3; do
    command -v $b >/dev/null || { echo "bench_pipeline: $b is needed" >&2; exit 2; }
done

if [ "$USE_HUB" = auto ]; then
    # the daemon counts as ready once it has a --help that knows --broker and --db
    if [ -x "$HUB" ] && "$HUB" --help 2>&1 | grep -q -- '--broker' &&
        "$HUB" --help 2>&1 | grep -q -- '--db'; then
        USE_HUB=yes
    else
        echo "bench_pipeline: $HUB is not ready (no --help with --broker and --db): relay only" >&2
        USE_HUB=no
    fi
fi

# ---------------------------------------------------------------------------------------------
# Processes and cleanup

TMP=$(mktemp -d "${TMPDIR:-/tmp}/twinhub-bench.XXXXXX")
PIDS=()

stop_pid() { # pid [seconds]: TERM, wait, then KILL
    local pid=$1 t=${2:-10} i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < t * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid" 5
    done
    if [ "$KEEP" = 1 ]; then
        echo "bench_pipeline: logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # logfile cmd...: starts in the background, sets LAST_PID
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

forget() { # pid: no longer ours to stop
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

wait_file() { # path pid seconds: until the file exists, while pid lives
    local i
    for ((i = 0; i < $3 * 20; i++)); do
        [ -e "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

now_ms() { date +%s%3N; }

field() { # line key
    sed -n "s/.*[ :]$2=\\([^ ]*\\).*/\\1/p" <<<"$1" | head -n1
}

# ---------------------------------------------------------------------------------------------
# The broker

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PORT=""
for attempt in 1 2 3 4 5; do
    port=$(free_port)
    cat >"$TMP/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
# Without it Mosquitto's Nagle holds QoS 1 deliveries to a client that also publishes QoS 1
# behind each lone PUBACK it sends: ~5 ms median at 2,000 msg/s, for the hub and the relay alike.
set_tcp_nodelay true
persistence false
max_queued_messages 1000000
EOF
    start "$TMP/mosquitto.log" "$MOSQUITTO" -c "$TMP/mosquitto.conf"
    MOSQ_PID=$LAST_PID
    for ((i = 0; i < 100; i++)); do
        kill -0 "$MOSQ_PID" 2>/dev/null || break
        if mosquitto_pub -h 127.0.0.1 -p "$port" -t bench/probe -n 2>/dev/null; then
            PORT=$port
            break
        fi
        sleep 0.05
    done
    [ -n "$PORT" ] && break
    stop_pid "$MOSQ_PID"
    forget "$MOSQ_PID"
done
if [ -z "$PORT" ]; then
    echo "bench_pipeline: mosquitto did not start:" >&2
    cat "$TMP/mosquitto.log" >&2
    exit 1
fi
URL="tcp://127.0.0.1:$PORT"
echo "bench_pipeline: mosquitto on $URL (pid $MOSQ_PID), tmp $TMP" >&2

# ---------------------------------------------------------------------------------------------
# The services under test

SERVICE_PID=""
RUN=0

start_hub() { # qos
    local db="$TMP/hub-$RUN.db"
    # the previous hub left a retained "offline": clear it and wait for this one's "online"
    mosquitto_pub -h 127.0.0.1 -p "$PORT" -t hub/status -r -n
    # A fresh client id and no session after disconnect: otherwise the broker queues the QoS 1
    # telemetry of the relay runs for the stopped hub's session and hands it to the next hub,
    # whose twins then reach the final seq from stale messages.
    start "$TMP/hub-$RUN.log" "$HUB" --broker "$URL" --db "$db" --log-level warn \
        --set broker.client_id="twinhub-bench-$RUN" --set broker.session_expiry=0 \
        --set publish.qos="$1" "${HUB_SETS[@]}"
    SERVICE_PID=$LAST_PID
    local i out
    for ((i = 0; i < 40; i++)); do
        kill -0 "$SERVICE_PID" 2>/dev/null || break
        out=$(mosquitto_sub -h 127.0.0.1 -p "$PORT" -t hub/status -C 1 -W 1 2>/dev/null | tr -d '\0')
        case "$out" in *online*) return 0 ;; esac
    done
    echo "bench_pipeline: twinhub did not come up:" >&2
    tail -n 20 "$TMP/hub-$RUN.log" >&2
    return 1
}

start_relay() { # qos
    rm -f "$TMP/relay.ready"
    start "$TMP/relay-$RUN.log" "$RELAY" --broker "$URL" --qos "$1" --ready-file "$TMP/relay.ready"
    SERVICE_PID=$LAST_PID
    wait_file "$TMP/relay.ready" "$SERVICE_PID" 15 && return 0
    echo "bench_pipeline: bench_relay did not come up:" >&2
    tail -n 20 "$TMP/relay-$RUN.log" >&2
    return 1
}

stop_service() {
    [ -n "$SERVICE_PID" ] || return 0
    stop_pid "$SERVICE_PID" 15
    forget "$SERVICE_PID"
    SERVICE_PID=""
}

# One run: kind (hub|relay), qos, per-device count, per-device rate (0 = flat out).
# Sets R_LINE (bench_sub's line), R_START (ms), R_SIM (twinsim's line), R_OK (0/1).
one_run() {
    local kind=$1 qos=$2 count=$3 rate=$4 topic mode
    RUN=$((RUN + 1))
    R_OK=0 R_LINE="" R_SIM=""
    if [ "$kind" = hub ]; then
        topic='twins/+/state' mode=state
        start_hub "$qos" || { stop_service; return 1; }
    else
        topic='relay/+/telemetry' mode=telemetry
        start_relay "$qos" || { stop_service; return 1; }
    fi
    rm -f "$TMP/sub.ready"
    start "$TMP/sub-$RUN.out" "$SUB" --broker "$URL" --topic "$topic" --mode "$mode" \
        --devices "$DEVICES" --final-seq "$count" --qos "$qos" --timeout "$TIMEOUT" \
        --ready-file "$TMP/sub.ready"
    local sub_pid=$LAST_PID
    if ! wait_file "$TMP/sub.ready" "$sub_pid" 15; then
        echo "bench_pipeline: bench_sub did not come up:" >&2
        cat "$TMP/sub-$RUN.out" >&2
        stop_pid "$sub_pid"; forget "$sub_pid"; stop_service
        return 1
    fi
    R_START=$(now_ms)
    start "$TMP/sim-$RUN.out" "$SIM" --broker "$URL" --devices "$DEVICES" --count "$count" \
        --rate "$rate" --qos "$qos" --quiet ${SIM_INFLIGHT:+--max-inflight "$SIM_INFLIGHT"} \
        ${SIM_CONNECTIONS:+--connections "$SIM_CONNECTIONS"}
    local sim_pid=$LAST_PID
    wait "$sub_pid"
    local sub_rc=$?
    forget "$sub_pid"
    wait "$sim_pid"
    local sim_rc=$?
    forget "$sim_pid"
    local alive=1
    kill -0 "$SERVICE_PID" 2>/dev/null || alive=0
    stop_service
    R_LINE=$(grep '^bench_sub: received=' "$TMP/sub-$RUN.out" | tail -n1)
    R_SIM=$(grep '^twinsim: devices=' "$TMP/sim-$RUN.out" | tail -n1)
    echo "  $kind qos=$qos count=$count rate=$rate: $R_SIM" >&2
    echo "  $kind qos=$qos: $R_LINE" >&2
    if [ "$alive" = 0 ]; then
        echo "bench_pipeline: $kind died during the run" >&2
        return 1
    fi
    if [ "$sim_rc" != 0 ]; then
        echo "bench_pipeline: twinsim exited $sim_rc:" >&2
        cat "$TMP/sim-$RUN.out" >&2
        return 1
    fi
    if [ "$sub_rc" != 0 ]; then
        echo "bench_pipeline: bench_sub exited $sub_rc (not every device reached seq $count)" >&2
        return 1
    fi
    R_OK=1
    return 0
}

# ---------------------------------------------------------------------------------------------
# The runs

PER=$(((MESSAGES + DEVICES - 1) / DEVICES))
TOTAL=$((PER * DEVICES))
LAT_HZ=$(python3 -c "print('%g' % ($LAT_RATE / $DEVICES))")
LAT_COUNT=$(python3 -c "print(max(1, round($LAT_RATE / $DEVICES * $LAT_SECONDS)))")
KINDS="relay"
[ "$USE_HUB" = yes ] && KINDS="relay hub"
STATUS=0
declare -A TPUT LAT

for q in $QOS_LIST; do
    for kind in $KINDS; do
        echo "bench_pipeline: $kind qos $q throughput: $TOTAL messages from $DEVICES devices" >&2
        if one_run "$kind" "$q" "$PER" 0; then
            done_ms=$(field "$R_LINE" done_unix_ms)
            TPUT[$kind,$q]=$(python3 -c "print('%.0f' % ($TOTAL * 1000.0 / max(1, $done_ms - $R_START)))")
        else
            TPUT[$kind,$q]="failed"
            STATUS=1
        fi
        echo "bench_pipeline: $kind qos $q latency: $LAT_RATE msg/s for ${LAT_SECONDS}s" >&2
        if one_run "$kind" "$q" "$LAT_COUNT" "$LAT_HZ"; then
            LAT[$kind,$q]="$(field "$R_LINE" p50_ms) $(field "$R_LINE" p90_ms) $(field "$R_LINE" p99_ms) $(field "$R_LINE" max_ms)"
        else
            LAT[$kind,$q]="failed - - -"
            STATUS=1
        fi
    done
done

# ---------------------------------------------------------------------------------------------
# The figures

echo
echo "twinhub pipeline benchmark ($(nproc) CPUs, mosquitto $("$MOSQUITTO" -h 2>/dev/null | sed -n 's/^mosquitto version \([^ ]*\).*/\1/p'))"
echo "throughput: $TOTAL messages from $DEVICES devices, twinsim --rate 0"
echo "latency: $LAT_RATE msg/s in total ($LAT_HZ Hz per device) for ${LAT_SECONDS}s; ms from the device's ts"
printf '%-16s %4s %12s   %9s %9s %9s %9s\n' pipeline qos 'tput msg/s' p50_ms p90_ms p99_ms max_ms
for q in $QOS_LIST; do
    for kind in $KINDS; do
        read -r p50 p90 p99 pmax <<<"${LAT[$kind,$q]}"
        printf '%-16s %4s %12s   %9s %9s %9s %9s\n' "$kind" "$q" "${TPUT[$kind,$q]}" \
            "$p50" "$p90" "$p99" "$pmax"
    done
    if [ "$USE_HUB" = yes ]; then
        ratio=$(python3 -c "
try: print('%.2f' % (float('${TPUT[hub,$q]}') / float('${TPUT[relay,$q]}')))
except Exception: print('-')")
        printf '%-16s %4s %12s\n' "hub/relay" "$q" "$ratio"
    fi
done
[ "$USE_HUB" = yes ] || echo "(hub not measured)"
exit $STATUS

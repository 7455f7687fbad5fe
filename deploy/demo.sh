#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts a private mosquitto on a free loopback
# port, twinhub with deploy/twinhub.yaml, and twinsim with 50 simulated ECG monitors, then
# shows the fleet's twins changing live until Ctrl-C (or --seconds N). Everything it started
# is stopped on exit.
#   ./deploy/demo.sh [--seconds N] [--devices N] [--rate HZ]
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
seconds=0 devices=50 rate=2
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

. deploy/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}"

echo "building..."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTWINHUB_TESTS=OFF >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

run=$top/deploy/run
mkdir -p "$run"
rm -rf "$run/twinhub.db"
port=$(free_port)
pids=()
cleanup() {
    trap - EXIT INT TERM
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    echo
    echo "stopped. database: $run/twinhub.db   logs: $run/{mosquitto,twinhub,twinsim}.log"
    echo "look around: build/hub/twinctl --db $run/twinhub.db get ecg-0001 | list --table | stats"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

cat >"$run/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
log_dest stderr
CONF
/usr/sbin/mosquitto -c "$run/mosquitto.conf" >"$run/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

build/hub/twinhub -c deploy/twinhub.yaml --broker "tcp://127.0.0.1:$port" \
    --db "$run/twinhub.db" >"$run/twinhub.log" 2>&1 &
pids+=($!)
build/hub/twinsim --broker "tcp://127.0.0.1:$port" --devices "$devices" --rate "$rate" \
    >"$run/twinsim.log" 2>&1 &
pids+=($!)

echo "mosquitto on 127.0.0.1:$port, twinhub and twinsim ($devices devices) running"
build/hub/twinctl --db "$run/twinhub.db" top --wait 10s --seconds "$seconds" \
    --fields reported.heart_rate=HR,reported.spo2=SpO2,reported.temperature=Temp

#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts a private mosquitto on a free loopback
# port, twinhub with deploy/twinhub.yaml and the alarm rules of deploy/rules/ecg.yaml, and
# twinsim with 50 simulated ECG monitors, then prints the dashboard's URL (open it in a browser)
# and shows the fleet's twins and the alarms firing and resolving live in the terminal too until
# Ctrl-C (or --seconds N). Everything it started
# is stopped on exit. With --tls, all of it runs over mutual TLS with a fresh development PKI
# (certs/make-pki.sh into deploy/run/pki) and the ACLs of deploy/mosquitto.acl.
#   ./deploy/demo.sh [--tls] [--seconds N] [--devices N] [--rate HZ] [--nurses N]
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
seconds=0 devices=50 rate=2 tls=0 nurses=5 episodes=1.5
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --nurses) nurses=$2; shift 2 ;;
    --tls) tls=1; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

. deploy/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}"
web/setup.sh

echo "building..."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTWINHUB_TESTS=OFF >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

run=$top/deploy/run
mkdir -p "$run"
# a fresh store, so a fresh broker state too: the old one queued telemetry for the old store
rm -rf "$run/twinhub.db" "$run/mosquitto-data"
port=$(free_port)
pids=()
cleanup() {
    trap - EXIT INT TERM
    # the hub's counters before it stops (for the dispatch figures below)
    /usr/bin/python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' \
        "http://127.0.0.1:${http_port:-0}/metrics" >"$run/metrics.txt" 2>/dev/null || true
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    echo
    echo "stopped. database: $run/twinhub.db   logs: $run/{mosquitto,twinhub,twinsim,operator}.log"
    # the hub logs every rule transition: msg="rule" rule=NAME id=ID state=firing|resolved|...
    local fired resolved
    fired=$(grep -c 'msg="rule".* state=firing' "$run/twinhub.log" 2>/dev/null || true)
    resolved=$(grep -c 'msg="rule".* state=resolved' "$run/twinhub.log" 2>/dev/null || true)
    echo "alarms (deploy/rules/ecg.yaml): ${fired:-0} fired, ${resolved:-0} resolved; by rule:"
    grep -o 'msg="rule" rule=[^ ]* id=[^ ]* state=firing' "$run/twinhub.log" 2>/dev/null |
        awk '{print $2}' | sort | uniq -c | sed 's/rule=/  /' || true
    # each forecast is scored against the heart rate a minute later (target: and horizon:), and
    # so is the naive forecast "the same as now" (hr_naive), made beside it every time
    # every tachycardia alarm gets a nurse (dispatch:): how long it waited, and what the
    # optimal plan cost against sending the nearest free nurse to the oldest alarm
    /usr/bin/python3 -c '
import sys
m = {}
for line in sys.stdin:
    if line.startswith("twinhub_dispatch_") and " " in line:
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
n, w = m.get("twinhub_dispatch_wait_seconds_count", 0), m.get("twinhub_dispatch_wait_seconds_sum", 0)
print("dispatch: %d alarms opened, %d assigned (mean wait %.1f s), %d done by the nurse, %d ended "
      "before she was done" % (m.get("twinhub_dispatch_opened_total", 0), n, w / n if n else 0,
      m.get("twinhub_dispatch_completed_total", 0), m.get("twinhub_dispatch_released_total", 0)))
c, g = m.get("twinhub_dispatch_cost_total", 0), m.get("twinhub_dispatch_greedy_cost_total", 0)
if m.get("twinhub_dispatch_compared_decisions_total", 0):
    print("  total cost %.0f against %.0f for the nearest free nurse to the oldest alarm, over the "
          "same %d decisions" % (c, g, m["twinhub_dispatch_compared_decisions_total"]))' \
        <"$run/metrics.txt" 2>/dev/null || true
    echo "the forecast's error, over every monitor (twinctl stats):"
    build/ctl/twinctl --db "$run/twinhub.db" stats --table 2>/dev/null | grep '^model' |
        sed 's/^model */  /' || true
    build/ctl/twinctl --db "$run/twinhub.db" stats 2>/dev/null | /usr/bin/python3 -c '
import json, sys
m = json.load(sys.stdin).get("models", {})
f, n = m.get("hr_forecast", {}), m.get("hr_naive", {})
if "mae" in f and "mae" in n:
    print("  MAE over the same %d forecasts: hr_forecast %.1f bpm, naive (the rate stays as it "
          "is) %.1f bpm" % (f["scored"], f["mae"], n["mae"]))
else:
    print("  no forecast scored yet (each waits a minute for its heart rate)")' 2>/dev/null || true
    [ $tls -eq 0 ] || echo "certificates: $run/pki   broker configuration: $run/mosquitto.conf"
    echo "look around: build/ctl/twinctl --db $run/twinhub.db get ecg-0001 | list --table | stats"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [ $tls -eq 1 ]; then
    # A fresh PKI every run: the CA, the broker's and the hub's certificates, one per device.
    echo "making a development PKI in $run/pki..."
    certs/make-pki.sh "$run/pki" --devices "$devices" --force >/dev/null
    deploy/mosquitto-conf.sh --pki "$run/pki" --port "$port" --data "$run/mosquitto-data" \
        --out "$run/mosquitto.conf"
    url="ssl://localhost:$port" # the host name the server certificate is checked against
    hub_tls=(--set "broker.tls.ca=$run/pki/ca.pem" --set "broker.tls.cert=$run/pki/hub.pem"
             --set "broker.tls.key=$run/pki/hub.key")
    sim_tls=(--ca "$run/pki/ca.pem" --cert-dir "$run/pki/devices")
    ctl_tls=(--ca "$run/pki/ca.pem" --cert "$run/pki/service.pem" --key "$run/pki/service.key")
else
    # the queue and persistence of the shipped configuration (deploy/mosquitto-durable.conf)
    mkdir -p "$run/mosquitto-data"
    [ "$(id -u)" -ne 0 ] || chown mosquitto "$run/mosquitto-data"
    { cat <<CONF
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
log_dest stderr
persistence_location $run/mosquitto-data/
CONF
      cat deploy/mosquitto-durable.conf; } >"$run/mosquitto.conf"
    url="tcp://127.0.0.1:$port"
    hub_tls=() sim_tls=() ctl_tls=()
fi
/usr/sbin/mosquitto -c "$run/mosquitto.conf" >"$run/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    if [ $tls -eq 1 ]; then
        # a bare TCP probe would log an OpenSSL error on the TLS listener
        grep -q ' running$' "$run/mosquitto.log" && break
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    fi
    sleep 0.1
done

# The dashboard on a free loopback port; its writes (desired state, commands) need this token.
http_port=$(free_port)
[ -s "$run/http.write-token" ] ||
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run/http.write-token")
build/hub/twinhub -c deploy/twinhub.yaml --broker "$url" "${hub_tls[@]}" \
    --db "$run/twinhub.db" --rules deploy/rules/ecg.yaml \
    --set http.listen="127.0.0.1:$http_port" --set http.dashboard="$top/build/web" \
    --set http.write_token_file="$run/http.write-token" >"$run/twinhub.log" 2>&1 &
pids+=($!)
# Three monitors replay a real ECG (MIT-BIH record 208, from python3-scipy; converted here,
# not kept in the repository); their heart rate is what twinsim's R-peak detector finds in it.
/usr/bin/python3 sim/ecg_record.py "$run/mitbih-208.ecg" >/dev/null
# The ward: the monitors' beds in two rows along a corridor, and $nurses nurses that the hub
# dispatches to every tachycardia alarm (deploy/rules/ecg.yaml, dispatch:); an episode lasts
# until a nurse treats it (or 2 to 5 minutes), about $episodes per monitor and hour. Over TLS the
# nurses would need certificates of their own: the demo runs them only without --tls.
ward=()
[ $tls -eq 1 ] || ward=(--nurses "$nurses" --episodes-per-hour "$episodes")
build/sim/twinsim --broker "$url" "${sim_tls[@]}" --devices "$devices" --rate "$rate" \
    "${ward[@]}" --ecg-record "$run/mitbih-208.ecg" --ecg-record-devices 3 \
    >"$run/twinsim.log" 2>&1 &
pids+=($!)

# An operator at work: every few seconds one monitor is told to go offline for 5 s and, while
# it is away, gets a new sampling rate; it catches up (delta and commands) when it is back.
operator() {
    local ctl=(build/ctl/twinctl --broker "$url" "${ctl_tls[@]}" --timeout 5s) id hz
    sleep 3
    while :; do
        id=$(printf 'ecg-%04d' $((RANDOM % devices + 1)))
        hz=$((RANDOM % 4 + 1))
        "${ctl[@]}" send "$id" go_offline '{"seconds": 5}'
        sleep 0.5
        "${ctl[@]}" set-desired "$id" "{\"sample_hz\": $hz}"
        sleep 4
    done
}
operator >"$run/operator.log" 2>&1 &
pids+=($!)

if [ $tls -eq 1 ]; then
    echo "mosquitto on 127.0.0.1:$port, mutual TLS only: every client shows a certificate of the"
    echo "development CA, its CN is its identity, deploy/mosquitto.acl limits each device to its"
    echo "own topics; twinhub (CN twinhub) and twinsim ($devices devices, one certificate each)"
    echo "running over mutual TLS"
else
    echo "mosquitto on 127.0.0.1:$port, twinhub and twinsim ($devices devices) running"
fi
echo
echo "dashboard: http://127.0.0.1:$http_port/   (writes from the page: the token in"
echo "           $run/http.write-token)"
echo
build/ctl/twinctl --db "$run/twinhub.db" top --wait 10s --seconds "$seconds" \
    --fields reported.heart_rate=HR,predicted.hr_forecast.value=HR+1m,predicted.hr_forecast.mae=MAE,predicted.hr_naive.mae=MAE0,reported.spo2=SpO2,reported.temperature=Temp,reported.sample_hz=Hz,connected=Online

#!/usr/bin/env bash
# test_pki.sh: certs/make-pki.sh (files, identities, expiry, revocation, idempotence) and
# deploy/mosquitto-conf.sh against a real mosquitto: each kind of certificate is accepted or
# refused at the TLS handshake as it should be, and the bridge (through twinsim, i.e. Paho)
# connects with per-device certificates and verifies the broker's CA and host name. The
# authorization matrix itself is tests/integration/. Everything runs in a scratch directory
# on 127.0.0.1 and is stopped and removed at the end.
#   test_pki.sh MOSQUITTO TWINSIM
set -uo pipefail

mosquitto=${1:?usage: test_pki.sh MOSQUITTO TWINSIM}
twinsim=${2:?usage: test_pki.sh MOSQUITTO TWINSIM}
top=$(cd "$(dirname "$0")/../../.." && pwd)
make_pki=$top/certs/make-pki.sh
render=$top/deploy/mosquitto-conf.sh

tmp=$(mktemp -d /tmp/test_pki.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT

checks=0 failures=0
check() { # DESCRIPTION COMMAND...: the command must succeed
    local what=$1
    shift
    checks=$((checks + 1))
    if ! "$@" >"$tmp/cur" 2>&1; then
        failures=$((failures + 1))
        echo "FAIL: $what" >&2
        sed 's/^/    /' "$tmp/cur" | head -20 >&2
    fi
    mv -f "$tmp/cur" "$tmp/out" # what the next check may look at
}
refute() { # DESCRIPTION COMMAND...: the command must fail
    local what=$1
    shift
    checks=$((checks + 1))
    if "$@" >"$tmp/cur" 2>&1; then
        failures=$((failures + 1))
        echo "FAIL: $what (it succeeded)" >&2
        sed 's/^/    /' "$tmp/cur" | head -20 >&2
    fi
    mv -f "$tmp/cur" "$tmp/out"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# --- make-pki.sh -----------------------------------------------------------------------------

pki=$tmp/pki
check "make-pki.sh makes a PKI" "$make_pki" "$pki" --devices 3
for f in ca server hub service devices/ecg-0001 devices/ecg-0002 devices/ecg-0003 bad/expired \
    bad/revoked bad/foreign-ca bad/foreign; do
    check "$f.pem exists" test -s "$pki/$f.pem"
    check "$f.key is 0600" test "$(stat -c %a "$pki/$f.key" 2>/dev/null)" = 600
done
check "crl.pem exists" test -s "$pki/crl.pem"
check "no device 4" test ! -e "$pki/devices/ecg-0004.pem"

subject() { openssl x509 -in "$1" -noout -subject -nameopt RFC2253 | sed 's/^subject=//'; }
check "CA name" test "$(subject "$pki/ca.pem")" = "CN=twinhub development CA"
check "hub CN" test "$(subject "$pki/hub.pem")" = "CN=twinhub"
check "service CN" test "$(subject "$pki/service.pem")" = "CN=twinhub-service"
check "device CN" test "$(subject "$pki/devices/ecg-0003.pem")" = "CN=ecg-0003"
check "server SAN" bash -c "openssl x509 -in '$pki/server.pem' -noout -ext subjectAltName |
    grep -q 'DNS:localhost, IP Address:127.0.0.1'"
vfy() { openssl verify -CAfile "$pki/ca.pem" -crl_check -CRLfile "$pki/crl.pem" "$@"; }
check "good certificates verify with the CRL" vfy "$pki/server.pem" "$pki/hub.pem" \
    "$pki/service.pem" "$pki/devices/ecg-0001.pem"
refute "expired does not verify" vfy "$pki/bad/expired.pem"
check "expired is expired" bash -c "openssl verify -CAfile '$pki/ca.pem' \
    '$pki/bad/expired.pem' 2>&1 | grep -q 'certificate has expired'"
check "revoked is revoked" bash -c "openssl verify -CAfile '$pki/ca.pem' -crl_check \
    -CRLfile '$pki/crl.pem' '$pki/bad/revoked.pem' 2>&1 | grep -q 'certificate revoked'"
refute "foreign does not verify" vfy "$pki/bad/foreign.pem"
check "foreign verifies against its own CA" openssl verify -CAfile "$pki/bad/foreign-ca.pem" \
    "$pki/bad/foreign.pem"

sums() { (cd "$pki" && find . -type f | sort | xargs sha256sum); }
sums >"$tmp/sums1"
check "a second run keeps everything" bash -c "'$make_pki' '$pki' --devices 3 |
    grep -q 'made: nothing;'"
sums >"$tmp/sums2"
check "a second run changes no byte" cmp "$tmp/sums1" "$tmp/sums2"
rm -f "$pki/devices/ecg-0002.key"
check "a lost key remakes that pair only" bash -c "'$make_pki' '$pki' --devices 3 |
    grep -q 'made: 1 device;'"
sums >"$tmp/sums3"
check "only ecg-0002 changed" bash -c "diff '$tmp/sums1' '$tmp/sums3' | grep '^[<>]' |
    grep -v 'devices/ecg-0002\.' | wc -l | grep -qx 0"
check "--force remakes the CA" bash -c "'$make_pki' '$pki' --devices 3 --force |
    grep -q 'made: ca, '"
refute "--devices 0 is refused" "$make_pki" "$tmp/x" --devices 0
refute "no OUTDIR is refused" "$make_pki" --devices 2

# --- mosquitto-conf.sh and a real broker -------------------------------------------------------

port=$(free_port)
admin=$(free_port)
conf=$tmp/mosquitto.conf
check "render with an admin listener" "$render" --pki "$pki" --port "$port" --admin-port "$admin" \
    --out "$conf"
check "no placeholder left" bash -c "! grep -v '^#' '$conf' | grep -q '@[A-Z]*@'"
for line in "listener $port 127.0.0.1" "cafile $pki/ca.pem" "crlfile $pki/crl.pem" \
    "require_certificate true" "use_identity_as_username true" \
    "use_username_as_clientid true" "acl_file $top/deploy/mosquitto.acl" \
    "per_listener_settings true" "listener $admin 127.0.0.1"; do
    check "config has '$line'" grep -qxF "$line" "$conf"
done
check "render without an admin listener" "$render" --pki "$pki" --port "$port" \
    --out "$tmp/plain.conf"
check "no anonymous access without --admin-port" \
    bash -c "! grep -q '^allow_anonymous true' '$tmp/plain.conf'"
refute "render refuses a PKI without server.key" "$render" --pki "$tmp" --port "$port" \
    --out "$tmp/x"

start_broker() { # CONF LOG
    "$mosquitto" -c "$1" >"$2" 2>&1 &
    pids+=("$!")
    for _ in $(seq 50); do
        grep -q ' running$' "$2" && return 0
        sleep 0.1
    done
    cat "$2" >&2
    return 1
}
check "mosquitto starts with the rendered config" start_broker "$conf" "$tmp/mosquitto.log"

# mosquitto_pub with WHO's certificate (a path without .pem) publishing to TOPIC
pub() {
    timeout 10 mosquitto_pub -h localhost -p "$port" --cafile "$pki/ca.pem" --cert "$1.pem" \
        --key "$1.key" -q 1 -t "$2" -m "from $1"
}
# The admin listener (plaintext, no ACL) sees what got through: start it, publish, stop it.
mosquitto_sub -h 127.0.0.1 -p "$admin" -t 'devices/#' -v >"$tmp/admin.out" 2>&1 &
admin_pid=$!
pids+=("$admin_pid")
sleep 0.3
check "a device publishes its own telemetry" pub "$pki/devices/ecg-0001" devices/ecg-0001/telemetry
check "a device publishing another's telemetry is acknowledged (MQTT 3.1.1)" \
    pub "$pki/devices/ecg-0001" devices/ecg-0003/telemetry
refute "no client certificate: refused" timeout 10 mosquitto_pub -h localhost -p "$port" \
    --cafile "$pki/ca.pem" -q 1 -t devices/ecg-0001/telemetry -m x
refute "expired certificate: refused" pub "$pki/bad/expired" devices/ecg-0001/telemetry
refute "revoked certificate: refused" pub "$pki/bad/revoked" devices/ecg-0002/telemetry
refute "foreign CA: refused" pub "$pki/bad/foreign" devices/ecg-0001/telemetry
refute "plaintext on the TLS port: refused" timeout 10 mosquitto_pub -h 127.0.0.1 -p "$port" \
    -q 1 -t devices/ecg-0001/telemetry -m x
sleep 0.5
kill "$admin_pid" 2>/dev/null
wait "$admin_pid" 2>/dev/null
check "the admin listener saw the device's own telemetry" \
    grep -qxF "devices/ecg-0001/telemetry from $pki/devices/ecg-0001" "$tmp/admin.out"
check "and nothing on another device's topic" \
    bash -c "! grep -q '^devices/ecg-0003/' '$tmp/admin.out'"
check "the broker says why it refused" grep -q "certificate verify failed" "$tmp/mosquitto.log"

# --- the bridge through twinsim ---------------------------------------------------------------

# twinsim keeps retrying a connection that fails for 30 s: a refusal is seen well before 5 s.
sim() { timeout 8 "$twinsim" --devices 3 --count 2 --rate 10 "$@"; }
sim_refused() { timeout 5 "$twinsim" --devices 1 --count 1 "$@"; }
check "twinsim, a certificate per device" sim --broker "ssl://localhost:$port" \
    --ca "$pki/ca.pem" --cert-dir "$pki/devices"
check "every message acknowledged" grep -q "acked=6 failed=0" "$tmp/out"
check "twinsim over the IP address in the SAN" sim --broker "ssl://127.0.0.1:$port" \
    --ca "$pki/ca.pem" --cert-dir "$pki/devices"
refute "twinsim with the wrong CA" sim_refused --broker "ssl://localhost:$port" \
    --ca "$pki/bad/foreign-ca.pem" --cert-dir "$pki/devices"
check "it did not connect" bash -c "! grep -q 'msg=\"connected\"' '$tmp/out'"
refute "twinsim: --cert-dir with fewer connections than devices is a usage error" \
    "$twinsim" --devices 3 --connections 2 --cert-dir "$pki/devices"

# A broker whose certificate, from the right CA, is for another host name.
wrong=$tmp/wrong
mkdir -p "$wrong"
cp "$pki/ca.pem" "$pki/crl.pem" "$wrong/"
check "a server certificate for another name" openssl req -new -newkey ec \
    -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$wrong/server.key" \
    -subj "/CN=wrong.example" -addext "subjectAltName=DNS:wrong.example" \
    -addext "extendedKeyUsage=serverAuth" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -days 2 \
    -out "$wrong/server.pem"
port2=$(free_port)
check "render it" "$render" --pki "$wrong" --port "$port2" --out "$tmp/wrong.conf"
check "start it" start_broker "$tmp/wrong.conf" "$tmp/wrong.log"
refute "twinsim refuses a server certificate for another host name" sim_refused \
    --broker "ssl://localhost:$port2" --ca "$pki/ca.pem" --cert-dir "$pki/devices"
check "it did not connect" bash -c "! grep -q 'msg=\"connected\"' '$tmp/out'"
check "with broker.tls.verify false it connects (and says so)" \
    env TWINHUB_BROKER_TLS_VERIFY=false timeout 8 "$twinsim" --devices 1 --count 1 \
    --broker "ssl://localhost:$port2" --ca "$pki/ca.pem" --cert-dir "$pki/devices"
check "the warning" grep -q "NOT verified" "$tmp/out"

echo "test_pki: $checks checks, $failures failed"
[ "$failures" -eq 0 ]

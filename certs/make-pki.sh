#!/usr/bin/env bash
# make-pki.sh: makes a development PKI for twinhub with openssl (Debian's): a root CA, the
# broker's server certificate, the hub's and the services' client certificates, one client
# certificate per device (CN = device id), and the bad certificates the tests need (expired,
# revoked + CRL, signed by a foreign CA). Development and tests only: certs/README.md says what
# a production PKI looks like instead.
#
#   certs/make-pki.sh OUTDIR [--devices N] [--prefix P] [--force]
#
#   OUTDIR/ca.pem, ca.key              root CA "twinhub development CA" (10 years)
#   OUTDIR/server.pem, server.key      the broker: CN localhost, SAN DNS:localhost, IP:127.0.0.1
#   OUTDIR/hub.pem, hub.key            CN twinhub           (the hub's identity)
#   OUTDIR/service.pem, service.key    CN twinhub-service   (services and operators)
#   OUTDIR/devices/<id>.pem, <id>.key  CN <id>, ids P0001..PN (default ecg-0001..ecg-0050)
#   OUTDIR/bad/expired.pem, .key       CN ecg-0001, signed by the CA, expired yesterday
#   OUTDIR/bad/revoked.pem, .key       CN ecg-0002, signed by the CA, listed in crl.pem
#   OUTDIR/bad/foreign-ca.pem, .key    another CA ("twinhub foreign CA")
#   OUTDIR/bad/foreign.pem, .key       CN ecg-0001, signed by the foreign CA
#   OUTDIR/crl.pem                     the CA's CRL (lists bad/revoked.pem), valid 30 days
#
# Leaf certificates are valid 365 days. Keys are EC P-256, mode 0600, in directories of mode
# 0700. No prompts. Idempotent: a file that is still good (present, key matches, verifies
# against the CA, more than 30 days left; the CRL: more than 7 days left) is kept, anything
# else is made again, and a new CA remakes everything under it. --force remakes everything.
# Devices beyond N from an earlier run are left alone. Concurrent runs into one OUTDIR wait
# for each other (flock on OUTDIR/.lock). Exit status 0, 1 on failure, 2 on a usage error.
set -euo pipefail

usage() { echo "usage: certs/make-pki.sh OUTDIR [--devices N] [--prefix P] [--force]"; }

out="" devices=50 prefix="ecg-" force=0
while [ $# -gt 0 ]; do
    case "$1" in
    --devices)
        [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 99999 ] || {
            echo "make-pki.sh: --devices: expected 1..99999" >&2; exit 2; }
        devices=$((10#$2)); shift 2 ;;
    --prefix)
        [ $# -ge 2 ] && [[ "$2" =~ ^[A-Za-z0-9_:-][A-Za-z0-9._:-]*$ ]] && [ ${#2} -le 100 ] || {
            echo "make-pki.sh: --prefix: expected 1..100 bytes of [A-Za-z0-9._:-], not starting" \
                 "with '.'" >&2; exit 2; }
        prefix=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "make-pki.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *)
        [ -z "$out" ] || { echo "make-pki.sh: more than one OUTDIR" >&2; exit 2; }
        out=$1; shift ;;
    esac
done
[ -n "$out" ] || { usage >&2; exit 2; }
command -v openssl >/dev/null ||
    { echo "make-pki.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }

umask 077
mkdir -p "$out/devices" "$out/bad"
chmod 700 "$out" "$out/devices" "$out/bad"
out=$(cd "$out" && pwd)
# Runs into the same OUTDIR (parallel tests) take turns.
exec 9>"$out/.lock"
flock 9
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

CA_DAYS=3650 LEAF_DAYS=365 CRL_DAYS=30
RENEW_S=$((30 * 86400)) CRL_RENEW_S=$((7 * 86400))

# One configuration for every openssl command below: no dependency on /etc/ssl/openssl.cnf.
cat >"$tmp/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[crl_ext]
authorityKeyIdentifier = keyid
# "openssl ca" is used only for what "req -x509" cannot do: chosen validity dates (the
# expired certificate) and the CRL. Its database is a scratch copy: the one revoked
# certificate is the only state, and it is re-read from bad/revoked.pem.
[ca]
default_ca = dev
[dev]
dir = $ENV::PKI_TMP
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $ENV::PKI_CA_CERT
private_key = $ENV::PKI_CA_KEY
default_md = sha256
policy = any
unique_subject = no
email_in_dn = no
copy_extensions = none
[any]
commonName = supplied
CNF
export PKI_TMP=$tmp OPENSSL_CONF=$tmp/openssl.cnf PKI_CA_CERT=$out/ca.pem PKI_CA_KEY=$out/ca.key
cnf=$tmp/openssl.cnf

made=() kept=()

# --- checks ----------------------------------------------------------------------------------

key_matches() { # CERT KEY: the key is the certificate's
    [ -s "$1" ] && [ -s "$2" ] || return 1
    local a b
    a=$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null) || return 1
    b=$(openssl pkey -in "$2" -pubout 2>/dev/null) || return 1
    [ -n "$a" ] && [ "$a" = "$b" ]
}

cn_is() { # CERT CN
    local s
    s=$(openssl x509 -in "$1" -noout -subject -nameopt multiline 2>/dev/null) || return 1
    [ "$(sed -n 's/^ *commonName *= //p' <<<"$s")" = "$2" ]
}

# CERT CA CN: a usable leaf: key matches, verifies against CA, CN as expected, and more
# than RENEW_S seconds to go. Three openssl runs, as a rerun over many devices adds up.
leaf_good() {
    local key=${1%.pem}.key info pub
    [ -s "$1" ] && [ -s "$key" ] || return 1
    info=$(openssl x509 -in "$1" -noout -checkend "$RENEW_S" -subject -nameopt multiline \
        -pubkey 2>/dev/null) || return 1
    [ "$(sed -n 's/^ *commonName *= //p' <<<"$info")" = "$3" ] || return 1
    pub=$(openssl pkey -in "$key" -pubout 2>/dev/null) || return 1
    [ "$(sed -n '/-BEGIN PUBLIC KEY-/,/-END PUBLIC KEY-/p' <<<"$info")" = "$pub" ] || return 1
    openssl verify -CAfile "$2" "$1" >/dev/null 2>&1
}

# --- making ----------------------------------------------------------------------------------

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# Installs $tmp/new.{pem,key} as BASE.{pem,key}, the key first so that a certificate is never
# beside a key that is not its own for long (a crash in between is caught by key_matches).
install_pair() {
    chmod 600 "$tmp/new.key"
    chmod 644 "$tmp/new.pem"
    mv -f "$tmp/new.key" "$1.key"
    mv -f "$tmp/new.pem" "$1.pem"
}

# BASE CN DAYS EXT CA_BASE: a certificate for CN signed by CA_BASE.{pem,key}.
issue() {
    local base=$1 cn=$2 days=$3 ext=$4 ca=$5
    new_key "$tmp/new.key"
    openssl req -new -key "$tmp/new.key" -subj "/CN=$cn" -config "$cnf" \
        -CA "$ca.pem" -CAkey "$ca.key" -days "$days" -extensions "$ext" \
        -sha256 -out "$tmp/new.pem" 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    install_pair "$base"
}

# BASE CN: a self-signed root.
make_ca() {
    new_key "$tmp/new.key"
    openssl req -new -x509 -key "$tmp/new.key" -subj "/CN=$2" -config "$cnf" \
        -days "$CA_DAYS" -extensions ca_ext -sha256 -out "$tmp/new.pem" 2>"$tmp/err" ||
        { cat "$tmp/err" >&2; return 1; }
    install_pair "$1"
}

# Resets the scratch "openssl ca" database for the CA BASE.
ca_db() {
    export PKI_CA_CERT=$1.pem PKI_CA_KEY=$1.key
    rm -f "$tmp"/index.txt* "$tmp"/serial* "$tmp"/crlnumber*
    : >"$tmp/index.txt"
    openssl rand -hex 16 | tr a-f A-F >"$tmp/serial"
    # CRL numbers must increase from one CRL to the next: the time will do.
    printf '%016X\n' "$(date +%s)" >"$tmp/crlnumber"
}

# BASE CN: signed by the CA, valid from two days ago until yesterday.
make_expired() {
    ca_db "$out/ca"
    new_key "$tmp/new.key"
    openssl req -new -key "$tmp/new.key" -subj "/CN=$2" -config "$cnf" -out "$tmp/new.csr" \
        2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    openssl ca -batch -notext -config "$cnf" -in "$tmp/new.csr" -out "$tmp/new.pem" \
        -extensions client_ext -md sha256 \
        -startdate "$(date -u -d '-2 days' +%Y%m%d%H%M%SZ)" \
        -enddate "$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)" >/dev/null 2>"$tmp/err" ||
        { cat "$tmp/err" >&2; return 1; }
    install_pair "$1"
}

make_crl() {
    ca_db "$out/ca"
    openssl ca -batch -config "$cnf" -revoke "$out/bad/revoked.pem" -crl_reason keyCompromise \
        >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    openssl ca -batch -config "$cnf" -gencrl -crldays "$CRL_DAYS" -crlexts crl_ext -md sha256 \
        -out "$tmp/crl.pem" 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    chmod 644 "$tmp/crl.pem"
    mv -f "$tmp/crl.pem" "$out/crl.pem"
}

# The CRL is good when the CA signed it, it lists bad/revoked.pem, and it has more than
# CRL_RENEW_S seconds to go.
crl_good() {
    local f=$out/crl.pem next serial
    [ -s "$f" ] || return 1
    openssl crl -in "$f" -noout -CAfile "$out/ca.pem" >/dev/null 2>&1 || return 1
    next=$(openssl crl -in "$f" -noout -nextupdate 2>/dev/null | sed 's/^nextUpdate=//') || return 1
    next=$(date -u -d "$next" +%s 2>/dev/null) || return 1
    [ "$next" -gt $(($(date +%s) + CRL_RENEW_S)) ] || return 1
    serial=$(openssl x509 -in "$out/bad/revoked.pem" -noout -serial | sed 's/^serial=//')
    openssl crl -in "$f" -noout -text | grep -q "Serial Number: $serial\$"
}

# NAME BASE CN EXT: keeps BASE if it is a good leaf of the CA, otherwise issues it.
leaf() {
    local name=$1 base=$2 cn=$3 ext=$4
    if [ $force -eq 0 ] && leaf_good "$base.pem" "$out/ca.pem" "$cn"; then
        kept+=("$name")
    else
        issue "$base" "$cn" "$LEAF_DAYS" "$ext" "$out/ca"
        made+=("$name")
    fi
}

# --- the PKI ---------------------------------------------------------------------------------

if [ $force -eq 0 ] && key_matches "$out/ca.pem" "$out/ca.key" &&
    openssl verify -CAfile "$out/ca.pem" "$out/ca.pem" >/dev/null 2>&1 &&
    openssl x509 -in "$out/ca.pem" -noout -checkend $((LEAF_DAYS * 86400)) >/dev/null 2>&1 &&
    cn_is "$out/ca.pem" "twinhub development CA"; then
    kept+=(ca)
else
    make_ca "$out/ca" "twinhub development CA"
    made+=(ca)
fi

leaf server "$out/server" localhost server_ext
leaf hub "$out/hub" twinhub client_ext
leaf service "$out/service" twinhub-service client_ext

ndev_made=0 ndev_kept=0
for ((i = 1; i <= devices; i++)); do
    id=$(printf '%s%04d' "$prefix" "$i")
    if [ $force -eq 0 ] && leaf_good "$out/devices/$id.pem" "$out/ca.pem" "$id"; then
        ndev_kept=$((ndev_kept + 1))
    else
        issue "$out/devices/$id" "$id" "$LEAF_DAYS" client_ext "$out/ca"
        ndev_made=$((ndev_made + 1))
    fi
done
plural() { [ "$1" -eq 1 ] && echo "1 device" || echo "$1 devices"; }
[ $ndev_made -eq 0 ] || made+=("$(plural $ndev_made)")
[ $ndev_kept -eq 0 ] || kept+=("$(plural $ndev_kept)")

# bad/expired: signed by our CA, dates in the past
f=$out/bad/expired
if [ $force -eq 0 ] && key_matches "$f.pem" "$f.key" && cn_is "$f.pem" ecg-0001 &&
    ! openssl x509 -in "$f.pem" -noout -checkend 0 >/dev/null 2>&1 &&
    openssl verify -CAfile "$out/ca.pem" -no_check_time "$f.pem" >/dev/null 2>&1; then
    kept+=(bad/expired)
else
    make_expired "$f" ecg-0001
    made+=(bad/expired)
fi

# bad/revoked: a good certificate of our CA, listed in the CRL
f=$out/bad/revoked
crl_remake=0
if [ $force -eq 0 ] && leaf_good "$f.pem" "$out/ca.pem" ecg-0002; then
    kept+=(bad/revoked)
else
    issue "$f" ecg-0002 "$LEAF_DAYS" client_ext "$out/ca"
    made+=(bad/revoked)
    crl_remake=1
fi
if [ $force -eq 0 ] && [ $crl_remake -eq 0 ] && crl_good; then
    kept+=(crl)
else
    make_crl
    made+=(crl)
fi

# bad/foreign: the right CN from the wrong CA
f=$out/bad/foreign-ca
if [ $force -eq 0 ] && key_matches "$f.pem" "$f.key" &&
    openssl verify -CAfile "$f.pem" "$f.pem" >/dev/null 2>&1 &&
    openssl x509 -in "$f.pem" -noout -checkend $((LEAF_DAYS * 86400)) >/dev/null 2>&1 &&
    cn_is "$f.pem" "twinhub foreign CA"; then
    kept+=(bad/foreign-ca)
else
    make_ca "$f" "twinhub foreign CA"
    made+=(bad/foreign-ca)
fi
f=$out/bad/foreign
if [ $force -eq 0 ] && leaf_good "$f.pem" "$out/bad/foreign-ca.pem" ecg-0001; then
    kept+=(bad/foreign)
else
    issue "$f" ecg-0001 "$LEAF_DAYS" client_ext "$out/bad/foreign-ca"
    made+=(bad/foreign)
fi

# A last check of what the tests rely on, whichever files were kept or made.
fail() { echo "make-pki.sh: $out: $*" >&2; exit 1; }
openssl verify -CAfile "$out/ca.pem" -crl_check -CRLfile "$out/crl.pem" \
    "$out/server.pem" "$out/hub.pem" "$out/service.pem" >/dev/null ||
    fail "server, hub or service certificate does not verify"
if openssl verify -CAfile "$out/ca.pem" -crl_check -CRLfile "$out/crl.pem" \
    "$out/bad/revoked.pem" >/dev/null 2>&1; then fail "bad/revoked.pem is not revoked"; fi
if openssl verify -CAfile "$out/ca.pem" "$out/bad/expired.pem" >/dev/null 2>&1; then
    fail "bad/expired.pem is not expired"; fi
if openssl verify -CAfile "$out/ca.pem" "$out/bad/foreign.pem" >/dev/null 2>&1; then
    fail "bad/foreign.pem verifies against the CA"; fi

join() { local IFS=,; echo "$*" | sed 's/,/, /g'; }
echo "make-pki.sh: $out: made: $(join "${made[@]:-nothing}"); kept: $(join "${kept[@]:-nothing}")"

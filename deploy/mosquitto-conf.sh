#!/usr/bin/env bash
# mosquitto-conf.sh: renders deploy/mosquitto.conf.in into a Mosquitto configuration: the
# mutual-TLS listener on 127.0.0.1:PORT with the certificates of a certs/make-pki.sh directory
# and deploy/mosquitto.acl, the persistence and queue limits of deploy/mosquitto-durable.conf
# with mosquitto.db in --data DIR (default: a directory mosquitto-data beside FILE, made if
# missing), and, with --admin-port, a plaintext listener on 127.0.0.1:A that takes anyone with
# full access (no ACL: development and tests only, never in production).
#
#   deploy/mosquitto-conf.sh --pki DIR --port P [--admin-port A] [--data DIR] --out FILE
#
# Paths in the output are absolute, so the broker may run from any directory. Exit status 0,
# 1 when the PKI directory lacks a file, 2 on a usage error.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() {
    echo "usage: deploy/mosquitto-conf.sh --pki DIR --port P [--admin-port A] [--data DIR] --out FILE"
}
port_ok() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }

pki="" port="" admin="" data="" outf=""
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || case "$1" in -h|--help) ;; *) usage >&2; exit 2 ;; esac
    case "$1" in
    --pki) pki=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --admin-port) admin=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --out) outf=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "mosquitto-conf.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$pki" ] && [ -n "$port" ] && [ -n "$outf" ] || { usage >&2; exit 2; }
port_ok "$port" || { echo "mosquitto-conf.sh: --port: expected 1..65535, got '$port'" >&2; exit 2; }
[ -z "$admin" ] || port_ok "$admin" ||
    { echo "mosquitto-conf.sh: --admin-port: expected 1..65535, got '$admin'" >&2; exit 2; }
[ "$admin" != "$port" ] ||
    { echo "mosquitto-conf.sh: --admin-port must differ from --port" >&2; exit 2; }

[ -d "$pki" ] || { echo "mosquitto-conf.sh: --pki: no directory '$pki'" >&2; exit 1; }
pki=$(cd "$pki" && pwd)
for f in ca.pem server.pem server.key crl.pem; do
    [ -f "$pki/$f" ] || {
        echo "mosquitto-conf.sh: $pki/$f is missing (make it with certs/make-pki.sh $pki)" >&2
        exit 1
    }
done
[ -n "$data" ] || data="$(dirname "$outf")/mosquitto-data"
mkdir -p "$data" || { echo "mosquitto-conf.sh: --data: cannot make '$data'" >&2; exit 1; }
data=$(cd "$data" && pwd)
# Mosquitto takes the rest of the line as the value, spaces included, but a path with a
# newline or an '@' would break the template.
case "$pki$here$data" in *$'\n'* | *@*)
    echo "mosquitto-conf.sh: paths with newlines or '@' are not supported" >&2; exit 1 ;;
esac

# Started as root, Mosquitto 2 becomes `user` (default: mosquitto) before it reads the
# certificates, and make-pki.sh makes keys readable by their owner only: the broker runs as
# the owner of the server key. Started as anyone else, it stays who it is and `user` is unused.
owner=$(stat -c %U "$pki/server.key")
case "$owner" in "" | *[!A-Za-z0-9._-]*)
    echo "mosquitto-conf.sh: cannot use '$owner', the owner of $pki/server.key," \
         "as the broker's user" >&2
    exit 1 ;;
esac

# The broker writes mosquitto.db as the user it runs as (see above).
[ "$(id -u)" -ne 0 ] || chown "$owner" "$data"

admin_lines=""
if [ -n "$admin" ]; then
    admin_lines="# --- development only: plaintext, localhost, anyone, no ACL (full access) ---
listener $admin 127.0.0.1
allow_anonymous true"
fi

tmp="$outf.tmp.$$"
trap 'rm -f "$tmp"' EXIT
awk -v pki="$pki" -v port="$port" -v user="$owner" -v acl="$here/mosquitto.acl" \
    -v admin="$admin_lines" -v data="$data" -v durable="$here/mosquitto-durable.conf" '
    function subst(s, key, val,    i, r) {
        r = ""
        while ((i = index(s, key)) > 0) {
            r = r substr(s, 1, i - 1) val
            s = substr(s, i + length(key))
        }
        return r s
    }
    /^@ADMIN@$/ { if (admin != "") print admin; next }
    /^@DURABLE@$/ {
        while ((getline line < durable) > 0) print line
        close(durable)
        next
    }
    /^[ \t]*#/ { print; next }    # comments describe the placeholders: left as they are
    {
        $0 = subst($0, "@PKI@", pki)
        $0 = subst($0, "@PORT@", port)
        $0 = subst($0, "@ACL@", acl)
        $0 = subst($0, "@USER@", user)
        $0 = subst($0, "@DATA@", data)
        print
    }' "$here/mosquitto.conf.in" >"$tmp"
if grep -n '^[^#]*@[A-Z]\+@' "$tmp" >&2; then
    echo "mosquitto-conf.sh: placeholders left in the output (above)" >&2
    exit 1
fi
mv -f "$tmp" "$outf"
trap - EXIT

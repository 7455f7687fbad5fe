# deps.sh: sourced by deploy/demo.sh and tests/run.sh. ensure_packages installs the Debian
# packages that are missing (apt-get, idempotent) and says nothing when all are there.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
        "${sudo[@]}" apt-get update -q >/dev/null
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# What building and running twinhub needs.
# (openssl: certs/make-pki.sh, for ./deploy/demo.sh --tls; python3-scipy: the demo's recorded
# ECG, sim/ecg_record.py)
BUILD_PACKAGES=(build-essential cmake pkg-config libpaho-mqtt-dev libmsgpack-dev liblmdb-dev
                libyaml-dev libmicrohttpd-dev libsystemd-dev libssl-dev mosquitto openssl)
# (help2man: the man pages; dpkg-dev: dpkg-shlibdeps, the Debian package's Depends)
BUILD_PACKAGES+=(help2man dpkg-dev python3-scipy)
# (libglpk-dev: GLPK, the linear programs of the dispatch solver, rules/assign.c)
BUILD_PACKAGES+=(libglpk-dev)
# What the tests need on top.
# (prometheus: promtool and a real server that scrapes the hub; systemd: systemd-analyze)
TEST_PACKAGES=(mosquitto-clients python3 python3-paho-mqtt python3-msgpack python3-sklearn
               prometheus systemd)
# (lintian: checks the Debian package, tests/integration/test_package.py; python3-lmdb: a
# second process holding the store's write lock, test_service.py stall)
TEST_PACKAGES+=(lintian python3-lmdb)
# (chromium, chromium-driver, python3-selenium: the dashboard's tests in a real headless browser,
# tests/integration/test_dashboard.py and tests/bench/plots/)
TEST_PACKAGES+=(chromium chromium-driver python3-selenium)
# (nodejs, npm: the dashboard's uPlot, web/setup.sh, and the AWS IoT Device SDKs that
# tests/integration/test_aws.py runs; Debian 12 has nodejs 18 and npm 9. A Node.js from
# elsewhere (NodeSource's bundles its npm, and its nodejs package conflicts with Debian's npm)
# is used as it is.)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    BUILD_PACKAGES+=(nodejs npm)
fi

# A free TCP port on 127.0.0.1 (Mosquitto 2 reads port 0 as a unix socket, so pick one).
free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

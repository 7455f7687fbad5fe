#!/usr/bin/python3
"""test_package: the Debian package (issue 11, part 5), built and installed for real.

One case, `deb`: builds the package from this source tree with CPack into a scratch build
directory (Release, no tests), runs lintian on it (any error or warning fails, except the tags
of deploy/package/lintian-overrides, each of which the README must explain), checks its control
data and contents with dpkg-deb, installs it on this machine with apt-get, runs the installed
daemon as user twinhub with the installed configuration against a test broker, then removes
and purges the package and checks what each leaves behind.

It changes the machine: run it as root on a machine where it may install and purge a package
(CI). It is skipped (exit 77) when not root, or when a twinhub package, user, group,
/etc/twinhub or /var/lib/twinhub already exists: those are someone else's, and a purge would
take them. Whatever happens, a package it installed is purged before it exits.
Two runs on one machine (two build directories' ctest) take turns: /run/lock/twinhub-test-package.lock.
Environment: TWINHUB_CMAKE (the cmake to build with; ctest passes its own), TWINHUB_IT_KEEP as
in harness.py (a kept build directory holds the .deb and the logs).
"""

import fcntl
import grp
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

from harness import (REPO, Broker, MqttClient, TestFailure, check, check_eq, get_retained,
                     pack, run_case, tail, unpack, wait_until)

SKIP = 77
PKG = "twinhub"
USER = "twinhub"
STATE = "/var/lib/twinhub"
CONF = "/etc/twinhub/twinhub.yaml"
RULES = "/etc/twinhub/rules.yaml"
UNIT = "/lib/systemd/system/twinhub.service"
WANTS = "/etc/systemd/system/multi-user.target.wants/twinhub.service"
OVERRIDES = os.path.join(REPO, "deploy", "package", "lintian-overrides")
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
CMAKE = os.environ.get("TWINHUB_CMAKE") or shutil.which("cmake") or "cmake"

BINARIES = ["/usr/bin/twinhub", "/usr/bin/twinctl", "/usr/bin/twinsim"]
FILES = BINARIES + [
    CONF, RULES, UNIT,
    "/usr/share/man/man1/twinhub.1.gz", "/usr/share/man/man1/twinctl.1.gz",
    "/usr/share/man/man1/twinsim.1.gz",
    "/usr/share/doc/twinhub/README.md", "/usr/share/doc/twinhub/copyright",
    "/usr/share/doc/twinhub/changelog.gz",
    "/usr/share/twinhub/mosquitto-durable.conf",
    "/usr/share/twinhub/examples/rules/ecg.yaml",
    "/usr/share/twinhub/examples/models/hr_forecast.twm",
    "/usr/share/twinhub/examples/models/hr_naive.twm",
    "/usr/share/twinhub/examples/models/train_hr_forecast.py",
    "/usr/share/twinhub/examples/models/README.md",
    "/usr/share/twinhub/models/export.py", "/usr/share/twinhub/models/FORMAT.md",
]
EXECUTABLES = BINARIES + ["/usr/share/twinhub/models/export.py",
                          "/usr/share/twinhub/examples/models/train_hr_forecast.py"]
CONFFILES = [CONF, RULES]
# Depends must name the runtime packages of every library we link (dpkg-shlibdeps finds them;
# prefixes, so that a soname bump does not break the test) and adduser (the postinst).
DEPENDS = ["libc6", "libpaho-mqtt", "libmsgpackc", "liblmdb", "libyaml-0", "libmicrohttpd",
           "libsystemd0", "libssl", "adduser"]


def project_version():
    with open(os.path.join(REPO, "CMakeLists.txt")) as f:
        m = re.search(r"project\(twinhub VERSION ([0-9.]+)", f.read())
    check(m, "no project(twinhub VERSION ...) in CMakeLists.txt")
    return m.group(1)


def run(argv, what, timeout=120, log=None, ok=(0,), env=None, cwd=None, quiet=False):
    """Runs argv; fails with its output unless its exit status is in `ok`. Returns
    (status, output). With `log`, the output also goes to that file; unless quiet, prints
    how long it took."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        raise TestFailure(f"{what}: no exit within {timeout}s: {' '.join(argv)}\n{out[-4000:]}")
    out = p.stdout.decode("utf-8", "replace")
    if log:
        with open(log, "w") as f:
            f.write(out)
    if p.returncode not in ok:
        raise TestFailure(f"{what}: exit status {p.returncode}: {' '.join(argv)}\n"
                          f"{out[-6000:]}")
    if not quiet:
        print(f"  {what}: {time.monotonic() - t0:.1f}s", flush=True)
    return p.returncode, out


def as_service_user(argv):
    """argv run as the service's user, as systemd would (no root, the user's own groups)."""
    return [SETPRIV, f"--reuid={USER}", f"--regid={USER}", "--init-groups",
            "--pdeathsig", "KILL", "--"] + list(argv)


def apt_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINHUB_")}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return env


def apt(*args, what):
    return run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120"] + list(args),
               what, timeout=300, env=apt_env())


def pkg_status():
    """dpkg's status of the package ("install ok installed", "deinstall ok config-files"), or
    None when dpkg knows nothing of it (never installed, or purged)."""
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PKG], capture_output=True)
    text = p.stdout.decode().strip()
    return text if p.returncode == 0 and text and not text.endswith("not-installed") else None


def user_exists():
    try:
        pwd.getpwnam(USER)
        return True
    except KeyError:
        return False


def group_exists():
    try:
        grp.getgrnam(USER)
        return True
    except KeyError:
        return False


def why_skip():
    """A reason not to run on this machine, or None."""
    if os.geteuid() != 0:
        return "not root: installing a package needs root (run it on a CI machine as root)"
    for tool in ("apt-get", "dpkg-deb", "dpkg-query"):
        if not shutil.which(tool):
            return f"no {tool}: not a Debian system"
    st = pkg_status()
    if st:
        return (f"a {PKG} package is on this machine already ({st}): this test would replace "
                "and purge it; remove it first (apt-get purge twinhub) to run the test")
    if user_exists() or group_exists():
        return (f"a user or group '{USER}' exists already: the package's purge would delete it")
    for d in ("/etc/twinhub", STATE):
        if os.path.lexists(d):
            return f"{d} exists already: the package's purge would delete it"
    return None


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------

def build_package(fx):
    """cmake configure + build + CPack (the package target): the path of the .deb."""
    for tool in ("help2man", "dpkg-shlibdeps", "lintian"):
        check(shutil.which(tool), f"{tool} is not installed (deploy/deps.sh installs it)")
    bdir = fx.path("build")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINHUB_")}
    cfg_log, build_log = fx.path("configure.log"), fx.path("build.log")
    fx.logs += [("cmake configure", cfg_log), ("cmake build + cpack", build_log)]
    run([CMAKE, "-S", REPO, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release", "-DTWINHUB_TESTS=OFF",
         "-DTWINHUB_MANPAGES=ON"], "cmake configure", log=cfg_log, env=env)
    jobs = str(max(2, min(4, os.cpu_count() or 2)))
    run([CMAKE, "--build", bdir, "-j", jobs, "--target", "package"], "build + cpack",
        timeout=400, log=build_log, env=env)
    deb = os.path.join(bdir, f"{PKG}_{project_version()}_amd64.deb")
    check(os.path.isfile(deb), f"no {os.path.basename(deb)} in the build directory; it has: "
                               f"{sorted(n for n in os.listdir(bdir) if n.endswith('.deb'))}")
    return deb


def accepted_tags():
    """The lintian tags the package overrides: {tag: reason}, from deploy/package/
    lintian-overrides (a comment before each override gives its reason)."""
    tags = {}
    if not os.path.exists(OVERRIDES):
        return tags
    reason = []
    with open(OVERRIDES) as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                reason.append(line.lstrip("# "))
            elif line:
                m = re.match(r"(?:twinhub(?: binary)?:\s*)?([a-z0-9][a-z0-9+.-]*)", line)
                check(m, f"lintian-overrides: cannot read {line!r}")
                check(reason, f"lintian-overrides: {m.group(1)} has no comment saying why")
                tags[m.group(1)] = " ".join(reason)
                reason = []
    return tags


def check_lintian(fx, deb):
    log = fx.path("lintian.log")
    # exit status 1 only says that something was tagged; the lines decide
    _, out = run(["lintian", "--display-info", "--show-overrides", "--tag-display-limit", "0",
                  deb], "lintian", timeout=300, log=log, ok=(0, 1))
    print("----- lintian\n" + (out.strip() or "(nothing)"), flush=True)
    accepted = accepted_tags()
    bad, overridden = [], set()
    for line in out.splitlines():
        m = re.match(r"([EWIPXCNO]): twinhub(?: binary)?: (\S+)", line)
        if not m:
            continue
        level, tag = m.groups()
        if level in ("E", "W"):
            bad.append(line)
        elif level == "O":
            overridden.add(tag)
    check(not bad, "lintian errors or warnings (fix them, or override each in "
                   "deploy/package/lintian-overrides with its reason and list it in the "
                   "README):\n  " + "\n  ".join(bad))
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    for tag in accepted:
        check(tag in readme, f"lintian override {tag} is not explained in the README")
    unused = set(accepted) - overridden
    check(not unused, f"lintian-overrides lists tags lintian no longer reports: {sorted(unused)}")


def check_deb(fx, deb, version):
    def field(name):
        _, out = run(["dpkg-deb", "-f", deb, name], f"dpkg-deb -f {name}", quiet=True)
        return out.strip()

    _, info = run(["dpkg-deb", "-I", deb], "dpkg-deb -I")
    print("----- dpkg-deb -I\n" + info.rstrip(), flush=True)
    check_eq(field("Package"), PKG, "Package")
    check_eq(field("Version"), version, "Version (project(VERSION) in CMakeLists.txt)")
    check_eq(field("Architecture"), "amd64", "Architecture")
    depends = [d.strip() for d in field("Depends").split(",")]
    names = [re.split(r"[\s(]", d, 1)[0] for d in depends]
    for want in DEPENDS:
        check(any(n.startswith(want) for n in names),
              f"Depends has no {want}*: {field('Depends')}")
    check("mosquitto" in field("Recommends"), f"Recommends: {field('Recommends')!r}")

    ctrl = fx.path("control")
    run(["dpkg-deb", "-e", deb, ctrl], "dpkg-deb -e")
    with open(os.path.join(ctrl, "conffiles")) as f:
        check_eq(sorted(f.read().split()), sorted(CONFFILES), "conffiles")
    for script in ("postinst", "prerm", "postrm"):
        path = os.path.join(ctrl, script)
        check(os.path.exists(path), f"no {script} in the package")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        check_eq(oct(mode), oct(0o755), f"{script}'s mode")
        with open(path) as f:
            text = f.read()
        check(re.search(r"^set -e$", text, re.M), f"{script} does not set -e")
        run(["sh", "-n", path], f"sh -n {script}", quiet=True)

    _, listing = run(["dpkg-deb", "-c", deb], "dpkg-deb -c")
    files = {}
    for line in listing.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6:
            name = parts[5].split(" -> ")[0]
            files[name[1:] if name.startswith("./") else name] = (parts[0], parts[1])
    missing = [p for p in FILES if p not in files]
    check(not missing, f"missing from the package: {missing}")
    for p in FILES:
        mode, owner = files[p]
        want = "-rwxr-xr-x" if p in EXECUTABLES else "-rw-r--r--"
        check_eq((mode, owner), (want, "root/root"), f"{p}: mode and owner")
    stray = [p for p in files if not re.match(r"/(etc/twinhub|lib/systemd/system|usr)(/|$)|/etc/$|/lib/$|/lib/systemd/$", p)]
    check(not stray, f"files outside /usr, /etc/twinhub and /lib/systemd/system: {stray}")


def check_installed(fx, version):
    for b in BINARIES:
        check(os.access(b, os.X_OK), f"{b} is not installed")
    _, out = run(["/usr/bin/twinhub", "--version"], "twinhub --version")
    check_eq(out.strip(), f"twinhub {version}", "twinhub --version")
    _, out = run(["/usr/bin/twinctl", "--version"], "twinctl --version")
    check_eq(out.strip(), f"twinctl {version}", "twinctl --version")
    run(["/usr/bin/twinsim", "--help"], "twinsim --help")

    check(user_exists(), f"postinst made no user {USER}")
    pw = pwd.getpwnam(USER)
    check(pw.pw_uid < 1000, f"{USER} is not a system user (uid {pw.pw_uid})")
    check_eq(pw.pw_dir, STATE, f"{USER}'s home")
    check(pw.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"),
          f"{USER} has a login shell: {pw.pw_shell}")
    check_eq(grp.getgrgid(pw.pw_gid).gr_name, USER, f"{USER}'s primary group")
    st = os.stat(STATE)
    check_eq((pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name,
              oct(stat.S_IMODE(st.st_mode))), (USER, USER, oct(0o750)),
             f"{STATE}: owner, group, mode")
    check(os.path.islink(WANTS), f"the unit is not enabled: no {WANTS}")

    sa = shutil.which("systemd-analyze")
    check(sa, "systemd-analyze is not installed (package systemd)")
    _, out = run([sa, "verify", UNIT], "systemd-analyze verify", timeout=60)
    check(not out.strip(), f"systemd-analyze verify {UNIT} says:\n{out}")

    # the installed configuration and examples are valid as shipped
    _, out = run(["/usr/bin/twinhub", "-c", CONF, "--print-config"], "twinhub --print-config")
    check(f'path: "{STATE}/twinhub.db"' in out, f"store.path is not {STATE}/twinhub.db:\n{out}")
    check(f'file: "{RULES}"' in out, f"rules.file is not {RULES}:\n{out}")
    run(["/usr/bin/twinctl", "rules", "check", RULES], "twinctl rules check rules.yaml")
    run(["/usr/bin/twinctl", "rules", "check", "/usr/share/twinhub/examples/rules/ecg.yaml"],
        "twinctl rules check ecg.yaml (its model found at ../models)")
    run(["/usr/bin/twinctl", "model", "info",
         "/usr/share/twinhub/examples/models/hr_forecast.twm"], "twinctl model info")
    # the exporter and the training script run from where the package put them
    twm = fx.path("retrained.twm")
    env = dict(os.environ, PYTHONPATH="/usr/share/twinhub/models")
    run(["/usr/share/twinhub/examples/models/train_hr_forecast.py", "--devices", "2",
         "--seconds", "300", "--stride", "30", "--out", twm], "train_hr_forecast.py + export.py",
        env=env)
    run(["/usr/bin/twinctl", "model", "info", twm], "twinctl model info (retrained)")
    run(["man", "-w", "twinhub"], "man -w twinhub")
    # the postinst a second time (dpkg-reconfigure, an interrupted configure) changes nothing
    run(["/var/lib/dpkg/info/twinhub.postinst", "configure", version], "postinst again")
    check_eq(pwd.getpwnam(USER).pw_uid, pw.pw_uid, f"{USER}'s uid after a second postinst")


class InstalledHub:
    """/usr/bin/twinhub with /etc/twinhub/twinhub.yaml, as user twinhub (as the unit runs it),
    against the test broker; the store is the configured one in /var/lib/twinhub."""

    def __init__(self, fx, broker):
        self.fx = fx
        self.log = fx.path("installed-hub.log")
        fx.logs.append(("installed twinhub", self.log))
        argv = as_service_user(["/usr/bin/twinhub", "-c", CONF, "--broker", broker.url,
                                "--set", "http.listen=127.0.0.1:0", "--log-level", "debug"])
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=STATE, env=env)
        fx.procs.append(self)

    def __repr__(self):
        return f"installed twinhub(pid={self.proc.pid})"

    def log_text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def check_alive(self):
        if self.proc.poll() is not None:
            raise TestFailure(f"the installed twinhub exited with status {self.proc.returncode}"
                              f":\n{tail(self.log, 40)}")

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def check_daemon(fx, broker):
    status = MqttClient(fx, broker, "status", subscribe=["hub/status"])
    watch = MqttClient(fx, broker, "watch", subscribe=["twins/+/state"])
    hub = InstalledHub(fx, broker)

    def born():
        hub.check_alive()
        return any(m.payload == b"online" and not m.retain for m in status.messages("hub/status"))
    wait_until(born, 30, "the installed hub's live 'online' on hub/status")

    # its HTTP listener: ready (store open, connected, subscribed)
    def port():
        hub.check_alive()
        m = re.search(r'msg="http listening".* port=(\d+)', hub.log_text())
        return int(m.group(1)) if m else None
    conn = http.client.HTTPConnection("127.0.0.1", wait_until(port, 10, "http listening"),
                                      timeout=10)
    conn.request("GET", "/readyz")
    r = conn.getresponse()
    body = r.read()
    conn.close()
    check_eq(r.status, 200, f"/readyz of the installed hub ({body!r})")

    dev = "pkg-ecg-1"
    dev_client = MqttClient(fx, broker, "device")
    dev_client.publish(f"devices/{dev}/telemetry",
                       pack({"seq": 1, "heart_rate": 72, "spo2": 98.5}), qos=1)
    m = watch.wait_for(lambda m: m.topic == f"twins/{dev}/state" and
                       unpack(m.payload).get("reported", {}).get("heart_rate") == 72,
                       15, f"twins/{dev}/state with heart_rate 72")
    doc = unpack(m.payload)
    check_eq(doc.get("id"), dev, "the published twin's id")

    # the operators' way to read it: twinctl with the same config, as the service's user
    _, out = run(as_service_user(["/usr/bin/twinctl", "-c", CONF, "get", dev]),
                 "twinctl -c twinhub.yaml get (as twinhub)")
    twin = json.loads(out)
    check_eq((twin.get("reported", {}).get("heart_rate"), twin.get("reported", {}).get("spo2")),
             (72, 98.5), "the twin in the installed hub's store")

    hub.proc.send_signal(signal.SIGTERM)
    try:
        rc = hub.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise TestFailure("the installed twinhub did not exit within 30s of SIGTERM")
    check_eq(rc, 0, "the installed twinhub's exit status after SIGTERM")
    check_eq(get_retained(fx, broker, "hub/status"), b"offline", "retained hub/status after stop")
    data = os.path.join(STATE, "twinhub.db", "data.mdb")
    check(os.path.exists(data), f"no store at {data}")
    check_eq(pwd.getpwuid(os.stat(data).st_uid).pw_name, USER, f"owner of {data}")
    return dev


def check_removed():
    check_eq(pkg_status(), "deinstall ok config-files", "dpkg status after remove")
    left = [b for b in BINARIES + [UNIT] if os.path.exists(b)]
    check(not left, f"left after remove: {left}")
    for p in CONFFILES:
        check(os.path.exists(p), f"remove took the configuration {p}")
    check(os.path.exists(os.path.join(STATE, "twinhub.db", "data.mdb")),
          f"remove took the store in {STATE}")
    check(user_exists(), f"remove took the user {USER}")


def check_purged():
    check_eq(pkg_status(), None, "dpkg status after purge")
    left = [p for p in ("/etc/twinhub", STATE, UNIT, WANTS) if os.path.lexists(p)]
    check(not left, f"left after purge: {left}")
    check(not user_exists(), f"purge left the user {USER}")
    check(not group_exists(), f"purge left the group {USER}")


# ---------------------------------------------------------------------------------------------
# The case
# ---------------------------------------------------------------------------------------------

def case_deb(fx):
    t0 = time.monotonic()
    version = project_version()
    deb = build_package(fx)
    check_lintian(fx, deb)
    check_deb(fx, deb, version)
    broker = Broker(fx)
    installed = False
    try:
        # after a failed check of the machine, nothing is installed (and nothing purged)
        reason = why_skip()
        check(reason is None, f"the machine changed while the package was built: {reason}")
        installed = True
        apt("install", "--no-install-recommends", deb, what="apt-get install ./twinhub.deb")
        check_eq(pkg_status(), "install ok installed", "dpkg status after install")
        check_installed(fx, version)
        dev = check_daemon(fx, broker)

        apt("remove", PKG, what="apt-get remove")
        check_removed()
        # a reinstall finds its user, configuration and store where it left them
        apt("install", "--no-install-recommends", deb, what="apt-get install again")
        _, out = run(as_service_user(["/usr/bin/twinctl", "-c", CONF, "get", dev]),
                     "twinctl get after remove + reinstall")
        check_eq(json.loads(out).get("reported", {}).get("heart_rate"), 72,
                 "the twin after remove + reinstall")

        apt("purge", PKG, what="apt-get purge")
        installed = False
        check_purged()
    finally:
        # everything that runs as the user goes before the purge deletes the user
        for p in list(fx.procs):
            if isinstance(p, InstalledHub):
                p.cleanup()
        if installed and pkg_status():
            subprocess.run(["apt-get", "-y", "-q", "purge", PKG], env=apt_env(),
                           stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
                           timeout=300)
    print(f"  package case: {time.monotonic() - t0:.1f}s in all", flush=True)


CASES = {"deb": case_deb}
# One run at a time on this machine, whatever ctest (build directory) started it: RESOURCE_LOCK
# only orders the tests of one ctest. Another run's package is purged when it ends.
LOCK = "/run/lock/twinhub-test-package.lock"
LOCK_WAIT = 150


def machine_lock():
    """Holds LOCK for the life of this process (the fd is not inherited: Popen closes fds);
    waits up to LOCK_WAIT s for another run. Returns the open file, or None after the wait."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    f = open(LOCK, "w")
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(1)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in CASES and os.geteuid() == 0:
        lock = machine_lock()
        if lock is None:
            print(f"SKIP {sys.argv[1]}: another test_package run held {LOCK} for "
                  f"{LOCK_WAIT}s")
            sys.exit(SKIP)
    if len(sys.argv) == 2 and sys.argv[1] in CASES:
        reason = why_skip()
        if reason:
            print(f"SKIP {sys.argv[1]}: {reason}")
            sys.exit(SKIP)
    sys.exit(run_case(CASES))

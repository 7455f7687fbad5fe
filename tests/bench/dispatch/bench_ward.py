#!/usr/bin/python3
"""bench_ward: the demo's ward dispatching nurses, measured: a private Mosquitto, twinhub with
deploy/twinhub.yaml and deploy/rules/ecg.yaml (its dispatch: nurse_call), and twinsim with D
monitors and N nurses (--episodes-per-hour E, --service S), for T seconds. Prints figures from
the hub's /metrics and twinsim's log; never passes or fails on a time.

    cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release && cmake --build build-rel -j2
    /usr/bin/python3 tests/bench/dispatch/bench_ward.py --build build-rel \\
        [--seconds 600] [--devices 50] [--nurses 5] [--episodes 1.5,6] [--service 20]

For each episode rate: alarms opened (tachycardia fired), assigned, done by the nurse, returned,
released (the alarm ended first) and still open at the end; the time from an alarm to its
nurse (mean, from twinhub_dispatch_wait_seconds; p50 and p90 from the hub's log lines
"dispatch assigned ... waited_ms="); the optimal plan's total cost against the nearest free
nurse to each alarm in order of priority and age over the same decisions (the cost of
deploy/rules/ecg.yaml: metres to walk less half a metre per second waited); decisions and
the mean time of one (twinhub_dispatch_decision_seconds); the metres the nurses walked
(twinsim's "nurse finished" lines).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench_ward: nothing listens on {port}")


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("twinhub_dispatch_") and " " in line:
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def run(args, episodes, tmp):
    port, http = free_port(), free_port()
    d = os.path.join(tmp, f"e{episodes}")
    os.makedirs(d)
    procs = []

    def start(argv, log):
        p = subprocess.Popen(argv, stdout=open(os.path.join(d, log), "w"),
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(p)
        return p
    try:
        start([args.mosquitto, "-p", str(port)], "mosquitto.log")
        wait_port(port)
        url = f"tcp://127.0.0.1:{port}"
        start([os.path.join(args.build, "hub", "twinhub"), "-c",
               os.path.join(REPO, "deploy", "twinhub.yaml"), "--broker", url,
               "--db", os.path.join(d, "db"), "--rules",
               os.path.join(REPO, "deploy", "rules", "ecg.yaml"),
               "--set", f"http.listen=127.0.0.1:{http}", "--set", "broker.session_expiry=0"],
              "twinhub.log")
        wait_port(http)
        sim = start([os.path.join(args.build, "sim", "twinsim"), "--broker", url,
                     "--devices", str(args.devices), "--rate", "2", "--nurses", str(args.nurses),
                     "--episodes-per-hour", str(episodes), "--service", str(args.service)],
                    "twinsim.log")
        # the figures while the ward still runs: a stopping twinsim takes its nurses offline,
        # which hands their demands back
        time.sleep(args.seconds)
        if sim.poll() is not None:
            raise SystemExit(f"bench_ward: twinsim exited early ({sim.returncode}); see {d}")
        m = metrics(http)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    hub_log = open(os.path.join(d, "twinhub.log")).read()
    sim_log = open(os.path.join(d, "twinsim.log")).read()
    waits = [int(x) / 1000.0 for x in re.findall(r'msg="dispatch assigned".* waited_ms=(\d+)',
                                                  hub_log)]
    walked = [float(x) for x in re.findall(r'msg="nurse finished".* walked_m=([\d.]+)', sim_log)]
    return m, waits, walked


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--nurses", type=int, default=5)
    ap.add_argument("--episodes", default="1.5,6",
                    help="tachycardia episodes per monitor and hour, comma-separated runs")
    ap.add_argument("--service", type=float, default=20)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-ward-")
    print(f"ward: {args.devices} monitors (2 msg/s), {args.nurses} nurses, service "
          f"{args.service:g} s, {args.seconds:g} s per run")
    print(f"{'episodes/h':>10} {'opened':>7} {'assigned':>8} {'done':>5} {'returned':>8} "
          f"{'released':>8} {'wait mean':>9} {'p50':>6} {'p90':>6} {'cost':>9} "
          f"{'nearest-free':>12} {'ratio':>6} {'decisions':>9} {'per decision':>12} "
          f"{'walked m':>9}")
    try:
        for e in [float(x) for x in args.episodes.split(",")]:
            m, waits, walked = run(args, e, tmp)
            n = m.get("twinhub_dispatch_wait_seconds_count", 0)
            mean = m.get("twinhub_dispatch_wait_seconds_sum", 0) / n if n else float("nan")
            q = statistics.quantiles(waits, n=10) if len(waits) >= 2 else [float("nan")] * 9
            c, g = m.get("twinhub_dispatch_cost_total", 0), m.get("twinhub_dispatch_greedy_cost_total", 0)
            dn = m.get("twinhub_dispatch_decision_seconds_count", 0)
            dm = m.get("twinhub_dispatch_decision_seconds_sum", 0) / dn if dn else float("nan")
            print(f"{e:>10g} {m.get('twinhub_dispatch_opened_total', 0):>7.0f} {n:>8.0f} "
                  f"{m.get('twinhub_dispatch_completed_total', 0):>5.0f} "
                  f"{m.get('twinhub_dispatch_returned_total', 0):>8.0f} "
                  f"{m.get('twinhub_dispatch_released_total', 0):>8.0f} {mean:>8.1f}s "
                  f"{statistics.median(waits) if waits else float('nan'):>5.1f}s {q[8]:>5.1f}s "
                  f"{c:>9.0f} {g:>12.0f} {c / g if g else float('nan'):>6.3f} {dn:>9.0f} "
                  f"{dm * 1e3:>10.2f}ms {sum(walked):>9.0f}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

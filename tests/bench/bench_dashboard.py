#!/usr/bin/python3
"""bench_dashboard: what the dashboard costs and how fresh it is, against a real Mosquitto,
twinhub (deploy/twinhub.yaml, deploy/rules/ecg.yaml, serving <build>/web) and twinsim, with
headless Chromium. Prints figures; never passes or fails on a time.

    web/setup.sh && cmake -S . -B build-bd -DCMAKE_BUILD_TYPE=Release -DTWINHUB_TESTS=ON && \\
        cmake --build build-bd -j2
    /usr/bin/python3 tests/bench/bench_dashboard.py --build build-bd \\
        [--parts latency,cpu,throughput] [--lat-seconds 20] [--cpu-seconds 30] \\
        [--tp-devices 200] [--tp-count 500] [--tp-pairs 2]

latency: 50 devices of our own (one paho client, QoS 1), 10 msg/s each, `ts` = send time and a
    heart rate that says which message it is (60.0 + (seq mod 600) / 10: unique per device over
    60 s, shown by the tile to one decimal). (a) a Python SSE client (its own process) on
    /api/stream?kinds=state&fields=reported.heart_rate: receive time - send time per state
    event, joined on (twin, heart rate); the row's version is checked to rise. (b) headless
    Chromium on #/fleet (50 tiles): a MutationObserver on the tiles' .hr-value spans stamps
    performance.timeOrigin + performance.now() when the text changes (DOM) and again in the
    next requestAnimationFrame (frame: the change is about to be painted). Phase A: the SSE
    client alone; phase B: the SSE client and the browser together. Same machine, same clock.
cpu: twinsim --devices 50 --rate 2 (a 250 Hz ECG strip); #/fleet (50 live tiles) and then
    #/twin/ecg-0001 (ECG strip scrolling), --cpu-seconds each after a 5 s warm-up: main-thread
    busy share from CDP Performance.getMetrics (TaskDuration, ScriptDuration, Layout +
    RecalcStyle deltas over wall time, as tests/bench/plots/bench_plots.py), the
    requestAnimationFrame intervals (fps, p50, p99, max, frames > 33 ms), and the CPU of
    Chromium's processes (renderer, GPU, browser, from /proc/PID/stat utime+stime) and of the
    hub, as a share of one core.
throughput: one hub, one store for the whole part (its 200 twins seeded first by a twinsim
    --count 1 run; every later twinsim run is a new boot of the same devices, so a new seq
    order and every message applies). Runs of twinsim --devices D --rate 0 --count C --qos 1
    --connections 4, alternating none / 5 Chromium windows on #/fleet (5 separate headless
    Chromium instances: each holds a stream of its 50 tiles' twins and re-reads its snapshot
    every 20 s) / none / 5 Python SSE clients with the page's pattern (a lighter stand-in: the
    snapshot query, the 50 tiles' history, the stream with the page's ids, kinds and fields,
    the snapshot again every 20 s), --tp-pairs times, after one uncounted warm-up run (the
    first run on a fresh store is about 2x faster: the histories are not full yet). Each run is
    also compared with the none run just before it. Hub throughput = C*D over the time from
    twinsim's start to the hub's twinhub_telemetry_applied_total reaching +C*D (polled every
    0.1 s on /metrics), and over the 10%..90% part of the run; twinsim's own send rate too.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--build", default=os.path.join(REPO, "build-bd"))
ap.add_argument("--parts", default="latency,cpu,throughput")
ap.add_argument("--lat-seconds", type=float, default=20)
ap.add_argument("--lat-devices", type=int, default=50)
ap.add_argument("--lat-rate", type=float, default=10)
ap.add_argument("--cpu-seconds", type=float, default=30)
ap.add_argument("--tp-devices", type=int, default=200)
ap.add_argument("--tp-count", type=int, default=500)
ap.add_argument("--tp-pairs", type=int, default=2)
ap.add_argument("--tp-clients", type=int, default=5)
ap.add_argument("--tp-modes", default="chromium,python",
                help="which kinds of 5 clients alternate with none")
A = ap.parse_args()
BUILD = os.path.abspath(A.build)
os.environ.setdefault("TWINHUB_BIN", os.path.join(BUILD, "hub", "twinhub"))
os.environ.setdefault("TWINSIM_BIN", os.path.join(BUILD, "sim", "twinsim"))
os.environ.setdefault("TWINCTL_BIN", os.path.join(BUILD, "ctl", "twinctl"))
os.environ.setdefault("MOSQUITTO", "/usr/sbin/mosquitto")
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import paho.mqtt.client as mqtt  # noqa: E402
from harness import (TWINSIM_BIN, Broker, Fixture, Hub, child_env, now_ms, pack,  # noqa: E402
                     spawn, wait_until)
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

CONFIG = os.path.join(REPO, "deploy", "twinhub.yaml")
RULES = os.path.join(REPO, "deploy", "rules", "ecg.yaml")
WEB = os.path.join(BUILD, "web")
FIELDS = "reported.heart_rate,reported.spo2,connected,last_seen,rules"  # web/js/fleet.js
CLK = os.sysconf("SC_CLK_TCK")
RESULTS = []  # (section, label, text) for the final table
PROBLEMS = []


def note(section, label, text):
    RESULTS.append((section, label, text))
    print(f"  [{section}] {label}: {text}", flush=True)


def problem(text):
    PROBLEMS.append(text)
    print(f"  PROBLEM: {text}", flush=True)


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def dist(xs):
    if not xs:
        return "no samples"
    return (f"n={len(xs)} median={statistics.median(xs):.1f} p90={pct(xs, 90):.1f} "
            f"p99={pct(xs, 99):.1f} max={max(xs):.1f} min={min(xs):.1f} ms")


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

def start_hub(fx, sets=None):
    b = Broker(fx)
    hub = Hub(fx, b, config=CONFIG, sets={"rules.file": RULES, "log.level": "info",
                                          "http.listen": "127.0.0.1:0",
                                          "http.dashboard": WEB, **(sets or {})})
    port = hub.http_port()
    return b, hub, f"http://127.0.0.1:{port}", port


class Sim:
    def __init__(self, fx, broker, *args, label="twinsim"):
        self.log = fx.path(f"{label}-{time.monotonic_ns()}.log")
        argv = [TWINSIM_BIN, "--broker", broker.url] + [str(a) for a in args]
        self.proc = spawn(argv, self.log, fx.dir, child_env())
        fx.procs.append(self)

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def summary(self):
        with open(self.log, errors="replace") as f:
            text = f.read()
        m = re.search(r"twinsim: devices=\d+ sent=(\d+) acked=(\d+) failed=(\d+) "
                      r"seconds=([\d.]+) rate=([\d.]+)", text)
        return (dict(sent=int(m[1]), acked=int(m[2]), failed=int(m[3]), seconds=float(m[4]),
                     rate=float(m[5])) if m else None), text


def api(base, path, timeout=10):
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        return json.loads(r.read())


def metrics(base):
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def proc_cpu(pid):
    """utime+stime of pid in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def descendants(pid):
    kids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(p))
    out, pending = [], [pid]
    while pending:
        q = pending.pop()
        for c in kids.get(q, []):
            out.append(c)
            pending.append(c)
    return out


def chrome_procs(driver):
    """{pid: kind} of the Chromium processes under this driver's chromedriver."""
    out = {}
    for p in descendants(driver.service.process.pid):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").split()  # Chromium rewrites its title
        except OSError:
            continue
        if not argv or b"chrom" not in os.path.basename(argv[0]):
            continue
        kind = "browser"
        for a in argv:
            if a.startswith(b"--type="):
                kind = a[7:].decode()
                if kind == "utility":
                    kind = "utility"
        out[p] = kind
    return out


def cpu_snapshot(pids):
    return {p: proc_cpu(p) for p in pids}


# ---------------------------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------------------------

def browser(size="1400,1000"):
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              f"--window-size={size}", "--disable-gpu"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def bwait(d, script, timeout, what, *args):
    return wait_until(lambda: d.execute_script(script, *args), timeout, what, interval=0.1)


def console_errors(d):
    try:
        return [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    except Exception as e:
        return [{"message": f"(cannot read the console: {e})"}]


FRAMES_JS = """
if (!window.__bench) {
  window.__bench = {frames: [], last: 0, on: true};
  const b = window.__bench;
  const tick = (t) => { if (b.last) b.frames.push(t - b.last); b.last = t;
                        if (b.on) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
}
window.__bench.frames = []; window.__bench.last = 0;
"""

TILE_OBS_JS = """
window.__lat = []; const pending = [];
let raf = 0;
const grid = document.getElementById('tiles');
new MutationObserver((recs) => {
  const t = performance.timeOrigin + performance.now();
  for (const r of recs) {
    const n = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    if (!n || !n.classList || !n.classList.contains('hr-value')) continue;
    const tile = n.closest('.tile');
    const e = [tile ? tile.dataset.id : '', n.textContent, t, 0];
    window.__lat.push(e); pending.push(e);
  }
  if (pending.length && !raf) raf = requestAnimationFrame(() => {
    const f = performance.timeOrigin + performance.now();
    for (const e of pending) e[3] = f;
    pending.length = 0; raf = 0;
  });
}).observe(grid, {subtree: true, childList: true, characterData: true});
"""


def cdp_metrics(d):
    m = d.execute_cdp_cmd("Performance.getMetrics", {})
    return {x["name"]: x["value"] for x in m["metrics"]}


# ---------------------------------------------------------------------------------------------
# 1. latency
# ---------------------------------------------------------------------------------------------

def sse_reader(port, query, stop, out_q, ready):
    """In its own process: a thread reads the stream and stamps each event on arrival; the
    process hands them over when `stop` is set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=None)
    conn.request("GET", "/api/stream" + query, headers={"Accept": "text/event-stream"})
    r = conn.getresponse()
    got = []

    def read():
        ev, data = "", []
        while True:
            line = r.fp.readline()
            if not line:
                return
            t = time.time()
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    got.append((t, ev, b"\n".join(data)))
                ev, data = "", []
            elif line.startswith(b"event:"):
                ev = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip())
    threading.Thread(target=read, daemon=True).start()
    ready.set()
    stop.wait()
    rows = []
    for t, ev, d in list(got):
        try:
            rows.append((t, ev, json.loads(d)))
        except ValueError:
            rows.append((t, ev, None))
    out_q.put(rows)
    out_q.close()
    out_q.join_thread()
    os._exit(0)


def mqtt_tap(port, stop, out_q, ready):
    """In its own process: the same messages seen on MQTT (the telemetry as the broker hands
    it on, the hub's twins/+/state), stamped on arrival: where the time goes."""
    import msgpack
    got = []
    c = mqtt.Client(client_id=f"bench-tap-{os.getpid()}", clean_session=True)
    c.on_message = lambda cl, u, m: got.append((time.time(), m.topic, m.payload))
    c.connect("127.0.0.1", port, keepalive=60)
    c.subscribe([("devices/+/telemetry", 1), ("twins/+/state", 1)])  # QoS 1, as the hub
    c.loop_start()
    time.sleep(0.5)
    ready.set()
    stop.wait()
    c.loop_stop()
    rows = []
    for t, topic, payload in got:
        try:
            d = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception:
            continue
        dev = topic.split("/")[1]
        if topic.endswith("/telemetry"):
            hr = d.get("heart_rate")
            rows.append((t, "telemetry", dev, hr))
        else:
            hr = (d.get("reported") or {}).get("heart_rate") if isinstance(d, dict) else None
            rows.append((t, "state", dev, hr))
    out_q.put(rows)
    out_q.close()
    out_q.join_thread()
    os._exit(0)


class Publisher:
    """50 devices on one paho connection, each at `rate` msg/s, the sends spread evenly."""

    def __init__(self, broker, n, rate, prefix):
        self.ids = [f"{prefix}{i:04d}" for i in range(1, n + 1)]
        self.seq = {i: 0 for i in self.ids}
        self.sent = {}  # (id, key) -> [send time s], newest last
        self.rate = rate
        self.c = mqtt.Client(client_id=f"bench-pub-{os.getpid()}", clean_session=True)
        self.c.max_inflight_messages_set(1000)
        self.c.max_queued_messages_set(0)
        self.c.connect("127.0.0.1", broker.port, keepalive=60)
        self.c.loop_start()
        time.sleep(0.3)

    def send(self, dev):
        self.seq[dev] += 1
        s = self.seq[dev]
        hr = 60.0 + (s % 600) / 10
        t = time.time()
        self.c.publish(f"devices/{dev}/telemetry",
                       pack({"seq": s, "ts": int(t * 1000), "heart_rate": hr, "spo2": 97}), qos=1)
        self.sent[(dev, round(hr * 10))] = t
        return t

    def run(self, seconds, stop=None):
        n = len(self.ids)
        step = 1.0 / (self.rate * n)
        t0 = time.monotonic()
        k = 0
        late = 0.0
        while True:
            due = t0 + k * step
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            self.send(self.ids[k % n])
            k += 1
        return k, late

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def join_sse(pub, rows, t_from):
    lat, versions, unmatched = [], {}, 0
    regress = 0
    for t, ev, d in rows:
        if ev != "state" or not d:
            continue
        row = d.get("row") or {}
        hr = row.get("reported.heart_rate")
        v = d.get("version")
        dev = d.get("id")
        if isinstance(v, int):
            if dev in versions and v <= versions[dev]:
                regress += 1
            versions[dev] = v
        if not isinstance(hr, (int, float)):
            continue
        ts = pub.sent.get((dev, round(hr * 10)))
        if ts is None:
            unmatched += 1
            continue
        if ts < t_from:
            continue
        lat.append((t - ts) * 1000)
    return lat, unmatched, regress


def part_latency():
    print(f"\n== 1. stream latency: {A.lat_devices} devices x {A.lat_rate:g} msg/s, "
          f"{A.lat_seconds:g} s a phase", flush=True)
    fx = Fixture("bench-lat")
    try:
        b, hub, base, port = start_hub(fx)
        pub = Publisher(b, A.lat_devices, A.lat_rate, "lat-")
        for dev in pub.ids:  # the twins, before the page reads its snapshot
            pub.send(dev)
        wait_until(lambda: len(api(base, f"/api/twins?fields=version&limit=1000")["rows"]) >=
                   A.lat_devices, 20, "the twins")
        mp = multiprocessing.get_context("fork")

        def with_sse(phase, drv):
            stop, ready, q = mp.Event(), mp.Event(), mp.Queue()
            p = mp.Process(target=sse_reader,
                           args=(port, "?kinds=state&fields=reported.heart_rate", stop, q, ready))
            p.start()
            ready.wait(10)
            tstop, tready, tq = mp.Event(), mp.Event(), mp.Queue()
            tp = mp.Process(target=mqtt_tap, args=(b.port, tstop, tq, tready))
            tp.start()
            tready.wait(10)
            time.sleep(0.5)
            t_from = time.time() + 2  # the first 2 s are warm-up
            if drv:
                drv.execute_script("window.__lat = [];")
            sent, late = pub.run(A.lat_seconds)
            time.sleep(2)  # the tail
            stop.set()
            tstop.set()
            rows = q.get(timeout=30)
            taps = tq.get(timeout=30)
            p.join(10)
            tp.join(10)
            for kind, what in (("telemetry", "MQTT tap, send to the broker's delivery of the "
                                              "telemetry"),
                               ("state", "MQTT tap, send to twins/{id}/state")):
                xs = []
                for t, k, dev, hr in taps:
                    if k != kind or not isinstance(hr, (int, float)):
                        continue
                    ts = pub.sent.get((dev, round(hr * 10)))
                    if ts is not None and ts >= t_from:
                        xs.append((t - ts) * 1000)
                note("latency", f"{phase} {what}", dist(xs))
            lat, unmatched, regress = join_sse(pub, rows, t_from)
            states = sum(1 for r in rows if r[1] == "state")
            note("latency", f"{phase} SSE client, commit to client (recv - send)", dist(lat))
            note("latency", f"{phase} SSE counts",
                 f"sent={sent} state events={states} matched={len(lat)} unmatched={unmatched} "
                 f"version went back={regress}; publisher max lateness {late * 1000:.1f} ms")
            if regress:
                problem(f"{phase}: {regress} state events whose version did not rise")
            return t_from

        with_sse("A (SSE alone)", None)

        d = browser()
        try:
            d.get(f"{base}/#/fleet")
            bwait(d, "return document.querySelectorAll('.tile').length >= arguments[0]", 20,
                  "the tiles", A.lat_devices)
            bwait(d, "return document.getElementById('stream-status').textContent === 'live'",
                  10, "the stream")
            d.execute_script(TILE_OBS_JS)
            t_from = with_sse("B (SSE + browser)", d)
            recs = d.execute_script("return window.__lat")
            dom, frame, unmatched = [], [], 0
            for dev, text, tdom, tframe in recs:
                try:
                    key = round(float(text) * 10)
                except ValueError:
                    continue
                ts = pub.sent.get((dev, key))
                if ts is None:
                    unmatched += 1
                    continue
                if ts < t_from:
                    continue
                dom.append(tdom - ts * 1000)
                if tframe:
                    frame.append(tframe - ts * 1000)
            note("latency", "B browser tile, send to DOM text change", dist(dom))
            note("latency", "B browser tile, send to next animation frame", dist(frame))
            exp = A.lat_rate * A.lat_devices * (A.lat_seconds - 2)
            note("latency", "B browser counts",
                 f"tile changes={len(recs)} matched={len(dom)} (about {exp:.0f} sends in the "
                 f"window) unmatched={unmatched}")
            errs = console_errors(d)
            if errs:
                problem("latency page console errors: " +
                        "; ".join(str(e.get("message"))[:200] for e in errs[:5]))
        finally:
            d.quit()
        pub.close()
        m = metrics(base)
        for h in ("twinhub_commit_duration_seconds", "twinhub_publish_latency_seconds",
                  "twinhub_telemetry_to_publish_seconds"):
            n, sm = m.get(h + "_count", 0), m.get(h + "_sum", 0)
            bk = sorted((float(re.search(r'le="([^"]+)"', k)[1]), v) for k, v in m.items()
                        if k.startswith(h + "_bucket"))
            p50 = next((le for le, v in bk if v >= n / 2), float("nan")) if n else float("nan")
            note("latency", f"hub histogram {h}",
                 f"count {n:.0f} mean {sm / n * 1000 if n else float('nan'):.2f} ms, "
                 f"median bucket <= {p50 * 1000:g} ms")
        note("latency", "hub counters",
             f"applied={m.get('twinhub_telemetry_applied_total', 0):.0f} "
             f"duplicate={m.get('twinhub_telemetry_duplicate_total', 0):.0f} "
             f"stale={m.get('twinhub_telemetry_stale_total', 0):.0f}")
    finally:
        fx.close()


# ---------------------------------------------------------------------------------------------
# 2. the page's CPU
# ---------------------------------------------------------------------------------------------

def measure_page(d, hub, seconds, label):
    d.execute_script(FRAMES_JS)
    d.execute_cdp_cmd("Performance.enable", {})
    procs = chrome_procs(d)
    pids = list(procs) + [hub.proc.pid]
    d.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    g0 = cdp_metrics(d)  # live nodes and heap, after a GC
    c0, m0, w0 = cpu_snapshot(pids), cdp_metrics(d), time.monotonic()
    d.execute_script("window.__bench.frames = []; window.__bench.last = 0;")
    time.sleep(seconds)
    c1, m1, w1 = cpu_snapshot(pids), cdp_metrics(d), time.monotonic()
    frames = d.execute_script("return window.__bench.frames")
    d.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    g1 = cdp_metrics(d)
    wall = w1 - w0
    busy = {k: (m1.get(k, 0) - m0.get(k, 0)) / wall * 100
            for k in ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")}
    note("cpu", f"{label} main thread",
         f"task {busy['TaskDuration']:.1f}% script {busy['ScriptDuration']:.1f}% "
         f"layout+style {busy['LayoutDuration'] + busy['RecalcStyleDuration']:.1f}% of wall; "
         f"after a GC: JS heap {g1.get('JSHeapUsedSize', 0) / 1e6:.1f} MB (was "
         f"{g0.get('JSHeapUsedSize', 0) / 1e6:.1f}), nodes {g1.get('Nodes', 0):.0f} (was "
         f"{g0.get('Nodes', 0):.0f}), listeners {g1.get('JSEventListeners', 0):.0f} (was "
         f"{g0.get('JSEventListeners', 0):.0f})")
    n = len(frames)
    note("cpu", f"{label} frames",
         f"fps {n / wall:.1f} p50 {pct(frames, 50):.1f} p99 {pct(frames, 99):.1f} max "
         f"{max(frames or [0]):.1f} ms, >33 ms: {sum(1 for f in frames if f > 33)} of {n}")
    by = {}
    for p, kind in procs.items():
        if c0.get(p) is not None and c1.get(p) is not None:
            by.setdefault(kind, []).append((c1[p] - c0[p]) / wall * 100)
    parts = []
    for kind in sorted(by):
        xs = by[kind]
        parts.append(f"{kind} {sum(xs):.1f}%" + (f" ({'+'.join(f'{x:.1f}' for x in sorted(xs, reverse=True))})"
                                                 if len(xs) > 1 else ""))
    hubcpu = (c1[hub.proc.pid] - c0[hub.proc.pid]) / wall * 100
    note("cpu", f"{label} process CPU (% of one core)",
         ", ".join(parts) + f"; chromium total {sum(sum(x) for x in by.values()):.1f}%; "
         f"twinhub {hubcpu:.1f}%")
    return m1


def part_cpu():
    print(f"\n== 2. the page's CPU: twinsim --devices 50 --rate 2, {A.cpu_seconds:g} s a page",
          flush=True)
    fx = Fixture("bench-cpu")
    try:
        b, hub, base, port = start_hub(fx)
        sim = Sim(fx, b, "--devices", 50, "--rate", 2, "--seed", 8, "--quiet")
        wait_until(lambda: len(api(base, "/api/twins?fields=version&limit=1000")["rows"]) >= 50,
                   30, "50 twins")
        time.sleep(3)  # some history for the sparklines
        d = browser()
        try:
            d.get(f"{base}/#/fleet")
            bwait(d, "return document.querySelectorAll('.tile').length >= 50", 20, "50 tiles")
            bwait(d, "return document.getElementById('stream-status').textContent === 'live'",
                  10, "the stream")
            time.sleep(5)
            measure_page(d, hub, A.cpu_seconds, "fleet (50 tiles)")
            d.get(f"{base}/#/twin/ecg-0001")
            bwait(d, "const e = document.getElementById('ecg-strip'); "
                     "return e && +e.dataset.points > 200", 20, "the ECG strip")
            time.sleep(5)
            e0 = int(d.execute_script("return +document.getElementById('ecg-strip').dataset.end"))
            t0 = time.monotonic()
            measure_page(d, hub, A.cpu_seconds, "twin ecg-0001 (ECG strip)")
            e1 = int(d.execute_script("return +document.getElementById('ecg-strip').dataset.end"))
            note("cpu", "twin ecg-0001 strip scrolled",
                 f"{(e1 - e0) / 1000:.1f} s of signal in {time.monotonic() - t0:.1f} s wall")
            errs = console_errors(d)
            if errs:
                problem("cpu pages console errors: " +
                        "; ".join(str(e.get("message"))[:200] for e in errs[:5]))
        finally:
            d.quit()
    finally:
        fx.close()


# ---------------------------------------------------------------------------------------------
# 3. hub throughput with dashboards
# ---------------------------------------------------------------------------------------------

class PyDashboard:
    """The fleet page's traffic without a browser: snapshot, 50 histories, the stream with the
    page's parameters, the snapshot again every 20 s."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.events = 0
        self.errors = []
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                self.errors.append(f"{path}: {r.status}")
            return json.loads(body)
        finally:
            c.close()

    def snapshot(self):
        return self.get("/api/twins?" + urllib.parse.urlencode({"fields": FIELDS, "limit": 50}))

    def run(self):
        try:
            ids = [r["id"] for r in self.snapshot()["rows"]]
            for i in ids:
                self.get(f"/api/twins/{urllib.parse.quote(i)}/history?path=reported.heart_rate&from=-5m")
            q = urllib.parse.urlencode({"ids": ",".join(sorted(ids)), "kinds": "state,event",
                                        "fields": FIELDS})
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=None)
            self.conn.request("GET", "/api/stream?" + q, headers={"Accept": "text/event-stream"})
            r = self.conn.getresponse()
            if r.status != 200:
                self.errors.append(f"stream: {r.status}")
                return
            threading.Thread(target=self.snapshots, daemon=True).start()
            while not self.stop.is_set():
                line = r.fp.readline()
                if not line:
                    if not self.stop.is_set():
                        self.errors.append("stream ended")
                    break
                if line.startswith(b"event:"):
                    self.events += 1
        except Exception as e:
            if not self.stop.is_set():
                self.errors.append(repr(e))

    def snapshots(self):
        while not self.stop.wait(20):
            try:
                self.snapshot()
            except Exception as e:
                self.errors.append(repr(e))

    def close(self):
        self.stop.set()
        try:
            self.conn.sock.shutdown(2)
        except Exception:
            pass
        self.th.join(5)


def one_run(fx, b, base, label, n_dev, count):
    m0 = metrics(base)
    a0 = m0.get("twinhub_telemetry_applied_total", 0)
    cpu0 = m0.get("process_cpu_seconds_total", 0)
    total = n_dev * count
    t0 = time.monotonic()
    sim = Sim(fx, b, "--devices", n_dev, "--rate", 0, "--count", count, "--qos", 1,
              "--connections", 4, "--quiet", label="tp")
    samples = []
    deadline = t0 + 600
    while time.monotonic() < deadline:
        a = metrics(base).get("twinhub_telemetry_applied_total", 0) - a0
        samples.append((time.monotonic() - t0, a))
        if a >= total:
            break
        if sim.proc.poll() is not None and len(samples) > 5 and samples[-1][1] == samples[-6][1]:
            break
        time.sleep(0.1)
    t_end = samples[-1][0]
    sim.proc.wait(60)
    summ, text = sim.summary()
    m1 = metrics(base)
    applied = m1.get("twinhub_telemetry_applied_total", 0) - a0

    def when(frac):
        for t, a in samples:
            if a >= frac * total:
                return t
        return float("nan")
    t10, t90 = when(0.1), when(0.9)
    rate = applied / t_end
    mid = 0.8 * total / (t90 - t10) if t90 > t10 else float("nan")
    cpu = m1.get("process_cpu_seconds_total", 0) - cpu0
    other = {k: m1.get(k, 0) - m0.get(k, 0) for k in
             ("twinhub_telemetry_duplicate_total", "twinhub_telemetry_stale_total")}
    r = dict(label=label, applied=applied, seconds=t_end, rate=rate, mid=mid,
             sim_rate=summ["rate"] if summ else float("nan"), hub_cpu=cpu,
             failed=summ["failed"] if summ else -1, **other)
    note("throughput", label,
         f"applied {applied:.0f}/{total} in {t_end:.2f} s = {rate:.0f} msg/s (10-90%: "
         f"{mid:.0f} msg/s); twinsim send rate {r['sim_rate']:.0f} msg/s, failed {r['failed']}; "
         f"hub CPU {cpu:.2f} s ({cpu / max(applied, 1) * 1e6:.1f} us/msg); dup "
         f"{other['twinhub_telemetry_duplicate_total']:.0f} stale "
         f"{other['twinhub_telemetry_stale_total']:.0f}")
    if applied < total:
        problem(f"throughput run {label}: only {applied:.0f} of {total} applied; twinsim: "
                f"{text.strip()[-300:]}")
    return r


def open_browsers(base, n):
    ds = []
    for _ in range(n):
        d = browser("1280,900")
        d.get(f"{base}/#/fleet")
        ds.append(d)
    for d in ds:
        bwait(d, "return document.querySelectorAll('.tile').length >= 50", 30, "50 tiles")
        bwait(d, "return document.getElementById('stream-status').textContent === 'live'", 15,
              "the stream")
    return ds


def part_throughput():
    n_dev, count = A.tp_devices, A.tp_count
    print(f"\n== 3. hub throughput: twinsim --devices {n_dev} --rate 0 --count {count} --qos 1 "
          f"--connections 4, none vs {A.tp_clients} dashboard clients, one hub and store",
          flush=True)
    fx = Fixture("bench-tp")
    runs = []
    try:
        b, hub, base, port = start_hub(fx)
        seed = Sim(fx, b, "--devices", n_dev, "--rate", 0, "--count", 1, "--qos", 1,
                   "--connections", 4, "--quiet", label="seed")
        seed.proc.wait(60)
        wait_until(lambda: len(api(base, "/api/twins?fields=version&limit=1000")["rows"]) >= n_dev,
                   30, "the seeded twins")
        modes = [m for m in A.tp_modes.split(",") if m]
        # A first run on the fresh store is faster than every later one (the histories are
        # not full yet: 600 points a field, 60 s of strip); it warms the store, not counted.
        one_run(fx, b, base, "warm-up (not counted)", n_dev, count)
        order = []
        for i in range(A.tp_pairs):
            for m in modes:
                order += [("none", i), (m, i)]
        for mode, i in order:
            label = f"{mode}#{i + 1}"
            if mode == "none":
                runs.append(one_run(fx, b, base, label, n_dev, count))
            elif mode == "chromium":
                procs_cpu = {}
                ds = open_browsers(base, A.tp_clients)
                try:
                    time.sleep(3)
                    pids = [p for d in ds for p in chrome_procs(d)]
                    c0 = cpu_snapshot(pids)
                    w0 = time.monotonic()
                    r = one_run(fx, b, base, label, n_dev, count)
                    c1 = cpu_snapshot(pids)
                    w = time.monotonic() - w0
                    cc = sum(c1[p] - c0[p] for p in pids if c0.get(p) is not None and
                             c1.get(p) is not None)
                    note("throughput", f"{label} chromium CPU",
                         f"{cc:.1f} s over {w:.1f} s = {cc / w * 100:.0f}% of one core "
                         f"({len(pids)} processes)")
                    runs.append(r)
                    time.sleep(2)
                    lag = []
                    for d in ds:
                        shown = d.execute_script(
                            "const t = document.querySelector('.tile[data-id=\"ecg-0001\"] .hr-value');"
                            " return t ? t.textContent : null")
                        lag.append(shown)
                    hr = api(base, "/api/twins/ecg-0001")["reported"].get("heart_rate")
                    note("throughput", f"{label} pages after the run",
                         f"ecg-0001 heart rate shown {lag}, the hub's {hr}")
                    for d in ds:
                        errs = console_errors(d)
                        if errs:
                            problem(f"{label}: console errors: " + "; ".join(
                                str(e.get("message"))[:200] for e in errs[:3]))
                finally:
                    for d in ds:
                        d.quit()
            elif mode == "python":
                cl = [PyDashboard(port) for _ in range(A.tp_clients)]
                time.sleep(3)
                r = one_run(fx, b, base, label + " (python stand-in)", n_dev, count)
                r["label"] = label
                runs.append(r)
                for c in cl:
                    c.close()
                note("throughput", f"{label} python clients",
                     f"events received {[c.events for c in cl]}; errors "
                     f"{[c.errors[:2] for c in cl if c.errors]}")
            time.sleep(2)
        for k in range(1, len(runs)):  # each run against the none run just before it
            if runs[k - 1]["label"].startswith("none") and not runs[k]["label"].startswith("none"):
                note("throughput", f"pair {runs[k]['label']} / {runs[k - 1]['label']}",
                     f"{runs[k]['rate']:.0f} / {runs[k - 1]['rate']:.0f} = "
                     f"{runs[k]['rate'] / runs[k - 1]['rate']:.2f}; hub CPU/msg "
                     f"{runs[k]['hub_cpu'] / runs[k]['applied'] * 1e6:.0f} vs "
                     f"{runs[k - 1]['hub_cpu'] / runs[k - 1]['applied'] * 1e6:.0f} us")
        none = [r["rate"] for r in runs if r["label"].startswith("none")]
        for m in modes:
            xs = [r["rate"] for r in runs if r["label"].startswith(m)]
            if none and xs:
                note("throughput", f"ratio of medians, {m} {A.tp_clients} / none",
                     f"{statistics.median(xs):.0f} / {statistics.median(none):.0f} = "
                     f"{statistics.median(xs) / statistics.median(none):.2f}")
            xs = [r["mid"] for r in runs if r["label"].startswith(m)]
            nm = [r["mid"] for r in runs if r["label"].startswith("none")]
            if nm and xs:
                note("throughput", f"ratio of medians (10-90%), {m} {A.tp_clients} / none",
                     f"{statistics.median(xs):.0f} / {statistics.median(nm):.0f} = "
                     f"{statistics.median(xs) / statistics.median(nm):.2f}")
        m = metrics(base)
        note("throughput", "hub at the end",
             f"RSS {m.get('process_resident_memory_bytes', 0) / 1e6:.0f} MB, store used "
             f"{m.get('twinhub_store_used_bytes', 0) / 1e6:.0f} MB, twins "
             f"{m.get('twinhub_twins', 0):.0f}")
        rej = {k: v for k, v in m.items() if k.startswith("twinhub_messages_rejected_total") and v}
        if rej:
            problem(f"rejected messages: {rej}")
    finally:
        fx.close()
    return runs


def main():
    parts = A.parts.split(",")
    print(f"bench_dashboard: {os.cpu_count()} CPUs, build {BUILD}", flush=True)
    try:
        v = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True,
                           timeout=20).stdout.strip()
        print(v)
    except Exception:
        pass
    if "latency" in parts:
        part_latency()
    if "cpu" in parts:
        part_cpu()
    if "throughput" in parts:
        part_throughput()
    print("\n" + "=" * 100)
    print("figures")
    print("=" * 100)
    w = max((len(lbl) for _, lbl, _ in RESULTS), default=10)
    for sec, lbl, text in RESULTS:
        print(f"{sec:10} {lbl:{w}}  {text}")
    if PROBLEMS:
        print("\nproblems seen:")
        for p in PROBLEMS:
            print("  - " + p)


if __name__ == "__main__":
    main()

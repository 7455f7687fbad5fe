#!/usr/bin/python3
"""bench_plots: uPlot against Chart.js for the dashboard's plotting load, in headless Chromium.

    /usr/bin/python3 tests/bench/plots/bench_plots.py [--seconds 20] [--tiles 50] [--libs uplot,chartjs]

Needs `npm ci` in tests/bench/plots/ once (chart.js and uplot, pinned by its package-lock.json;
the script runs it when node_modules is missing) and Debian's chromium, chromium-driver and
python3-selenium. bench.html draws 50 sparkline tiles (120 points each, one new reading per tile
per second, the updates spread over the second) and one ECG strip (5 s at 360 Hz, 1,800 points,
scrolled every animation frame) with one library, and this script prints, for each library,
over --seconds after a 3 s warm-up: the requestAnimationFrame intervals (mean, p50, p95, p99,
max, frames over 20 ms and over 33 ms), long tasks (count, total ms) and the main thread's
busy time from Chrome's Performance.getMetrics (TaskDuration, ScriptDuration, LayoutDuration,
as a share of wall time). Figures, not pass/fail.
"""

import argparse
import functools
import http.server
import os
import subprocess
import sys
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

HERE = os.path.dirname(os.path.abspath(__file__))


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def serve(directory):
    handler = functools.partial(Quiet, directory=directory)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def browser():
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--window-size=1280,1000",
              "--disable-dev-shm-usage"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def metrics(d):
    m = d.execute_cdp_cmd("Performance.getMetrics", {})
    return {x["name"]: x["value"] for x in m["metrics"]}


def run(d, base, lib, tiles, seconds):
    d.get(f"{base}/bench.html?lib={lib}&tiles={tiles}")
    t = time.monotonic()
    while not d.execute_script("return window.bench && window.bench.ready"):
        if time.monotonic() - t > 10:
            raise SystemExit(f"{lib}: the bench page did not start")
        time.sleep(0.1)
    time.sleep(3)
    d.execute_cdp_cmd("Performance.enable", {})
    d.execute_script("window.bench.reset()")
    m0, w0 = metrics(d), time.monotonic()
    time.sleep(seconds)
    m1, w1 = metrics(d), time.monotonic()
    frames, longs = d.execute_script("return [window.bench.frames, window.bench.longtasks]")
    wall = w1 - w0
    busy = {k: (m1[k] - m0[k]) for k in ("TaskDuration", "ScriptDuration", "LayoutDuration",
                                         "RecalcStyleDuration")}
    return {
        "lib": lib, "frames": len(frames), "fps": len(frames) / wall,
        "mean": sum(frames) / max(1, len(frames)), "p50": pct(frames, 50),
        "p95": pct(frames, 95), "p99": pct(frames, 99), "max": max(frames or [0]),
        "over20": sum(1 for f in frames if f > 20), "over33": sum(1 for f in frames if f > 33),
        "longtasks": len(longs), "longtask_ms": sum(longs),
        "task": busy["TaskDuration"] / wall * 100, "script": busy["ScriptDuration"] / wall * 100,
        "layout": (busy["LayoutDuration"] + busy["RecalcStyleDuration"]) / wall * 100,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--tiles", type=int, default=50)
    ap.add_argument("--libs", default="uplot,chartjs")
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(HERE, "node_modules", "chart.js")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--silent"],
                       cwd=HERE, check=True)
    srv = serve(HERE)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    d = browser()
    try:
        print(f"{a.tiles} sparkline tiles at 1 Hz + one 360 Hz ECG strip (1,800 points), "
              f"{a.seconds:g} s each, headless Chromium {d.capabilities.get('browserVersion')}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'library':8} {'fps':>5} {'mean':>6} {'p50':>6} {'p95':>6} {'p99':>6} "
              f"{'max':>6} {'>20ms':>6} {'>33ms':>6} {'long':>5} {'long ms':>8} "
              f"{'task %':>7} {'script %':>8} {'layout %':>8}")
        for lib in a.libs.split(","):
            r = run(d, base, lib, a.tiles, a.seconds)
            print(f"{r['lib']:8} {r['fps']:5.1f} {r['mean']:6.2f} {r['p50']:6.2f} "
                  f"{r['p95']:6.2f} {r['p99']:6.2f} {r['max']:6.1f} {r['over20']:6d} "
                  f"{r['over33']:6d} {r['longtasks']:5d} {r['longtask_ms']:8.0f} "
                  f"{r['task']:7.1f} {r['script']:8.1f} {r['layout']:8.1f}")
            sys.stdout.flush()
        print("frame times in ms (requestAnimationFrame intervals); task/script/layout %: "
              "main-thread time from Performance.getMetrics over wall time")
    finally:
        d.quit()
        srv.shutdown()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""test_dashboard: the dashboard (web/) in headless Chromium against a real Mosquitto, twinhub
(serving the dashboard and its API, web/API.md) and twinsim.

    /usr/bin/python3 test_dashboard.py CASE   (TWINHUB_BIN, TWINSIM_BIN, MOSQUITTO, TWINHUB_REPO,
                                               TWINHUB_WEB: the built dashboard, <build>/web)

Needs Debian's chromium, chromium-driver and python3-selenium (skipped, 77, without them). The
hub runs with deploy/twinhub.yaml (waveform ecg=250) and deploy/rules/ecg.yaml (tachycardia:
heart rate > 120 for 3 s; a forecast every 15 s, horizon 60 s). Every case fails on any error
in the browser's console (a network error while the hub is down excepted in `restart`).
Screenshots go to ./dashboard-screenshots/ (the test's directory in the build) and, when
TWINHUB_SCREENSHOTS=DIR is set, to DIR (docs/dashboard-fleet.png, docs/dashboard-twin.png).

fleet: one tile per twin; a device that sends a heart rate of 150 has its tile turn to
    `firing` within 2 s of the rule's transition (the hub's event ts against the browser's
    clock, same machine).
twin: the twin page's heart-rate plot holds the history's points and grows live, the forecast
    appears (drawn at ts + horizon), the ECG strip draws and scrolls.
restart: the hub stops and starts again (same port, same store): the page's stream resumes
    (reset, the snapshot re-read) and the plot grows again.
xss: a twin whose keys and strings hold HTML and script (<img src=x onerror=...>, <script>)
    shows them as text on the fleet and twin pages, and nothing runs.
writes: with a write token configured, the page's write forms are off without the token, and
    a desired change from the page goes through with it (the twin's desired shows it).
pages: the models page lists the rules file's models with the hub's sampled scores plotted, and
    the hub page shows the twins and the counters.
dispatch: the dispatch page against tests/integration/test_dispatch.py's rules file, with Python
    nurses and monitors: the free nurses on the ward plan; an alarm assigned to the nearer nurse
    (the row, the plan's points and its one line); with the other nurse off shift a second alarm
    waits as an open demand (its waiting time counting up) until the first nurse reports done,
    then goes to her (the first served, grey); the counters as /api/hub has them; a nurse's
    skill holding HTML shows as text; the twin pages' assignment lines; leaving the page stops
    its polling.
csp: / and the files under it carry the CSP of web/API.md; index.html has no inline script,
    style or event handler; no JS file uses innerHTML, eval or new Function.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from harness import (TWINHUB_BIN, TWINSIM_BIN, Broker, Checks, Hub, MqttClient, TestFailure,
                     check, check_eq, child_env, free_port, now_ms, pack, run_case, spawn, unpack,
                     wait_until)

REPO = os.environ.get("TWINHUB_REPO", os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(REPO, "deploy", "twinhub.yaml")
RULES = os.path.join(REPO, "deploy", "rules", "ecg.yaml")
WEB = os.environ.get("TWINHUB_WEB") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(TWINHUB_BIN or "."))), "web")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = os.path.join(os.getcwd(), "dashboard-screenshots")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
XSS = "<img src=x onerror=window.__pwned=1>"
XSS_SCRIPT = "<script>window.__pwned=2</script><b>bold</b>"
XSS_KEY = "<img src=x onerror=alert(1)>"  # keys may not hold '.': an alert would show it ran

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import NoAlertPresentException
except ImportError:
    webdriver = None


class Sim:
    """A twinsim process (one connection per device), stopped with SIGINT."""

    def __init__(self, fx, broker, *args):
        self.log = fx.path("twinsim.log")
        fx.logs.append(("twinsim", self.log))
        argv = [TWINSIM_BIN, "--broker", broker.url] + list(args)
        self.proc = spawn(argv, self.log, fx.dir, child_env())
        fx.procs.append(self)

    def __repr__(self):
        return f"twinsim(pid={self.proc.pid})"

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Browser:
    """Headless Chromium through chromedriver, closed with the Fixture."""

    def __init__(self, fx, base):
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                  "--window-size=1400,1000", "--disable-gpu"):
            o.add_argument(a)
        o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.base = base
        self.d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        self.logs = []
        fx.procs.append(self)

    def __repr__(self):
        return "chromium"

    def open(self, hash_):
        self.d.get(f"{self.base}/{hash_}")

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def wait(self, script, timeout, what, *args):
        return wait_until(lambda: self.js(script, *args), timeout, what, interval=0.1)

    def console(self):
        """Every console entry so far (read once: chromedriver hands each out once)."""
        self.logs += self.d.get_log("browser")
        return self.logs

    def errors(self, allow=None):
        return [e for e in self.console() if e.get("level") == "SEVERE" and
                not (allow and allow(e))]

    def shot(self, name, full=False):
        os.makedirs(SHOTS, exist_ok=True)
        paths = [os.path.join(SHOTS, name)]
        if os.environ.get("TWINHUB_SCREENSHOTS"):
            os.makedirs(os.environ["TWINHUB_SCREENSHOTS"], exist_ok=True)
            paths.append(os.path.join(os.environ["TWINHUB_SCREENSHOTS"], name))
        if full:  # the whole page: make the window as tall as the document
            h = self.js("return document.documentElement.scrollHeight")
            self.d.set_window_size(1400, min(max(1000, h + 40), 4000))
            time.sleep(0.5)
        for p in paths:
            self.d.save_screenshot(p)
        if full:
            self.d.set_window_size(1400, 1000)
        print(f"screenshot: {paths[-1]}")

    def cleanup(self):
        try:
            self.d.quit()
        except Exception:
            pass


def start(fx, devices=6, sets=None, rate="2"):
    check(os.path.isfile(os.path.join(WEB, "index.html")),
          f"no dashboard at {WEB} (build the 'dashboard' target; web/setup.sh first)")
    b = Broker(fx)
    port = free_port()
    hub = Hub(fx, b, config=CONFIG, sets={"rules.file": RULES, "log.level": "info",
                                          "http.listen": f"127.0.0.1:{port}",
                                          "http.dashboard": WEB, **(sets or {})})
    sim = Sim(fx, b, "--devices", str(devices), "--rate", rate, "--seed", "8", "--quiet") \
        if devices else None
    return b, hub, sim, f"http://127.0.0.1:{port}"


def api(base, path, token=None, body=None):
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def api_or_empty(base, path):
    """api(), or {} while the twin is not there yet (404) or the hub is not answering."""
    try:
        return api(base, path)
    except (urllib.error.URLError, OSError, ValueError):
        return {}


class Device:
    """A device of the test's own on MQTT: telemetry with increasing seq."""

    def __init__(self, fx, b, dev_id):
        self.id = dev_id
        self.c = MqttClient(fx, b, dev_id)
        self.seq = 0
        self.c.publish(f"devices/{dev_id}/status", b"online", retain=True)

    def send(self, **values):
        self.seq += 1
        self.c.publish(f"devices/{self.id}/telemetry",
                       pack({"seq": self.seq, "ts": now_ms(), **values}))


def no_console_errors(br, allow=None):
    errs = br.errors(allow)
    check(not errs, "errors in the browser's console:\n  " +
          "\n  ".join(f"{e.get('source')}: {e.get('message')}" for e in errs))


def tiles(br):
    return br.js("return [...document.querySelectorAll('.tile')].map(t => t.dataset.id)")


# ---------------------------------------------------------------------------------------------

def case_fleet(fx):
    b, hub, sim, base = start(fx, devices=6)
    hot = Device(fx, b, "ecg-hot")
    ev = MqttClient(fx, b, "events", subscribe=["twins/+/events"])
    for _ in range(4):
        hot.send(heart_rate=80, spo2=97, temperature=36.8)
        time.sleep(0.25)
    expect = wait_until(lambda: (lambda r: r if len(r) == 7 else None)(
        [row["id"] for row in api(base, "/api/twins?fields=connected&limit=100")["rows"]]),
        20, "7 twins in /api/twins")
    br = Browser(fx, base)
    br.open("#/fleet")
    br.wait("return document.querySelectorAll('.tile').length === arguments[0]", 20,
            "one tile per twin", len(expect))
    check_eq(sorted(tiles(br)), sorted(expect), "the fleet page's tiles")
    br.wait("return document.getElementById('stream-status').textContent === 'live'", 10,
            "the stream to be live")
    # the browser's clock at the moment the tile turns firing
    br.js("""window.__firingAt = null;
      const t = document.querySelector('.tile[data-id="ecg-hot"]');
      new MutationObserver(() => { if (t.dataset.alarm === 'firing' && !window.__firingAt)
        window.__firingAt = Date.now(); }).observe(t, {attributes: true});""")
    check(br.js("return document.querySelector('.tile[data-id=\"ecg-hot\"]').dataset.alarm") != "firing",
          "ecg-hot's tile is firing before its heart rate went up")
    mark = ev.count()
    t_end = time.monotonic() + 12
    fired = None
    while time.monotonic() < t_end and not fired:
        hot.send(heart_rate=150, spo2=97, temperature=36.8)
        for m in ev.messages("twins/ecg-hot/events", mark):
            e = unpack(m.payload)
            if e.get("type") == "rule" and e.get("rule") == "tachycardia" and e.get("state") == "firing":
                fired = e
        time.sleep(0.3)
    check(fired, "no tachycardia firing event for ecg-hot within 12 s of heart rate 150")
    at = br.wait("return window.__firingAt", 5, "ecg-hot's tile to turn firing")
    late = at - fired["ts"]
    print(f"tile firing {late} ms after the rule fired (event ts {fired['ts']})")
    check(late <= 2000, f"the tile turned firing {late} ms after the rule fired (limit 2000)")
    txt = br.js("return document.querySelector('.tile[data-id=\"ecg-hot\"]').textContent")
    check("150" in txt and "tachycardia" in txt, f"ecg-hot's tile text: {txt!r}")
    time.sleep(3)  # sparklines fill
    br.shot("dashboard-fleet.png")
    # a filter in the rules' language
    f = br.d.find_element(By.ID, "fleet-filter")
    f.clear()
    f.send_keys("reported.heart_rate > 120 and connected")
    br.d.find_element(By.CSS_SELECTOR, "#fleet-form button[type=submit]").click()
    br.wait("return [...document.querySelectorAll('.tile')].some(t => t.dataset.id === 'ecg-hot')"
            " && document.getElementById('fleet-summary').textContent.includes('matching')", 10,
            "the filtered page")
    got = tiles(br)
    want = [r["id"] for r in api(base, "/api/twins?where=" + urllib.request.quote(
        "reported.heart_rate > 120 and connected") + "&fields=connected")["rows"]]
    check("ecg-hot" in got and set(got) <= set(want) | {"ecg-hot"},
          f"filtered tiles {got}, the API's {want}")
    no_console_errors(br)


def case_twin(fx):
    b, hub, sim, base = start(fx, devices=3)
    dev = "ecg-0001"
    wait_until(lambda: len(api_or_empty(base, f"/api/twins/{dev}/history?path=reported.heart_rate&from=-5m")
                           .get("points", [])) >= 10, 30, "10 heart-rate points in the history")
    hist = api(base, f"/api/twins/{dev}/history?path=reported.heart_rate&from=-5m")["points"]
    br = Browser(fx, base)
    br.open(f"#/twin/{dev}")
    n0 = br.wait("const n = +document.getElementById('hr-plot').dataset.points; "
                 "return n >= arguments[0] ? n : 0", 15, "the history's points in the plot",
                 len(hist))
    print(f"history {len(hist)} points, the plot {n0}")
    n1 = br.wait("const n = +document.getElementById('hr-plot').dataset.points; "
                 "return n >= arguments[0] + 4 ? n : 0", 15, "the plot to grow live", n0)
    print(f"the plot grew live to {n1}")
    # the ECG strip draws and scrolls
    e0 = br.wait("const d = document.getElementById('ecg-strip').dataset; "
                 "return +d.points > 200 ? +d.end : 0", 15, "the ECG strip to draw")
    time.sleep(1)
    e1 = int(br.js("return +document.getElementById('ecg-strip').dataset.end"))
    pts = int(br.js("return +document.getElementById('ecg-strip').dataset.points"))
    check(800 <= e1 - e0 <= 1600, f"the strip scrolled {e1 - e0} ms in 1 s")
    print(f"ECG strip: {pts} samples in its 5 s window, scrolled {e1 - e0} ms in 1 s")
    # the forecast (every 15 s in ecg.yaml, once the monitor has a minute's delta)
    br.wait("return +document.getElementById('hr-plot').dataset.forecasts >= 1", 45,
            "a forecast on the heart-rate plot")
    note = br.js("return document.getElementById('forecast-note').textContent")
    doc = api(base, f"/api/twins/{dev}")
    p = doc.get("predicted", {}).get("hr_forecast")
    check(p and f"{p['value']:.1f}" in note or "hr_forecast" in note, f"forecast note {note!r}, doc {p}")
    check("rule" in br.js("return document.getElementById('rules-table').textContent") or
          br.js("return document.querySelectorAll('#rules-table tr').length") > 1,
          "the rules table")
    version = br.js("return document.getElementById('twin-version').textContent")
    check(version.isdigit(), f"the twin's version shown: {version!r}")
    time.sleep(2)
    br.shot("dashboard-twin.png", full=True)
    no_console_errors(br)


def case_restart(fx):
    b, hub, sim, base = start(fx, devices=2)
    dev = "ecg-0002"
    wait_until(lambda: api_or_empty(base, f"/api/twins/{dev}").get("version", 0) > 3, 20, "telemetry")
    br = Browser(fx, base)
    br.open(f"#/twin/{dev}")
    br.wait("return document.getElementById('stream-status').textContent === 'live' && "
            "+document.getElementById('hr-plot').dataset.points > 2", 15, "the live page")
    hub.stop()
    down_from = now_ms()
    br.wait("return document.getElementById('stream-status').textContent !== 'live'", 10,
            "the page to see the stream end")
    time.sleep(2)
    n_down = int(br.js("return +document.getElementById('hr-plot').dataset.points"))
    hub.start()
    up_at = now_ms()
    br.wait("return document.getElementById('stream-status').textContent === 'live'", 15,
            "the stream to resume after the restart")
    v_hub = api(base, f"/api/twins/{dev}")["version"]
    br.wait("return +document.getElementById('twin-version').textContent >= arguments[0]", 10,
            "the page to show the twin's version after the restart", v_hub)
    br.wait("return +document.getElementById('hr-plot').dataset.points >= arguments[0] + 3", 15,
            "the plot to grow after the restart", n_down)
    print(f"resumed {now_ms() - up_at} ms after the hub was back")

    def outage(e):  # a network error of the stream's reconnects while the hub was down
        return e.get("source") == "network" and down_from - 1000 <= e.get("timestamp", 0) <= up_at + 3000
    no_console_errors(br, outage)


def case_xss(fx):
    b, hub, sim, base = start(fx, devices=0)
    d = Device(fx, b, "ecg-xss")
    d.send(heart_rate=72, spo2=97, note=XSS, **{XSS_KEY: XSS_SCRIPT, "nested": {"<svg onload=alert(2)>": "x"}})
    wait_until(lambda: api_or_empty(base, "/api/twins/ecg-xss").get("reported", {}).get("note") == XSS, 10,
               "the twin holding HTML")
    br = Browser(fx, base)
    for page in ("#/fleet", "#/twin/ecg-xss"):
        br.open(page)
        time.sleep(3)
        body = br.js("return document.body.textContent")
        if page.startswith("#/twin"):
            for s in (XSS, XSS_KEY, XSS_SCRIPT, "<svg onload=alert(2)>"):
                check(s in body, f"{page}: {s!r} not shown as text")
        try:
            alert = br.d.switch_to.alert.text
        except NoAlertPresentException:
            alert = None
        check(alert is None, f"{page}: the twin's script ran (an alert: {alert!r})")
        check(br.js("return window.__pwned === undefined"), f"{page}: the twin's script ran")
        check_eq(br.js("return document.querySelectorAll('main img, main script, main svg, main b').length"),
                 0, f"{page}: elements made from the twin's strings")
    br.shot("dashboard-xss.png", full=True)
    no_console_errors(br)


def case_writes(fx):
    tok = fx.path("write.token")
    with open(tok, "w") as f:
        f.write(f"dashboard-write-token-{os.getpid()}\n")  # the hub wants 16 characters or more
    b, hub, sim, base = start(fx, devices=1, sets={"http.write_token_file": tok})
    dev = "ecg-0001"
    wait_until(lambda: api_or_empty(base, f"/api/twins/{dev}").get("version", 0) > 1, 20, "the twin")
    br = Browser(fx, base)
    br.open(f"#/twin/{dev}")
    br.wait("return document.querySelector('#desired-form button')", 10, "the write forms")
    check(br.js("return document.querySelector('#desired-form button').disabled"),
          "the desired form is on without a write token")
    br.d.find_element(By.ID, "write-token").send_keys(open(tok).read().strip())
    br.d.find_element(By.CSS_SELECTOR, "#tokens button[type=submit]").click()
    br.wait("return document.querySelector('#desired-form button') && "
            "!document.querySelector('#desired-form button').disabled", 10, "the forms with the token")
    br.d.find_element(By.ID, "desired-json").send_keys('{"alarm_hr_high": 133}')
    br.d.find_element(By.CSS_SELECTOR, "#desired-form button").click()
    br.wait("return document.getElementById('write-result').textContent.includes('version')", 10,
            "the page's desired change to be accepted")
    check_eq(api(base, f"/api/twins/{dev}")["desired"].get("alarm_hr_high"), 133,
             "desired.alarm_hr_high after the page's write")
    br.wait("return document.getElementById('state-table').textContent.includes('alarm_hr_high')", 10,
            "the desired change in the state table")
    br.d.find_element(By.ID, "cmd-name").send_keys("ping")
    br.d.find_element(By.CSS_SELECTOR, "#command-form button").click()
    br.wait("return document.getElementById('write-result').textContent.includes('queued')", 10,
            "the page's command")
    br.wait("return document.getElementById('commands-table').textContent.includes('ping')", 10,
            "the command in the queue")
    no_console_errors(br)


def case_dispatch(fx):
    import test_dispatch as td  # its rules file and its nurses and monitors
    rules = fx.path("dispatch.yaml")
    with open(rules, "w") as f:
        f.write(td.RULES)
    b, hub, sim, base = start(fx, devices=0, sets={"rules.file": rules})
    n1 = td.nurse(fx, b, 1, 0, 4, skills=("ward", XSS))
    n2 = td.nurse(fx, b, 2, 30, 4)
    m1 = td.monitor(fx, b, 1, 27, 0)
    m2 = td.monitor(fx, b, 2, 3, 0)
    for d in (n1, n2, m1, m2):
        wait_until(lambda: api_or_empty(base, f"/api/twins/{d.id}").get("seq", 0) >= 1, 10,
                   f"{d.id} in the store")
    plan = "const p = document.getElementById('ward-plan'); "
    br = Browser(fx, base)
    br.open("#/dispatch")
    br.wait(plan + "return p && p.dataset.points === '2' && p.dataset.lines === '0'", 10,
            "the two free nurses on the plan")
    check_eq(sorted(br.js("return [...document.querySelectorAll('#ward-plan .pt')].map(g => "
                          "g.dataset.id + ':' + g.dataset.kind)")),
             ["nurse-1:resource", "nurse-2:resource"], "the plan before any alarm")
    check_eq(br.js("return document.querySelector('nav a.active').textContent"), "Dispatch",
             "the nav link")
    check("no demand waiting" in br.js("return document.getElementById('dispatch-open').textContent"),
          "the open demands before any alarm")
    # the first alarm: nurse 2 is 5 m away, nurse 1 24.3 m
    m1.send(heart_rate=130)
    cmd = td.wait_attend(n2)
    br.wait("return document.querySelector('#assigned-table tr[data-demand=\"ecg-1\"]"
            "[data-resource=\"nurse-2\"].dispatch-assigned')", 10, "the assignment row")
    row = br.js("return document.querySelector('#assigned-table tr[data-demand=\"ecg-1\"]').textContent")
    check("ecg-1" in row and "nurse-2" in row and "assigned" in row and "5" in row,
          f"the assignment row: {row!r}")
    br.wait(plan + "return p.dataset.points === '3' && p.dataset.lines === '1' && "
            "p.querySelector('.pt[data-id=\"ecg-1\"]').dataset.kind === 'assigned' && "
            "p.querySelector('line.route[data-resource=\"nurse-2\"][data-demand=\"ecg-1\"]')", 10,
            "the plan: two nurses, the assigned bed, a line from nurse 2 to it")
    # nurse 1 goes off shift: the second alarm waits
    n1.send(on_shift=False)
    wait_until(lambda: api(base, "/api/twins/nurse-1")["reported"].get("on_shift") is False, 10,
               "nurse 1 off shift")
    m2.send(heart_rate=135)
    wait_until(lambda: any(r["demand"] == "ecg-2" and r["state"] == "open"
                           for r in api(base, "/api/dispatch")["records"]), 10, "ecg-2 open")
    sel = "document.querySelector('#open-table tr[data-demand=\"ecg-2\"] .counting')"
    w0 = br.wait(f"return {sel} && {sel}.textContent", 10, "ecg-2 as an open demand")
    br.wait(plan + "return p.dataset.points === '4' && p.dataset.lines === '1' && "
            "p.querySelector('.pt[data-id=\"ecg-2\"]').dataset.kind === 'open'", 10,
            "the plan with the open demand")
    time.sleep(3.2)  # the cells count every second: at least 2 s more
    w1 = br.js(f"return {sel}.textContent")
    check(int(w1.split()[0]) >= int(w0.split()[0]) + 2, f"the waiting time counts up: {w0!r}, then {w1!r}")
    check("ecg-1" in br.js("return document.getElementById('assigned-table').textContent"),
          "ecg-1 still assigned while ecg-2 waits")
    br.shot("dashboard-dispatch.png", full=True)
    # nurse 2 is done with ecg-1: she takes ecg-2; ecg-1 is served while its alarm lasts
    n2.ack(cmd, "succeeded")
    td.wait_attend(n2, 2)
    br.wait("return document.querySelector('#assigned-table tr[data-demand=\"ecg-2\"]"
            "[data-resource=\"nurse-2\"].dispatch-assigned') && "
            "document.querySelector('#assigned-table tr[data-demand=\"ecg-1\"].dispatch-served') && "
            "!document.getElementById('open-table')", 10, "ecg-2 assigned, ecg-1 served")
    br.wait(plan + "return p.dataset.points === '4' && p.dataset.lines === '1' && "
            "p.querySelector('line.route[data-demand=\"ecg-2\"]') && "
            "p.querySelector('.pt[data-id=\"ecg-1\"]').dataset.kind === 'served'", 10,
            "the plan: the line to ecg-2, ecg-1 grey")
    # the counters, as /api/hub has them (the page reads them every 2 s)
    c = api(base, "/api/hub")["counters"]
    want = {"assigned": c["twinhub_dispatch_assigned_total"], "completed": c["twinhub_dispatch_completed_total"],
            "decisions": c["twinhub_dispatch_decisions_total"]}
    check_eq((want["assigned"], want["completed"]), (2, 1), "the hub's counters")
    br.wait("return [...document.querySelectorAll('#dispatch-summary [data-counter]')].map(s => "
            "s.dataset.counter + '=' + s.textContent).join(' ').includes(arguments[0])", 10,
            "the summary's counters", f"assigned={want['assigned']:g} completed={want['completed']:g}")
    summary = br.js("return document.getElementById('dispatch-summary').textContent")
    check("greedy" in summary and "mean wait" in summary, f"the summary: {summary!r}")
    # the nurse's skill holding HTML: text in the plan's tooltip, nothing made of it
    check(XSS in br.js("return document.getElementById('ward-plan').textContent"),
          "nurse 1's skills in the plan's tooltip")
    check(br.js("return window.__pwned === undefined"), "the skill's script ran")
    check_eq(br.js("return document.querySelectorAll('main img, main script, main b').length + "
                   "document.querySelectorAll('main svg').length"), 1, "elements made from the skill")
    # the twin pages: a line each
    br.open("#/twin/nurse-2")
    br.wait("const a = document.getElementById('twin-assignment'); return a && !a.hidden && "
            "a.querySelector('a[href=\"#/twin/ecg-2\"]') && a.textContent.includes('cost 27')", 10,
            "nurse 2's assignment line (desired.task)")
    br.open("#/twin/ecg-2")
    br.wait("const a = document.getElementById('twin-assignment'); return a && !a.hidden && "
            "a.querySelector('a[href=\"#/twin/nurse-2\"]') && a.textContent.includes('assigned')", 10,
            "ecg-2's assignment line (its record)")
    br.open("#/twin/nurse-1")
    time.sleep(1.5)
    check(br.js("return document.getElementById('twin-assignment').hidden"), "nurse 1 has no assignment")
    # leaving the page stops its polling
    br.open("#/dispatch")
    br.wait("return document.getElementById('assigned-table')", 10, "the page again")
    br.js("location.hash = '#/hub'; performance.clearResourceTimings();")
    time.sleep(4.5)
    left = br.js("return performance.getEntriesByType('resource').filter(e => "
                 "/\\/api\\/(dispatch|twins)/.test(e.name)).length")
    check_eq(left, 0, "requests of the dispatch page after leaving it")
    no_console_errors(br)


def case_csp(fx):
    b, hub, sim, base = start(fx, devices=0)
    c = Checks()
    files = [p for p in glob.glob(os.path.join(WEB, "**", "*"), recursive=True) if os.path.isfile(p)]
    for path in ["/"] + ["/" + os.path.relpath(p, WEB) for p in files]:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            c.eq(r.headers.get("Content-Security-Policy"), CSP, f"CSP of {path}")
    html = open(os.path.join(WEB, "index.html")).read()
    for m in re.finditer(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I):
        c.check("src=" in m.group(1) and not m.group(2).strip(), f"inline script: {m.group(0)[:80]}")
    c.check(not re.search(r"<style\b", html, re.I), "a <style> element in index.html")
    c.check(not re.search(r"\sstyle\s*=", html, re.I), "a style attribute in index.html")
    c.check(not re.search(r"\son[a-z]+\s*=", html, re.I), "an inline event handler in index.html")
    for p in glob.glob(os.path.join(WEB, "js", "*.js")):
        src = open(p).read()
        for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function",
                    "document.write"):
            c.check(bad not in src, f"{os.path.basename(p)} uses {bad}")
    c.done()


def case_pages(fx):
    b, hub, sim, base = start(fx, devices=3)
    wait_until(lambda: len(api_or_empty(base, "/api/twins?fields=version").get("rows", [])) == 3,
               20, "3 twins")
    m = wait_until(lambda: (lambda r: r if r.get("history") else None)(api(base, "/api/models")),
                   15, "a sample of the models' scores (the hub takes one every 10 s)")
    names = sorted(x["model"] for x in m["models"])
    check_eq(names, ["hr_forecast", "hr_naive"], "the models of deploy/rules/ecg.yaml")
    check(m["history"] and all(set(h["models"]) == set(names) for h in m["history"]),
          f"the hub's samples of the models' scores: {m['history'][:2]}")
    br = Browser(fx, base)
    br.open("#/models")
    br.wait("return document.querySelectorAll('#models-table tbody tr').length === 2", 10,
            "a row per model")
    br.wait("return document.querySelectorAll('#model-plots .uplot').length === 4", 10,
            "two plots per model")
    txt = br.js("return document.getElementById('models-table').textContent")
    check("hr_forecast" in txt and "hr_naive" in txt, f"the models table: {txt!r}")
    br.open("#/hub")
    br.wait("return (document.getElementById('hub-twins') || {}).textContent === '3'", 10,
            "the hub page's twins")
    br.wait("return document.getElementById('hub-counters').textContent"
            ".includes('twinhub_telemetry_applied_total')", 10, "the hub page's counters")
    no_console_errors(br)


CASES = {"fleet": case_fleet, "twin": case_twin, "restart": case_restart, "xss": case_xss,
         "writes": case_writes, "pages": case_pages, "dispatch": case_dispatch, "csp": case_csp}

if __name__ == "__main__":
    if webdriver is None or not os.access(CHROMEDRIVER, os.X_OK):
        print("skipped: needs chromium, chromium-driver and python3-selenium", file=sys.stderr)
        sys.exit(77)
    sys.exit(run_case(CASES))

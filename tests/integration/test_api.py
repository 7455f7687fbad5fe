#!/usr/bin/python3
"""test_api: the query and history API over HTTP and MQTT, the live stream and the writes, against
a real Mosquitto and twinhub (issue 12, parts 1-3 and 5).

    /usr/bin/python3 test_api.py CASE   (TWINHUB_BIN, TWINCTL_BIN, MOSQUITTO in the env)

query: 30 twins with known heart rates; GET /api/twins and hub/query (MQTT 5, correlation data
    echoed) give the same rows for a filter, fields, an order both ways and a page size; paging
    with the cursor visits every match once; an expression error is a 400 naming the part and the
    column, on both; twinctl query agrees with them.
history: raw points and one-second buckets (min, max, avg, count) of a field between two times,
    over HTTP and twins/{id}/history; bad ranges are 400, a missing twin 404.
stream: /api/stream sends committed states (the row of `fields`), events and predictions,
    filtered by ids, a query and kinds; a reconnect with Last-Event-ID gets exactly what was missed
    while the buffer holds it; past the buffer (http.stream_buffer 50) the first event is a reset
    that says how many were missed; after a hub restart, a reset saying so.
writes: POST desired and commands need the write token (403 with none or the read token, 401
    with a wrong one); accepted writes change the twin like desired/set (version, 409); the reply
    is the HTTP answer and is not published on the MQTT reply topics; reads need the read token.
"""

import http.client
import json
import os
import socket
import threading
import time
import urllib.parse

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from harness import (Broker, Checks, Hub, MqttClient, TestFailure, check, check_eq, now_ms,
                     pack, run_case, twinctl, unpack, wait_until)

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"


def get(hub, path, token=None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    st, hd, body = hub.http(path, headers=h)
    try:
        return st, json.loads(body) if body else None
    except ValueError:
        raise TestFailure(f"GET {path}: not JSON ({st}): {body[:300]!r}")


def post(hub, path, obj, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", hub.http_port(), timeout=10)
    try:
        h = {"Content-Type": "application/json"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        conn.request("POST", path, body=json.dumps(obj), headers=h)
        r = conn.getresponse()
        body = r.read()
        return r.status, json.loads(body) if body else None
    finally:
        conn.close()


def q(**args):
    return "/api/twins?" + urllib.parse.urlencode(args)


def fleet(fx, b, hub, n=30):
    """n twins ecg-00..: heart_rate 60+3i, spo2 99 - i % 5, connected by their status."""
    dev = MqttClient(fx, b, "devs")
    w = MqttClient(fx, b, "watch", subscribe=["twins/+/state"])
    for i in range(n):
        tid = f"ecg-{i:02d}"
        dev.publish(f"devices/{tid}/telemetry",
                    pack({"seq": 1, "heart_rate": 60 + 3 * i, "spo2": 99 - i % 5}))
        if i % 3 == 0:
            dev.publish(f"devices/{tid}/status", b"online")
    wait_until(lambda: len({m.topic for m in w.messages()
                            if m.topic.endswith("/state")}) >= n, 20, "every twin's state")
    # presence of every third twin committed too
    wait_until(lambda: get(hub, q(where="connected", limit=100))[1]["matched"] == (n + 2) // 3,
               10, "presence committed")
    return dev


# ---------------------------------------------------------------------------------------------
# query
# ---------------------------------------------------------------------------------------------

class Requester:
    """An MQTT 5 service: request with a response topic and correlation data, wait the reply."""

    def __init__(self, fx, b):
        self.c = MqttClient(fx, b, "svc", protocol=mqtt.MQTTv5, subscribe=["svc/reply/#"])
        self.n = 0

    def ask(self, topic, obj, timeout=10):
        self.n += 1
        corr = f"c-{self.n}".encode()
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = "svc/reply/x"
        p.CorrelationData = corr
        start = self.c.count()
        self.c.publish(topic, json.dumps(obj).encode(), properties=p)
        m = self.c.wait_for(lambda m: m.topic == "svc/reply/x" and m.corr == corr,
                            timeout, f"the reply to {topic} {obj}", start=start)
        return unpack(m.payload)


def case_query(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    fleet(fx, b, hub)
    rq = Requester(fx, b)
    c = Checks()

    where = "reported.heart_rate > 120 and reported.spo2 < 98"
    want = sorted(f"ecg-{i:02d}" for i in range(30) if 60 + 3 * i > 120 and 99 - i % 5 < 98)
    st, ans = get(hub, q(where=where, fields="reported.heart_rate,connected", limit=100))
    c.eq(st, 200, "GET /api/twins status")
    c.eq([r["id"] for r in ans["rows"]], want, "ids matched, in id order")
    c.eq(ans["matched"], len(want), "matched")
    c.eq(ans["scanned"], 30, "scanned")
    for r in ans["rows"]:
        i = int(r["id"][4:])
        c.eq(r["reported.heart_rate"], 60 + 3 * i, f"{r['id']} heart_rate field")
        c.eq(r["connected"], i % 3 == 0, f"{r['id']} connected field")
    mq = rq.ask("hub/query", {"where": where, "fields": ["reported.heart_rate", "connected"],
                              "limit": 100})
    c.eq(mq.get("rows"), ans["rows"], "hub/query rows equal the HTTP rows")

    # order both ways, paging with the cursor
    for order, rev in (("reported.heart_rate", False), ("-reported.heart_rate", True)):
        seen, cursor, pages = [], None, 0
        while True:
            args = {"where": "reported.heart_rate >= 90", "order": order, "limit": 4,
                    "fields": "reported.heart_rate"}
            if cursor:
                args["cursor"] = cursor
            st, ans = get(hub, q(**args))
            c.eq(st, 200, f"page {pages} of order {order}")
            seen += [r["reported.heart_rate"] for r in ans["rows"]]
            pages += 1
            cursor = ans["next"]
            if not cursor or pages > 20:
                break
        want_hr = sorted((60 + 3 * i for i in range(30) if 60 + 3 * i >= 90), reverse=rev)
        c.eq(seen, want_hr, f"every match once, in order {order}")
        c.eq(pages, (len(want_hr) + 3) // 4, f"pages of 4 for order {order}")
    # by id through MQTT with its cursor
    ids, cursor = [], None
    for _ in range(20):
        req = {"limit": 7, "fields": "version"}
        if cursor:
            req["cursor"] = cursor
        a = rq.ask("hub/query", req)
        ids += [r["id"] for r in a["rows"]]
        cursor = a.get("next")
        if not cursor:
            break
    c.eq(ids, [f"ecg-{i:02d}" for i in range(30)], "hub/query pages by id visit every twin once")

    # errors name the part and the column, on both
    st, ans = get(hub, q(where="reported.heart_rate > avgg(1)"))
    c.eq(st, 400, "bad where: status")
    c.check(ans and ans["message"].startswith("where:1:"), f"bad where message: {ans}")
    st, ans = get(hub, q(order="reported.heart_rate +"))
    c.check(st == 400 and ans["message"].startswith("order:1:"), f"bad order: {st} {ans}")
    st, ans = get(hub, q(limit=100000))
    c.check(st == 400 and "limit" in ans["message"], f"limit over query.max_limit: {st} {ans}")
    mq = rq.ask("hub/query", {"where": "reported.heart_rate >> 1"})
    c.check(mq.get("code") == 400 and mq.get("message", "").startswith("where:1:22"),
            f"hub/query bad where: {mq}")
    mq = rq.ask("hub/query", {"wehre": "true"})
    c.check(mq.get("code") == 400 and "wehre" in mq.get("message", ""),
            f"hub/query unknown key: {mq}")

    # twinctl query agrees
    rc, out, err = twinctl(hub.db, "query", where, "--fields", "reported.heart_rate,connected")
    c.eq(rc, 0, f"twinctl query exit (stderr {err.strip()!r})")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    c.eq([r["id"] for r in rows], want, "twinctl query ids")
    c.done()


# ---------------------------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------------------------

def case_history(fx):
    b = Broker(fx)
    hub = Hub(fx, b)
    dev = MqttClient(fx, b, "dev")
    w = MqttClient(fx, b, "watch", subscribe=["twins/ecg-h/state"])
    rq = Requester(fx, b)
    T = (now_ms() // 1000) * 1000 - 20000  # a whole second, 20 s ago
    pts = [(T + 250 * k, 60.0 + (k % 7)) for k in range(40)]  # 4 per second for 10 s
    for k, (ts, v) in enumerate(pts):
        dev.publish("devices/ecg-h/telemetry", pack({"seq": k + 1, "ts": ts, "heart_rate": v}))
    wait_until(lambda: any(unpack(m.payload).get("version") == 40 for m in w.messages()), 20,
               "the 40th version")
    c = Checks()
    lo, hi = T + 1000, T + 5999
    st, ans = get(hub, f"/api/twins/ecg-h/history?path=reported.heart_rate&from={lo}&to={hi}")
    c.eq(st, 200, "raw history status")
    want = [[ts, v] for ts, v in pts if lo <= ts <= hi]
    c.eq(ans.get("points"), want, "raw points between from and to")
    st, ans = get(hub, f"/api/twins/ecg-h/history?path=reported.heart_rate&from={lo}&to={hi}"
                       f"&step=1s")
    c.eq(st, 200, "bucket history status")
    buckets = []
    for s in range(lo, hi, 1000):
        vs = [v for ts, v in pts if s <= ts < s + 1000]
        buckets.append([s, min(vs), max(vs), sum(vs) / len(vs), len(vs)])
    got = ans.get("buckets") or []
    c.eq(len(got), len(buckets), "one bucket per second")
    for g, e in zip(got, buckets):
        c.check(g[0] == e[0] and g[1] == e[1] and g[2] == e[2] and abs(g[3] - e[3]) < 1e-9 and
                g[4] == e[4], f"bucket {g} against {e}")
    mq = rq.ask("twins/ecg-h/history", {"path": "reported.heart_rate", "from": lo, "to": hi,
                                        "step": 1000})
    c.eq(mq.get("buckets"), got, "twins/{id}/history buckets equal the HTTP ones")
    st, ans = get(hub, f"/api/twins/ecg-h/history?path=reported.heart_rate&from={lo}&to={hi}"
                       f"&limit=3")
    c.check(st == 200 and len(ans["points"]) == 3 and ans["more"], f"limit 3: {ans}")
    st, ans = get(hub, f"/api/twins/ecg-h/history?path=reported.heart_rate&from={hi}&to={lo}")
    c.eq(st, 400, "to before from")
    st, ans = get(hub, "/api/twins/ecg-h/history?path=reported.heart_rate&from=yesterday")
    c.eq(st, 400, "a time that is not one")
    st, ans = get(hub, "/api/twins/nobody/history?path=reported.heart_rate")
    c.eq(st, 404, "no such twin")
    mq = rq.ask("twins/nobody/history", {"path": "reported.heart_rate"})
    c.eq(mq.get("code"), 404, "twins/nobody/history")
    rc, out, err = twinctl(hub.db, "history", "ecg-h", "reported.heart_rate", "--from", str(lo),
                           "--to", str(hi), "--step", "1s")
    c.eq(rc, 0, f"twinctl history --step exit (stderr {err.strip()!r})")
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    c.eq(len(lines), len(buckets), "twinctl history --step: a line per bucket")
    c.done()


# ---------------------------------------------------------------------------------------------
# stream
# ---------------------------------------------------------------------------------------------

class Stream:
    """One /api/stream connection read on a thread: its events as (id, event, data)."""

    def __init__(self, hub, query, last_id=None, token=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", hub.http_port(), timeout=30)
        h = {}
        if last_id:
            h["Last-Event-ID"] = last_id
        if token:
            h["Authorization"] = f"Bearer {token}"
        self.conn.request("GET", "/api/stream?" + urllib.parse.urlencode(query), headers=h)
        self.r = self.conn.getresponse()
        check_eq(self.r.status, 200, "stream status")
        self.events = []
        self.lock = threading.Condition()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        ev = {}
        try:
            while True:
                line = self.r.fp.readline()
                if not line:
                    break
                line = line.decode().rstrip("\n")
                if not line:
                    if "data" in ev:
                        with self.lock:
                            self.events.append((ev.get("id"), ev.get("event"),
                                                json.loads(ev["data"])))
                            self.lock.notify_all()
                    ev = {}
                elif line.startswith(":"):
                    continue
                else:
                    k, _, v = line.partition(": ")
                    ev[k] = v
        except (OSError, ValueError, AttributeError):
            pass  # closed

    def wait(self, pred, timeout, what):
        t0 = time.monotonic()
        with self.lock:
            ok = self.lock.wait_for(lambda: pred(self.events), timeout)
        if os.environ.get("TIMING"):
            print(f"wait {what}: {time.monotonic() - t0:.2f}s", flush=True)
        check(ok, f"stream: {what}; got {self.events[-5:]}")

    def close(self):
        # shut the socket first: a close alone waits for the reading thread's readline
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.t.join(5)
        self.conn.close()


def case_stream(fx):
    b = Broker(fx)
    hub = Hub(fx, b, sets={"http.stream_buffer": "50"})
    dev = MqttClient(fx, b, "dev")
    c = Checks()
    s = Stream(hub, {"ids": "a-1,a-2", "fields": "reported.hr", "kinds": "state"})
    sq = Stream(hub, {"where": "reported.hr > 100", "fields": "reported.hr"})
    time.sleep(0.3)
    seq = {"a-1": 0, "a-2": 0, "b-1": 0}

    def send(tid, hr):
        seq[tid] += 1
        dev.publish(f"devices/{tid}/telemetry", pack({"seq": seq[tid], "hr": hr}))

    for hr in (70, 80, 90):
        send("a-1", hr)
        send("b-1", hr + 50)
    send("a-2", 75)
    s.wait(lambda ev: any(e[2]["id"] == "a-1" and e[2]["row"]["reported.hr"] == 90 for e in ev) and
           any(e[2]["id"] == "a-2" for e in ev), 10, "a-1 at 90 and a-2")
    c.check(all(e[1] == "state" and e[2]["id"] in ("a-1", "a-2") for e in s.events),
            f"ids and kinds filter: {s.events}")
    c.check(all(set(e[2]["row"]) == {"id", "version", "reported.hr"} for e in s.events),
            "state rows hold the fields asked")
    sq.wait(lambda ev: any(e[2]["id"] == "b-1" and e[2]["row"]["reported.hr"] == 140 for e in ev),
            10, "b-1 at 140 by the query")
    c.check(all(e[2]["id"] == "b-1" for e in sq.events if e[1] == "state"),
            f"only twins the query matches: {[e[2]['id'] for e in sq.events]}")
    versions = [e[2]["version"] for e in s.events if e[2]["id"] == "a-1"]
    c.check(versions == sorted(set(versions)), f"versions go up, once each: {versions}")

    # resume: what was missed while away, exactly once
    last = s.events[-1][0]
    s.close()
    for hr in (91, 92, 93):
        send("a-1", hr)
    time.sleep(0.5)
    s2 = Stream(hub, {"ids": "a-1", "fields": "reported.hr", "kinds": "state"}, last_id=last)
    s2.wait(lambda ev: any(e[2]["row"]["reported.hr"] == 93 for e in ev), 10,
            "the latest state missed while away")
    c.check(not any(e[1] == "reset" for e in s2.events), "no reset inside the buffer")
    boot, n = last.split("-")
    first = s2.events[0][0].split("-")
    c.check(first[0] == boot and int(first[1]) > int(n),
            f"resumes after the last id {last}: {s2.events[0][0]}")
    s2.close()

    # past the buffer: a reset that says how many were missed
    last = s2.events[-1][0]
    for k in range(80):
        send("b-1", 100 + k % 3)
    wait_until(lambda: get(hub, "/api/twins/b-1")[1]["version"] >= seq["b-1"], 10, "b-1 caught up")
    s3 = Stream(hub, {"ids": "a-1"}, last_id=last)
    s3.wait(lambda ev: len(ev) >= 1, 10, "a first event")
    c.eq(s3.events[0][1], "reset", "first event past the buffer")
    c.check((s3.events[0][2].get("missed") or 0) >= 30 and
            s3.events[0][2].get("reason") == "overrun", f"reset says overrun and how many: "
                                                        f"{s3.events[0]}")
    s3.close()

    # a restart: the old ids are another run's
    hub.stop()
    hub.start()
    s4 = Stream(hub, {"ids": "a-1", "kinds": "state"}, last_id=last)
    send("a-1", 99)
    s4.wait(lambda ev: any(e[1] == "state" for e in ev), 10, "a state after the restart")
    c.eq(s4.events[0][1], "reset", "first event after a restart")
    c.eq(s4.events[0][2].get("reason"), "restarted", "the reset says why")
    st, ans = get(hub, "/api/twins/a-1/events")
    c.check(st == 200 and "since" in ans, f"events answer: {st} {ans}")
    s4.close()
    sq.close()

    # a bad stream request is a 400
    st, ans = get(hub, "/api/stream?" + urllib.parse.urlencode({"where": "hr >"}))
    c.eq(st, 400, "a stream with a bad query")
    st, ans = get(hub, "/api/stream?ids=bad/id")
    c.eq(st, 400, "a stream with a bad id")
    c.done()


# ---------------------------------------------------------------------------------------------
# writes and access
# ---------------------------------------------------------------------------------------------

def case_writes(fx):
    b = Broker(fx)
    rt, wt = fx.path("read.token"), fx.path("write.token")
    with open(rt, "w") as f:
        f.write(READ + "\n")
    with open(wt, "w") as f:
        f.write(WRITE + "\n")
    hub = Hub(fx, b, sets={"http.token_file": rt, "http.write_token_file": wt})
    dev = MqttClient(fx, b, "dev")
    w = MqttClient(fx, b, "watch", subscribe=["twins/#"])
    dev.publish("devices/p-1/telemetry", pack({"seq": 1, "hr": 70}))
    wait_until(lambda: get(hub, "/api/twins/p-1", READ)[0] == 200, 10, "twin p-1")
    c = Checks()
    c.eq(get(hub, "/api/twins/p-1")[0], 401, "a read without a token")
    c.eq(get(hub, "/api/twins/p-1", "wrong-token-0123456789")[0], 401, "a read with a wrong token")
    c.eq(get(hub, "/api/twins/p-1", WRITE)[0], 200, "the write token reads too")
    c.eq(hub.http("/metrics")[0], 401, "/metrics without the token")
    body = {"desired": {"sample_hz": 250}}
    c.eq(post(hub, "/api/twins/p-1/desired", body)[0], 401, "a write with no token")
    c.eq(post(hub, "/api/twins/p-1/desired", body, READ)[0], 403, "a write with the read token")
    c.eq(post(hub, "/api/twins/p-1/desired", body, "x" * 20)[0], 401, "a wrong token")
    v0 = get(hub, "/api/twins/p-1", READ)[1]["version"]
    mark = w.count()
    st, ans = post(hub, "/api/twins/p-1/desired", body, WRITE)
    c.eq(st, 200, f"write accepted ({ans})")
    c.eq(ans.get("version"), v0 + 1, "the new version")
    c.eq(ans.get("desired"), {"sample_hz": 250}, "desired as committed")
    doc = get(hub, "/api/twins/p-1", READ)[1]
    c.eq(doc["desired"], {"sample_hz": 250}, "the twin's desired")
    c.eq(doc.get("delta"), {"sample_hz": 250}, "and its delta")
    st, ans = post(hub, "/api/twins/p-1/desired", {"desired": {"x": 1}, "version": v0}, WRITE)
    c.eq(st, 409, f"a stale version ({ans})")
    st, ans = post(hub, "/api/twins/p-1/desired", {"desird": {}}, WRITE)
    c.eq(st, 400, f"an unknown key ({ans})")
    st, ans = post(hub, "/api/twins/p-1/commands", {"cmd": "alert", "args": {"level": "low"}},
                   WRITE)
    c.check(st == 200 and ans.get("id"), f"a command accepted: {st} {ans}")
    cmds = get(hub, "/api/twins/p-1/commands", READ)[1]["commands"]
    c.check(any(x["id"] == ans.get("id") and x["cmd"] == "alert" for x in cmds),
            f"the command is queued: {cmds}")
    st, ans = post(hub, "/api/twins/nobody/commands", {"cmd": "alert"}, WRITE)
    c.eq(st, 404, "a command to no twin")
    st, ans = post(hub, "/api/twins/p-1/desired", {"desired": {"a": "x" * 100000}}, WRITE)
    c.eq(st, 413, "a body over http.max_body")
    w.wait_for(lambda m: m.topic == "twins/p-1/state" and unpack(m.payload)["version"] == v0 + 1,
               10, "the state of the write published", start=mark)
    time.sleep(0.3)
    replies = [m.topic for m in w.messages(start=mark)
               if m.topic.endswith("/accepted") or m.topic.endswith("/rejected")]
    c.eq(replies, [], "HTTP writes publish no MQTT replies")
    c.done()


CASES = {"query": case_query, "history": case_history, "stream": case_stream,
         "writes": case_writes}

if __name__ == "__main__":
    raise SystemExit(run_case(CASES))

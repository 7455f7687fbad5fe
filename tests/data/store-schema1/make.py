#!/usr/bin/python3
"""make.py: how data.mdb.gz and export.jsonl were made: a store of schema 1 (history points of
16 bytes, ts then value, so points of one millisecond came back in value order and equal ones
were stored once), written by twinhub 0.1.0 as of commit bf42be0, and what `twinctl export
--history` printed for it then. The migration test (tests/integration/test_export.py
migration) opens it with today's build and checks that nothing is lost.

    /usr/bin/python3 make.py BUILD_DIR      (a build of that commit; writes next to this file)
"""
import gzip
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "integration"))
os.environ.setdefault("TWINHUB_BIN", os.path.join(sys.argv[1], "hub", "twinhub"))
os.environ.setdefault("TWINCTL_BIN", os.path.join(sys.argv[1], "ctl", "twinctl"))
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    fx = harness.Fixture("make-store-schema1")
    try:
        b = harness.Broker(fx)
        hub = harness.Hub(fx, b)
        dev = harness.MqttClient(fx, b, "dev")
        t0 = 1796000000000
        for i in range(4):
            tid = f"old-{i}"
            for s in range(1, 13):
                # three readings share each millisecond: schema 1 keeps them in value order
                ts = t0 + (s // 3) * 1000
                dev.publish(f"devices/{tid}/telemetry",
                            harness.pack({"seq": s, "ts": ts, "hr": 70 + (s * 7) % 5 + i,
                                          "v": {"t": 36.5 + (s % 3) / 10}, "name": f"d{i}"}))
        harness.wait_until(lambda: (harness.twin_get(hub.db, "old-3") or {}).get("seq") == 12,
                           10, "the last message")
        hub.stop()
        rc, out, err = harness.twinctl(hub.db, "export", "--history")
        assert rc == 0, err
        with open(os.path.join(HERE, "export.jsonl"), "w") as f:
            f.write(out)
        subprocess.run(["mdb_copy", "-c", hub.db, fx.path("compact")], check=True) \
            if shutil.which("mdb_copy") else None
        src = fx.path("compact") if os.path.exists(fx.path("compact")) else hub.db
        with open(os.path.join(src, "data.mdb"), "rb") as f, \
                gzip.open(os.path.join(HERE, "data.mdb.gz"), "wb", 9) as g:
            g.write(f.read())
    finally:
        fx.close()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""test_ecg: twinsim replays a real ECG recording (MIT-BIH Arrhythmia Database record 208, lead
MLII, 360 Hz, as Debian's python3-scipy ships it) and the heart rate its twin holds matches the
beats counted independently in the recording (issue 13, part 5).

    /usr/bin/python3 test_ecg.py CASE      (TWINHUB_BIN, TWINCTL_BIN, TWINSIM_BIN in the env)

  replay   sim/ecg_record.py converts the recording; one monitor replays it for 20 s at its real
           rate (resampled to the strip's 250 Hz) beside a simulated one. Independently, scipy's
           find_peaks (prominence 0.6 mV, 250 ms apart) counts the R peaks of the same stretch
           of the recording. Tolerances: the beats twinsim's detector counted (after its 2 s of
           learning) within 3 of the reference's, and the heart rate in the twin within 12 bpm
           of 60 s over the median of the reference's last 8 RR intervals (record 208 has
           premature ventricular beats, so RR varies by more than that from beat to beat; the
           median of 8 is what both take). The waveform kept is the recording itself.
"""

import os
import subprocess
import sys
import warnings

from harness import (REPO, TWINSIM_BIN, Broker, Hub, check, run_case, twin_get, twinctl_json,
                     wait_until)

SECONDS = 20
RATE = 2  # messages per second: 125 samples of the strip each


def reference(seconds_from, seconds_to):
    """R peaks of the recording in [from, to) s by scipy, independent of twinsim's detector."""
    import numpy as np
    from scipy import misc, signal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ecg = misc.electrocardiogram()
    fs = 360
    peaks, _ = signal.find_peaks(ecg[: int(seconds_to * fs)], distance=int(0.25 * fs),
                                 prominence=0.6)
    peaks = peaks[peaks >= int(seconds_from * fs)]
    rr = np.diff(peaks[-9:]) / fs
    return len(peaks), 60.0 / float(np.median(rr)), ecg


def case_replay(fx):
    rec = fx.path("mitbih-208.ecg")
    p = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "sim", "ecg_record.py"), rec],
                       capture_output=True, timeout=60)
    check(p.returncode == 0, f"ecg_record.py: {p.stderr.decode()}")
    b = Broker(fx)
    hub = Hub(fx, b, sets={"history.waveforms": "ecg=250", "history.waveform_seconds": "30s"})
    sim = subprocess.run([TWINSIM_BIN, "--broker", b.url, "--devices", "2", "--rate", str(RATE),
                          "--seconds", str(SECONDS), "--ecg-record", rec,
                          "--ecg-record-devices", "1", "--quiet"], capture_output=True,
                         timeout=SECONDS + 30, stdin=subprocess.DEVNULL)
    check(sim.returncode == 0, f"twinsim: exit {sim.returncode}: {sim.stdout!r} {sim.stderr!r}")
    n = int(sim.stdout.decode().split("sent=")[1].split()[0]) // 2
    wait_until(lambda: (twin_get(hub.db, "ecg-0001") or {}).get("seq") == n, 10,
               f"the replaying monitor at seq {n}")
    d = twin_get(hub.db, "ecg-0001")
    replayed = n / RATE  # seconds of the recording sent
    beats, hr_ref, ecg = reference(2.0, replayed)
    got_beats, got_hr = d["reported"]["beats"], d["reported"]["heart_rate"]
    print(f"{replayed:.1f} s replayed: twinsim's detector {got_beats} beats, heart_rate "
          f"{got_hr}; scipy find_peaks {beats} beats after 2 s, heart rate {hr_ref:.1f} "
          f"(median of the last 8 RR)", file=sys.stderr)
    check(abs(got_beats - beats) <= 3, f"beats: twinsim {got_beats}, reference {beats}")
    check(abs(got_hr - hr_ref) <= 12, f"heart_rate: twin {got_hr}, reference {hr_ref:.1f}")
    # the simulated monitor beside it is the simulation, not the recording
    check("beats" not in twin_get(hub.db, "ecg-0002")["reported"], "ecg-0002 is simulated")
    # the strip kept is the recording: the first chunk, resampled, against the file's samples
    chunks = twinctl_json(hub.db, "wave", "ecg-0001", "reported.ecg")
    first = chunks[0]["samples"]
    check(len(first) == 125, f"samples per chunk: {len(first)}")
    want = [round(float(ecg[int(i * 360 / 250)]) * 1000) for i in range(10)]
    check(all(abs(a - w) <= 60 for a, w in zip(first[:10], want)),
          f"the strip is the recording (uV): {first[:10]} vs {want}")
    hub.stop()


CASES = {"replay": case_replay}

if __name__ == "__main__":
    sys.exit(run_case(CASES))

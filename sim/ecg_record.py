#!/usr/bin/python3
"""ecg_record.py: turns the MIT-BIH Arrhythmia Database excerpt that Debian's python3-scipy
ships (scipy/misc/ecg.dat: record 208, lead MLII, 360 Hz, 5 minutes, with premature
ventricular beats and noise) into twinsim's --ecg-record input. The data is not in this
repository; deploy/demo.sh and the tests make the file when they need it.

    /usr/bin/python3 sim/ecg_record.py OUT      (OUT: the file to write)

The file: the 8 bytes "TWSIMECG", then little-endian u32 rate (Hz), u32 count, and count
int16 samples in microvolts.
"""
import os
import struct
import sys

import warnings

import numpy as np
from scipy import misc


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with warnings.catch_warnings():  # scipy 1.10 says misc.electrocardiogram moves to datasets
        warnings.simplefilter("ignore")
        ecg = misc.electrocardiogram()  # mV, 360 Hz
    uv = np.clip(np.round(ecg * 1000.0), -32768, 32767).astype("<i2")
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"TWSIMECG" + struct.pack("<II", 360, len(uv)) + uv.tobytes())
    os.replace(tmp, sys.argv[1])
    print(f"{sys.argv[1]}: {len(uv)} samples at 360 Hz ({len(uv) / 360:.0f} s), MIT-BIH record "
          f"208 (scipy.misc.electrocardiogram)")


if __name__ == "__main__":
    main()

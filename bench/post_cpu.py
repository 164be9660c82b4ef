#!/usr/bin/env python3
"""The upload's POST alone: wall time and the server's CPU per POST.

    python3 bench/post_cpu.py [--uploads 15] [--pause 0.4] [--photo PATH] BINARY [BINARY ...]

For each binary in turn (`flipstack up` on embedded defaults), one browser
uploads the photo `--uploads` times, `--pause` seconds apart (so each POST
finds the server idle, as a person's upload does); prints the POST's p50,
min and max and the `up` process's CPU time (user + system, from
/proc/PID/stat) per POST. The workers are processes of their own and not
counted; the server is idle between uploads (under 0.5% of a core)."""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TESTDATA, Browser, Flipstack, load_average  # noqa: E402


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--uploads", type=int, default=15)
    ap.add_argument("--pause", type=float, default=0.4)
    ap.add_argument("--photo", default=os.path.join(TESTDATA, "photos", "p03_picos_3264x2448_base420.jpg"))
    a = ap.parse_args()
    print(f"photo: {a.photo}; load average before: {load_average()}")
    for binary in a.binaries:
        with Flipstack(bin=binary) as fs:
            b = Browser(fs)
            assert b.upload(a.photo) == 303
            time.sleep(1.5)
            posts = []
            before = cpu_seconds(fs.proc.pid)
            for _ in range(a.uploads):
                t0 = time.perf_counter()
                status = b.upload(a.photo)
                posts.append((time.perf_counter() - t0) * 1e3)
                assert status == 303, status
                time.sleep(a.pause)
            used = cpu_seconds(fs.proc.pid) - before
        posts.sort()
        print(
            f"{binary}: POST p50 {posts[len(posts) // 2]:.1f} ms, min {posts[0]:.1f}, max {posts[-1]:.1f}; "
            f"server CPU per POST {1000 * used / a.uploads:.1f} ms"
        )
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()

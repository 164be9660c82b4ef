#!/usr/bin/env python3
"""Benchmark 4: the server's peak memory during 32 concurrent 20 MB uploads.

    python3 bench/upload_rss.py [--file BIG.jpg] [--concurrent 32]

`flipstack up` on embedded defaults; one signed-in browser sends the same
~20 MB JPEG `--concurrent` times at once. The `up` process (the HTTP server
and the pool supervisor; workers are separate processes and not counted) is
sampled every 5 ms from /proc (VmRSS), and its VmHWM (the kernel's own peak)
is read at the end. Without --file, a 20 MB noise JPEG is made with the
flip benchmark binary (`--make-jpeg`)."""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TESTDATA, Browser, Flipstack, flip_bench, load_average, upload  # noqa: E402


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def make_big(path):
    exe = flip_bench()
    if not exe:
        sys.exit("pass --file, or build the flip bench (cargo bench -p flipstack-imaging --bench flip --no-run) or set FLIP_BENCH")
    subprocess.run([exe, "--make-jpeg", path, "--bytes", "20000000"], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file")
    ap.add_argument("--concurrent", type=int, default=32)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="flipstack-rss-")
    big = a.file or os.path.join(tmp, "big.jpg")
    if not a.file:
        make_big(big)
    size = os.path.getsize(big)
    print(f"file: {big}, {size} bytes; load average before: {load_average()}")

    # One client sends them all: lift the per-client and per-person limits
    # (concurrent uploads, uploads per hour, the gallery's quota) above them.
    limits = {
        "FLIPSTACK_MAX_UPLOADS_PER_CLIENT": str(2 * a.concurrent),
        "FLIPSTACK_UPLOADS_PER_CLIENT_PER_HOUR": "100000",
        "FLIPSTACK_UPLOADS_PER_PERSON_PER_HOUR": "100000",
        "FLIPSTACK_QUOTA_BYTES_PER_PERSON": str(100 * a.concurrent * size),
    }
    with Flipstack(env=limits) as fs:
        b = Browser(fs)
        # Sign in with a small picture first, as a person would.
        assert b.upload(os.path.join(TESTDATA, "photos", "p06_rocket_640x427_base444_adobergb.jpg")) == 303
        pid = fs.proc.pid
        idle = status_kb(pid, "VmRSS")
        peak = [idle]
        # What the peak was made of: anonymous memory and mapped file pages.
        parts = [(status_kb(pid, "RssAnon"), status_kb(pid, "RssFile"))]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                rss = status_kb(pid, "VmRSS")
                if rss > peak[0]:
                    peak[0] = rss
                    parts[0] = (status_kb(pid, "RssAnon"), status_kb(pid, "RssFile"))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        results = [None] * a.concurrent
        headers = b.headers()

        def send(i):
            t0 = time.perf_counter()
            status, _ = upload(fs.port, headers, b.csrf, b.email, big, f"big-{i}.jpg")
            results[i] = (status, time.perf_counter() - t0)

        started = time.perf_counter()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(a.concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        time.sleep(0.2)
        stop.set()
        sampler.join()
        hwm = status_kb(pid, "VmHWM")
        after = status_kb(pid, "VmRSS")
    statuses = sorted({s for s, _ in results})
    print(
        f"{a.concurrent} concurrent uploads of {size / 1e6:.1f} MB: statuses {statuses}, "
        f"all done in {elapsed:.1f} s (slowest {max(t for _, t in results):.1f} s)"
    )
    print(
        f"server RSS: idle {idle / 1024:.1f} MiB, peak sampled {peak[0] / 1024:.1f} MiB, "
        f"VmHWM {hwm / 1024:.1f} MiB, after {after / 1024:.1f} MiB"
    )
    print(f"at the sampled peak: RssAnon {parts[0][0] / 1024:.1f} MiB, RssFile {parts[0][1] / 1024:.1f} MiB")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()

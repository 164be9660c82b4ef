#!/usr/bin/env python3
"""Benchmark 3: upload → flipped visible, and pipeline throughput.

    python3 bench/upload_flip.py [--photo PATH] [--uploads 60] [--jobs 60]
                                 [--compare NAME=BINARY ...] [--rounds 1]

1. Latency, on embedded defaults (`flipstack up`: SQLite, in-process cache,
   blob folder, the uploads table as the queue, 1–2 local workers): one
   browser uploads the photo `--uploads` times, one after another; each
   time from the start of the POST until the gallery shows that upload as
   flipped. The page is followed as the browser follows it: on each
   server-sent "change" it is read once; a build without the push
   (`/gallery/events`) has its page read every 5 ms instead.
2. Pipeline throughput with 2 workers: `flipstack serve` (no workers)
   takes `--jobs` uploads; then two `flipstack work` processes start and
   the time until every job is done is measured (the database is read
   every 10 ms). Beside it, the raw flip throughput of the same photo with
   2 threads in one process (the flip benchmark binary, `--throughput`),
   with and without thumbnails, when that binary is found.

`--compare` runs the latency part for other flipstack binaries too (a
baseline build), in `--rounds` rounds that alternate between the binaries,
each round `--uploads` uploads per binary. `--gap S` waits S seconds
between an upload shown flipped and the next upload (0: back to back, when
the last job's screen sizes still run beside the next flip)."""

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    TESTDATA,
    Browser,
    Flipstack,
    Push,
    flip_bench,
    gallery_items,
    load_average,
    percentile,
)


def latency(photo, n, bin=None, poll=False, gap=0.0):
    """Sequential uploads, each timed until the gallery shows it flipped. The
    page is followed as a browser would: through the push where the server
    has one (a "change" event, then one read of the page), else by reading
    the page every 5 ms. A first, untimed upload creates the gallery."""
    with Flipstack(bin=bin) as fs:
        b = Browser(fs)
        assert b.upload(photo) == 303
        seen = {it[0] for it in gallery_items(b.gallery()[2])}
        wait_done(b, None, min(seen), time.perf_counter())
        push = Push(b)
        lat, post = [], []
        for i in range(n):
            pushed = push.changes
            t0 = time.perf_counter()
            status = b.upload(photo)
            t1 = time.perf_counter()
            assert status == 303, status
            fresh = [it for it in gallery_items(b.gallery()[2]) if it[0] not in seen]
            assert fresh, "the upload is not in the gallery"
            new = fresh[0][0]
            wait_done(b, push if push.ok and not poll else None, new, t0, pushed)
            t2 = time.perf_counter()
            seen.add(new)
            lat.append((t2 - t0) * 1e3)
            post.append((t1 - t0) * 1e3)
            # With a gap, the last job's screen sizes finish before the next upload.
            time.sleep(gap)
        push.close()
        method = method_of(fs.data)
    return lat, post, method, "push" if push.ok and not poll else "5 ms poll"


def wait_done(browser, push, upload, t0, pushed=0):
    while True:
        state = dict(gallery_items(browser.gallery()[2])).get(upload)
        if state == "done":
            return
        assert state != "failed", "the flip failed"
        if time.perf_counter() - t0 > 60:
            sys.exit("an upload was not flipped within 60 s")
        if push:
            pushed = push.wait_past(pushed, 10)
        else:
            time.sleep(0.005)


def method_of(data):
    db = sqlite3.connect(f"file:{os.path.join(data, 'flipstack.db')}?mode=ro", uri=True)
    rows = db.execute("SELECT flip_method, count(*) FROM uploads GROUP BY flip_method").fetchall()
    db.close()
    return ", ".join(f"{m} ×{c}" for m, c in rows)


def pipeline(photo, jobs, workers):
    with Flipstack(command="serve") as fs:
        b = Browser(fs)
        for _ in range(jobs):
            assert b.upload(photo) == 303
        db = sqlite3.connect(f"file:{os.path.join(fs.data, 'flipstack.db')}?mode=ro", uri=True)

        def done():
            return db.execute("SELECT count(*) FROM uploads WHERE state = 'done'").fetchone()[0]

        assert done() == 0
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [fs.bin, "work"], env=fs.env, stdout=fs.log, stderr=fs.log, start_new_session=True
            )
            for _ in range(workers)
        ]
        try:
            first = None
            while (d := done()) < jobs:
                if d and first is None:
                    first = time.perf_counter()
                if time.perf_counter() - started > 600:
                    sys.exit("the jobs did not finish in 10 minutes")
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                p.wait(60)
        failed = db.execute("SELECT count(*) FROM uploads WHERE state = 'failed'").fetchone()[0]
        assert failed == 0
        db.close()
        method = method_of(fs.data)
    return elapsed, first - started if first else None, method


def raw_throughput(photo, seconds):
    exe = flip_bench()
    if not exe:
        print("raw throughput: no flip bench binary (cargo bench -p flipstack-imaging --bench flip --no-run, or FLIP_BENCH)")
        return []
    out = subprocess.run(
        [exe, "--throughput", photo, "--threads", "2", "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        f = line.split("\t")
        rows.append((f[2], float(f[-1].split("=")[1])))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--photo", default=os.path.join(TESTDATA, "photos", "p03_picos_3264x2448_base420.jpg")
    )
    ap.add_argument("--uploads", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--raw-seconds", type=int, default=15)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=BINARY")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--poll", action="store_true", help="read the page every 5 ms even where it has a push")
    ap.add_argument("--gap", type=float, default=0.0, help="seconds between one upload shown and the next upload")
    a = ap.parse_args()
    print(f"photo: {a.photo}; load average before: {load_average()}")

    if not a.skip_latency:
        binaries = [("this build", None)] + [tuple(c.split("=", 1)) for c in a.compare]
        results = {name: ([], []) for name, _ in binaries}
        for r in range(a.rounds):
            for name, bin in binaries:
                lat, post, method, follow = latency(a.photo, a.uploads, bin, a.poll, a.gap)
                results[name][0].extend(lat)
                results[name][1].extend(post)
                print(
                    f"round {r + 1}, {name}: p50 {percentile(lat, 50):.0f} ms, "
                    f"p99 {percentile(lat, 99):.0f} ms; page followed by {follow}; methods: {method}",
                    flush=True,
                )
        for name, (lat, post) in results.items():
            print(
                f"upload → flipped visible, {name} ({len(lat)} sequential uploads, {a.gap:g} s apart, embedded defaults): "
                f"p50 {percentile(lat, 50):.0f} ms, p90 {percentile(lat, 90):.0f} ms, "
                f"p99 {percentile(lat, 99):.0f} ms, min {min(lat):.0f} ms, max {max(lat):.0f} ms; "
                f"of which the POST itself p50 {percentile(post, 50):.0f} ms",
                flush=True,
            )
        if a.skip_pipeline:
            print(f"load average after: {load_average()}")
            return

    elapsed, first, method = pipeline(a.photo, a.jobs, a.workers)
    jps = a.jobs / elapsed
    print(
        f"pipeline: {a.jobs} jobs with {a.workers} workers in {elapsed:.2f} s = {jps:.2f} jobs/s "
        f"(first done after {first:.2f} s, worker start included); methods: {method}",
        flush=True,
    )
    for mode, raw in raw_throughput(a.photo, a.raw_seconds):
        print(f"raw {mode}, 2 threads in one process: {raw:.2f} jobs/s; pipeline / raw = {jps / raw:.2f}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark 2: a cached gallery under 64 connections (wrk), beside nginx
serving the same HTML bytes as a static file, in the same run.

    python3 bench/gallery.py [--duration 15] [--connections 64] [--rounds 2]
                             [--log warn] [--compare NAME=BINARY ...]
                             [--also-log LEVEL ...]

Starts `flipstack up` (release binary, temporary data dir, free loopback
port), uploads the 12 first corpus photos as one person, waits until all are
flipped, checks that /gallery is answered from the cache, saves that page
and has nginx serve it. Then wrk runs against each in turn, `--rounds`
times, each round starting one target later than the one before; the
summary gives each server's median over the rounds. `--compare` adds other flipstack binaries (set up the
same way) to the same rounds; `--log` is RUST_LOG for every server (`info`
is the binary's default and logs every gallery read); `--also-log` adds
this build again with another RUST_LOG, so the cost of logging is measured
in the same rounds."""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TESTDATA, Browser, Flipstack, free_port, gallery_items, load_average  # noqa: E402

NGINX_CONF = """
worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ text/html html; }}
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
    }}
}}
"""


def wrk(url, duration, connections, threads, headers):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)\b", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)],
        "p99_ms": float(p99.group(1)) * scale,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
        "raw": out,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--log", default="warn")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=BINARY")
    ap.add_argument("--also-log", action="append", default=[], metavar="LEVEL")
    a = ap.parse_args()

    photos = sorted(
        os.path.join(TESTDATA, "photos", f)
        for f in os.listdir(os.path.join(TESTDATA, "photos"))
        if not f.endswith(".tsv")
    )[:12]
    env = {"RUST_LOG": a.log}
    servers = [("flipstack", Flipstack(env=env))]
    servers += [(f"flipstack RUST_LOG={lv}", Flipstack(env={"RUST_LOG": lv})) for lv in a.also_log]
    servers += [(n, Flipstack(env=env, bin=b)) for n, b in (c.split("=", 1) for c in a.compare)]
    try:
        run(a, photos, servers)
    finally:
        for _, fs in servers:
            fs.stop()


def ready_gallery(fs, photos):
    """Uploads the photos as one person, waits until all are flipped, and
    returns the browser and the cached page."""
    b = Browser(fs)
    for p in photos:
        status = b.upload(p)
        assert status == 303, f"{p}: upload answered {status}"
    deadline = time.time() + 180
    while True:
        status, headers, body = b.gallery()
        items = gallery_items(body)
        if len(items) == len(photos) and all(s == "done" for _, s in items):
            break
        if time.time() > deadline:
            sys.exit(f"not all flipped in time: {items}")
        time.sleep(0.2)
    status, headers, body = b.gallery()
    assert status == 200
    source = headers.get("x-read-source")
    assert source == "cache", f"the gallery came from {source}, not the cache"
    return b, body


def run(a, photos, servers):
    browsers = [(name, fs, *ready_gallery(fs, photos)) for name, fs in servers]
    b, body = browsers[0][2], browsers[0][3]
    source = "cache"
    assert b"-thumb" in body, "the gallery does not show thumbnails"

    with tempfile.TemporaryDirectory(prefix="nginx-bench-") as d:
        os.chmod(d, 0o755)
        os.makedirs(os.path.join(d, "www"))
        with open(os.path.join(d, "www", "gallery.html"), "wb") as f:
            f.write(body)
        os.chmod(os.path.join(d, "www", "gallery.html"), 0o644)
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=d, port=port))
        nginx = subprocess.Popen(["nginx", "-c", conf, "-p", d])
        try:
            nginx_url = f"http://127.0.0.1:{port}/gallery.html"
            for _ in range(100):
                r = subprocess.run(["curl", "-s", nginx_url], capture_output=True)
                if r.returncode == 0 and r.stdout == body:
                    break
                time.sleep(0.05)
            else:
                sys.exit("nginx did not serve the page")
            targets = [
                (
                    f"{name} /gallery (cached)",
                    f"http://127.0.0.1:{fs.port}/gallery",
                    ["Cookie: " + "; ".join(f"{k}={v}" for k, v in br.jar.items())],
                )
                for name, fs, br, _ in browsers
            ]
            targets.append(("nginx static file", nginx_url, []))
            print(f"page: {len(body)} bytes, {len(photos)} pictures; X-Read-Source: {source}")
            # The workers make the last pictures' screen sizes after their
            # flips: let them finish, then warm every target once, untimed.
            time.sleep(10)
            for _, url, headers in targets:
                wrk(url, 2, a.connections, a.threads, headers)
            print(f"load average before: {load_average()}")
            results = {name: [] for name, _, _ in targets}
            for r in range(a.rounds):
                # Each round starts one target later, so no server always runs
                # right after another or at the same point of the machine's drift.
                k = r % len(targets)
                for name, url, headers in targets[k:] + targets[:k]:
                    res = wrk(url, a.duration, a.connections, a.threads, headers)
                    results[name].append(res)
                    print(
                        f"round {r + 1}: {name}: {res['rps']:.0f} req/s, p50 {res['p50_ms']:.2f} ms, "
                        f"p99 {res['p99_ms']:.2f} ms, non-2xx {res['non2xx']} {res['socket_errors']}",
                        flush=True,
                    )
            print(f"load average after: {load_average()}")
        finally:
            nginx.terminate()
            nginx.wait()
    ng = results[targets[-1][0]]
    print()
    print(f"RUST_LOG={a.log}; wrk -t{a.threads} -c{a.connections} -d{a.duration}s --latency")
    print("| round | server | req/s | p50 ms | p99 ms | × nginx (same round) |")
    print("|---:|---|---:|---:|---:|---:|")
    for i in range(a.rounds):
        for name, _, _ in targets:
            r = results[name][i]
            print(
                f"| {i + 1} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['rps'] / ng[i]['rps']:.2f} |"
            )
    print()
    print("| server | median req/s | median × nginx (same round) |")
    print("|---|---:|---:|")
    for name, _, _ in targets:
        rps = sorted(r["rps"] for r in results[name])
        ratios = sorted(results[name][i]["rps"] / ng[i]["rps"] for i in range(a.rounds))
        print(f"| {name} | {rps[len(rps) // 2]:.0f} | {ratios[len(ratios) // 2]:.2f} |")
    for rs in results.values():
        for r in rs:
            if r["non2xx"]:
                print("WARNING: non-2xx responses in a run", file=sys.stderr)


if __name__ == "__main__":
    main()

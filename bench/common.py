"""Shared pieces of the load scripts: start `flipstack up` on a free loopback
port with a temporary data dir, get a signed-in browser session (the first
upload of a new address signs the browser in), upload pictures, read the
gallery. Standard library only."""

import glob
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TESTDATA = os.environ.get(
    "FLIPSTACK_TESTDATA", os.path.join(REPO, "..", "shared", "testdata")
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(src=None):
    """The release binary, copied aside so another build cannot replace it mid-run."""
    src = src or os.environ.get("FLIPSTACK_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")),
        "release",
        "flipstack",
    )
    if not os.path.exists(src):
        sys.exit(f"{src} not found: run `cargo build --release` (or set FLIPSTACK_BIN)")
    dst = tempfile.mktemp(prefix=f"flipstack-bench-{os.getpid()}-")
    shutil.copy2(src, dst)
    return dst


def flip_bench():
    """The flip benchmark binary: FLIP_BENCH, or the newest one cargo built
    (cargo bench -p flipstack-imaging --bench flip --no-run); None when absent."""
    if os.environ.get("FLIP_BENCH"):
        return os.environ["FLIP_BENCH"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    found = [
        p
        for p in glob.glob(os.path.join(target, "release", "deps", "flip-*"))
        if os.access(p, os.X_OK) and not p.endswith(".d")
    ]
    return max(found, key=os.path.getmtime) if found else None


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Flipstack:
    """`flipstack up` (or `serve`) in its own temporary data dir, stopped on exit."""

    def __init__(self, env=None, command="up", bin=None):
        self.port = free_port()
        self.data = tempfile.mkdtemp(prefix="flipstack-bench-data-")
        self.bin = binary(bin)
        e = dict(os.environ)
        e.update(
            {
                "FLIPSTACK_LISTEN": f"127.0.0.1:{self.port}",
                "FLIPSTACK_DATA_DIR": self.data,
                "RUST_LOG": "warn",
            }
        )
        e.update(env or {})
        self.log = open(os.path.join(self.data, "flipstack.log"), "w")
        self.proc = subprocess.Popen(
            [self.bin, command], env=e, stdout=self.log, stderr=self.log, start_new_session=True
        )
        self.env = e
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                status, _, _ = self.request("GET", "/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        sys.exit("flipstack did not answer /healthz within 60 s")

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, r.getheaders(), data

    def stop(self):
        if self.proc.poll() is None:
            # The whole process group: `up` and the workers it started.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        os.unlink(self.bin)
        if os.environ.get("KEEP_DATA"):
            print(f"data kept in {self.data}", file=sys.stderr)
        else:
            shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def cookies_from(headers):
    out = {}
    for k, v in headers:
        if k.lower() == "set-cookie":
            name, _, rest = v.partition("=")
            out[name] = rest.split(";", 1)[0]
    return out


def cookie_header(jar):
    return "; ".join(f"{k}={v}" for k, v in jar.items())


CSRF = re.compile(rb'name="csrf" value="([^"]+)"')


class Browser:
    """A cookie jar and the form's CSRF token, like one browser."""

    def __init__(self, fs):
        self.fs = fs
        self.jar = {}
        self.email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        self.refresh_csrf()

    def refresh_csrf(self):
        status, headers, body = self.fs.request("GET", "/form", headers=self.headers())
        assert status == 200, status
        self.jar.update(cookies_from(headers))
        self.csrf = CSRF.search(body).group(1).decode()

    def headers(self):
        return {"Cookie": cookie_header(self.jar)} if self.jar else {}

    def upload(self, path, name=None):
        """POSTs one picture; returns the status. The first upload creates
        the gallery and signs this browser in."""
        status, headers = upload(self.fs.port, self.headers(), self.csrf, self.email, path, name)
        signed_in_now = "fs_session" in cookies_from(headers) and "fs_session" not in self.jar
        self.jar.update(cookies_from(headers))
        if signed_in_now:
            # The CSRF token follows the session.
            self.refresh_csrf()
        return status

    def gallery(self):
        status, headers, body = self.fs.request("GET", "/gallery", headers=self.headers())
        return status, dict((k.lower(), v) for k, v in headers), body


class Push:
    """The gallery's server-sent events (`/gallery/events`), read on a thread,
    as the page follows them while a picture is unfinished. `ok` is false
    when the server has no push (an older build): then poll instead."""

    def __init__(self, browser):
        self.conn = http.client.HTTPConnection("127.0.0.1", browser.fs.port, timeout=120)
        headers = dict(browser.headers(), Accept="text/event-stream")
        self.conn.request("GET", "/gallery/events", headers=headers)
        self.resp = self.conn.getresponse()
        self.ok = self.resp.status == 200
        self.changes = 0
        self.cond = threading.Condition()
        if self.ok:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.resp.read()
            self.conn.close()

    def _read(self):
        try:
            while line := self.resp.readline():
                # "event:change" (the space after the colon is optional).
                if line.partition(b":")[0] == b"event" and line.partition(b":")[2].strip() == b"change":
                    with self.cond:
                        self.changes += 1
                        self.cond.notify_all()
        except (OSError, AttributeError, ValueError):
            # close() took the connection away from under the read.
            pass

    def wait_past(self, seen, timeout):
        """Waits until more than `seen` changes were pushed; returns the count."""
        with self.cond:
            self.cond.wait_for(lambda: self.changes > seen, timeout)
            return self.changes

    def close(self):
        self.conn.close()


def upload(port, headers, csrf, email, path, name=None):
    """A multipart POST /upload streamed from the file (fields in the order a
    browser sends them: csrf, email, file)."""
    boundary = "----flipstackbench" + uuid.uuid4().hex
    name = name or os.path.basename(path)
    ctype = {
        ".jpg": "image/jpeg",
        ".png": "image/png",
        ".gif": "image/gif",
        ".webp": "image/webp",
    }[os.path.splitext(path)[1]]
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n{email}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = os.path.getsize(path)

    def body():
        yield head
        with open(path, "rb") as f:
            while chunk := f.read(256 * 1024):
                yield chunk
        yield tail

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    h = dict(headers)
    h["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    h["Content-Length"] = str(len(head) + size + len(tail))
    c.request("POST", "/upload", body=body(), headers=h)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, r.getheaders()


ITEM = re.compile(rb'<li class="upload state-(\w+)" id="upload-(\d+)"')


def gallery_items(body):
    """(id, state) of each picture on the page, newest first."""
    return [(int(i), s.decode()) for s, i in ITEM.findall(body)]


def percentile(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)

#!/usr/bin/env python3
"""Does a download from disk (not from the page cache) hold up the server's other clients?

    bench/cold_cache.py --ferry PATH [--ferry PATH2] [--dir DIR] [--files 4] [--mib 512]
                        [--rounds 3] [--seconds 2]

Makes a data root in DIR (default: a new directory under /var/tmp, which must be on a disk,
not tmpfs) holding FILES files of MIB MiB, and for each ferry binary, in alternating rounds:
starts `ferry serve --plain` on it, drops the files from the page cache
(`posix_fadvise(DONTNEED)`, as memory pressure would), and while FILES `ferry get`s download
them at once, a logged-in connection sends `pwd` every 2 ms and times each round trip. Then
the same with the files cached. Prints, per binary and case, how long the gets took and the
median, 99th percentile and largest `pwd` round trip: a server whose async workers wait for
the disk shows it in the tail. Loopback only; everything it made is removed at the end.
Standard library only.
"""

import argparse
import glob
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

USER, PASSWORD = "bench", "bench-pw"


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from many_gets import read_header, send  # noqa: E402  (the framing, shared by bench/)


def call(sock, header):
    """One request and its reply (a refusal raises)."""
    send(sock, header)
    return read_header(sock)


def probe(port, stop, out):
    """pwd round trips on one logged-in connection until `stop` is set; times in ms."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    call(s, {"id": 1, "op": "hello", "version": 1})
    call(s, {"id": 2, "op": "login", "user": USER, "password": PASSWORD})
    i = 3
    while not stop.is_set():
        t = time.perf_counter()
        call(s, {"id": i, "op": "pwd"})
        out.append((time.perf_counter() - t) * 1000)
        i += 1
        time.sleep(0.002)
    s.close()


def evict(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def warm(paths):
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def one_case(ferry, port, files, out_dir, config_dir, cold, seconds):
    paths = sorted(glob.glob(os.path.join(files, "*.bin")))
    (evict if cold else warm)(paths)
    for p in glob.glob(os.path.join(out_dir, "*")):
        os.remove(p)
    stop, lat = threading.Event(), []
    t = threading.Thread(target=probe, args=(port, stop, lat))
    t.start()
    time.sleep(0.2)
    env = dict(os.environ, FERRY_SERVER=f"127.0.0.1:{port}", FERRY_USER=USER,
               FERRY_PASSWORD=PASSWORD, FERRY_PLAIN="1", FERRY_CONFIG_DIR=config_dir)
    started = time.perf_counter()
    gets = [subprocess.Popen([ferry, "get", "-q", "-f", os.path.basename(p), out_dir], env=env)
            for p in paths]
    codes = [g.wait() for g in gets]
    took = time.perf_counter() - started
    time.sleep(max(0.0, seconds - took))
    stop.set()
    t.join()
    if any(codes):
        raise SystemExit(f"cold_cache: a get failed ({codes})")
    lat.sort()
    return took, lat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ferry", action="append", required=True)
    ap.add_argument("--dir")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ferry-cold-", dir=a.dir or "/var/tmp")
    servers = []
    try:
        root = os.path.join(work, "root")
        subprocess.run([a.ferry[0], "user", "add", USER, "--root", root, "--password-stdin",
                        "--quota", "unlimited"], input=PASSWORD + "\n", text=True, check=True,
                       capture_output=True)
        home = os.path.join(root, "homes", USER)
        block = os.urandom(1 << 20)
        for i in range(a.files):
            with open(os.path.join(home, f"f{i}.bin"), "wb") as f:
                for _ in range(a.mib):
                    f.write(block)
        out_dir = os.path.join(work, "out")
        os.makedirs(out_dir)
        results = {}
        for r in range(a.rounds):
            for ferry in a.ferry:
                srv = subprocess.Popen([ferry, "serve", "--root", root, "--listen",
                                        "127.0.0.1:0", "--plain"], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
                servers.append(srv)
                line = srv.stdout.readline().strip()
                port = int(line.rsplit(":", 1)[1])
                for cold in (True, False):
                    took, lat = one_case(ferry, port, home, out_dir,
                                         os.path.join(work, "config"), cold, a.seconds)
                    results.setdefault((ferry, cold), []).append((took, lat))
                srv.terminate()
                srv.wait()
        print(f"{a.files} downloads of {a.mib} MiB at once (plain TCP), pwd every 2 ms on "
              f"another connection; {a.rounds} rounds, binaries alternating; {work}")
        print("| ferry | files | gets took (s) | pwds | median (ms) | p99 (ms) | max (ms) |")
        print("|---|---|--:|--:|--:|--:|--:|")
        for (ferry, cold), runs in results.items():
            for took, lat in runs:
                print(f"| {ferry} | {'on disk' if cold else 'cached'} | {took:.2f} | {len(lat)} "
                      f"| {statistics.median(lat):.2f} | {lat[int(len(lat) * 0.99)]:.2f} "
                      f"| {lat[-1]:.2f} |")
    finally:
        for s in servers:
            if s.poll() is None:
                s.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

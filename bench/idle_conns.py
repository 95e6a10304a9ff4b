#!/usr/bin/env python3
"""Open N ferry connections, hello + login on each, then hold them idle.

    idle_conns.py HOST:PORT USER N [--threads T] [--hello-only]   (password: FERRY_PASSWORD)

Prints `ready N` on stdout once all N are logged in, then waits until its standard input
closes (or says anything) and closes them all with `quit`. Standard library only; speaks the
framing of docs/PROTOCOL.md like interop/python/ferry_client.py.
"""

import json
import os
import resource
import socket
import struct
import sys
import threading


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def call(sock, header):
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    sock.sendall(struct.pack("<I", len(h)) + h)
    (n,) = struct.unpack("<I", recv_exact(sock, 4))
    reply = json.loads(recv_exact(sock, n).decode("utf-8"))
    if reply.get("body_len"):
        recv_exact(sock, reply["body_len"])
    if not reply.get("ok"):
        raise RuntimeError(f"{header['op']}: {reply.get('code')}: {reply.get('message')}")
    return reply


def open_session(host, port, user, password, login=True):
    sock = socket.create_connection((host, port))
    call(sock, {"id": 1, "op": "hello", "version": 1, "client": "bench/idle_conns.py"})
    if login:
        call(sock, {"id": 2, "op": "login", "user": user, "password": password})
    return sock


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, _, port = argv[0].rpartition(":")
    user, n = argv[1], int(argv[2])
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 2
    password = os.environ.get("FERRY_PASSWORD", "")
    login = "--hello-only" not in argv
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))

    socks, errors, lock = [], [], threading.Lock()
    per_thread = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def worker(count):
        for _ in range(count):
            try:
                s = open_session(host.strip("[]"), int(port), user, password, login)
            except Exception as e:  # noqa: BLE001 - report and stop
                with lock:
                    errors.append(repr(e))
                return
            with lock:
                socks.append(s)

    ts = [threading.Thread(target=worker, args=(c,)) for c in per_thread]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        print(f"idle_conns: {len(errors)} failed, first: {errors[0]}", file=sys.stderr)
    print(f"ready {len(socks)}", flush=True)
    sys.stdin.read(1)
    for i, s in enumerate(socks):
        try:
            call(s, {"id": 3 + i, "op": "quit"})
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        s.close()
    return 0 if not errors else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

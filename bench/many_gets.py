#!/usr/bin/env python3
"""N ferry downloads at once over N connections that are already logged in.

    many_gets.py HOST:PORT USER OUTDIR REMOTE...     (password from FERRY_PASSWORD)

Opens one connection per REMOTE file and logs each in (argon2id on the server), prints
`ready`, and waits for a line on standard input. Then every connection sends its `get` at the
same moment and streams the body into OUTDIR/<basename> (recv_into a 1 MiB buffer, no hashing
here: bench/run checks every file's bytes afterwards). Prints `done SECONDS` (the transfer
phase only) and waits for standard input to close before quitting.

This isolates the server's transfer path from session set-up, which `ferry get` processes pay
each time (process start, connect, hello, login). Standard library only.
"""

import json
import os
import socket
import struct
import sys
import threading
import time


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def send(sock, header):
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    sock.sendall(struct.pack("<I", len(h)) + h)


def read_header(sock):
    (n,) = struct.unpack("<I", recv_exact(sock, 4))
    reply = json.loads(recv_exact(sock, n).decode("utf-8"))
    if not reply.get("ok"):
        raise RuntimeError(f"{reply.get('code')}: {reply.get('message')}")
    return reply


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    host, _, port = argv[0].rpartition(":")
    user, outdir, remotes = argv[1], argv[2], argv[3:]
    password = os.environ.get("FERRY_PASSWORD", "")
    socks = []
    for _ in remotes:
        s = socket.create_connection((host.strip("[]"), int(port)))
        send(s, {"id": 1, "op": "hello", "version": 1, "client": "bench/many_gets.py"})
        read_header(s)
        send(s, {"id": 2, "op": "login", "user": user, "password": password})
        read_header(s)
        socks.append(s)
    print("ready", flush=True)
    sys.stdin.readline()

    errors = []
    go = threading.Barrier(len(remotes))

    def get(sock, remote):
        try:
            go.wait()
            send(sock, {"id": 3, "op": "get", "path": remote})
            reply = read_header(sock)
            left = reply.get("body_len", 0)
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            with open(os.path.join(outdir, os.path.basename(remote)), "wb") as f:
                while left:
                    n = sock.recv_into(view, min(left, len(buf)))
                    if not n:
                        raise ConnectionError("server closed the connection mid-file")
                    f.write(view[:n])
                    left -= n
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{remote}: {e!r}")

    threads = [threading.Thread(target=get, args=(s, r)) for s, r in zip(socks, remotes)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    print(f"done {elapsed:.6f}", flush=True)
    if errors:
        print(f"many_gets: {len(errors)} failed, first: {errors[0]}", file=sys.stderr)
    sys.stdin.read()
    for s in socks:
        try:
            send(s, {"id": 4, "op": "quit"})
        except OSError:
            pass
        s.close()
    return 0 if not errors else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

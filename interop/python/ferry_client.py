#!/usr/bin/env python3
"""A ferry client that uses only Python's standard library: socket, ssl, struct, json, hashlib.

It speaks docs/PROTOCOL.md the way the course's client does: pack the header's length with
struct, send the JSON header, then the body; read 4 bytes, unpack the length, read the header,
then exactly the number of body bytes it declares. Files are verified with md5, which every
Python has.

    python3 ferry_client.py --fingerprint sha256:… --user alice ls
    python3 ferry_client.py --cafile ferry-data/tls/cert.pem --user alice put notes.txt
    python3 ferry_client.py --plain --user alice get notes.txt ./downloads

ferry serves TLS unless started with --plain. Trust it either by the certificate fingerprint that
`ferry serve` prints (--fingerprint), or by a CA file (--cafile; the server's own self-signed
cert.pem works as one for the names it was made for: localhost, 127.0.0.1, ::1).

The password comes from the FERRY_PASSWORD environment variable, or a prompt.
"""

import argparse
import getpass
import hashlib
import json
import os
import socket
import ssl
import struct
import sys

BUFFER_SIZE = 1024 * 1024


class FerryError(Exception):
    """The server answered a request with an error code."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def recv_exact(sock, n):
    """Reads exactly n bytes: one recv() may return less (the sticky-packet lesson)."""
    chunks = []
    while n > 0:
        chunk = sock.recv(min(n, BUFFER_SIZE))
        if not chunk:
            raise ConnectionError("server closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def send_frame(sock, header, body=b""):
    if body:
        header = dict(header, body_len=len(body))
    header_bytes = json.dumps(header).encode("utf-8")
    # '<I': 4-byte unsigned little-endian, the same bytes the course's struct.pack('i', n) makes.
    sock.sendall(struct.pack("<I", len(header_bytes)) + header_bytes + body)


def recv_header(sock):
    (length,) = struct.unpack("<I", recv_exact(sock, 4))
    return json.loads(recv_exact(sock, length).decode("utf-8"))


def open_connection(host, port, plain=False, fingerprint=None, cafile=None):
    """A TCP connection, wrapped in TLS unless plain; the server is authenticated either by a
    CA file or by comparing its certificate's SHA-256 with the pinned fingerprint."""
    sock = socket.create_connection((host, port))
    if plain:
        return sock
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
        return context.wrap_socket(sock, server_hostname=host)
    if not fingerprint:
        sock.close()
        raise ValueError("TLS needs --fingerprint (ferry serve prints it) or --cafile; or --plain")
    # The fingerprint check below replaces CA verification: a self-signed certificate is fine
    # as long as it is exactly the one we pinned.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(sock, server_hostname=host)
    actual = "sha256:" + hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
    if actual != fingerprint.lower():
        tls.close()
        raise ConnectionError(f"certificate fingerprint {actual} is not the pinned {fingerprint}")
    return tls


class FerryClient:
    def __init__(self, host, port, **tls_options):
        self.sock = open_connection(host, port, **tls_options)
        self.next_id = 1

    def call(self, op, **fields):
        """Sends one request and returns its reply header (raises FerryError on failure)."""
        request_id = self.next_id
        self.next_id += 1
        send_frame(self.sock, dict(id=request_id, op=op, **fields))
        reply = recv_header(self.sock)
        if reply.get("body_len", 0):
            recv_exact(self.sock, reply["body_len"])
        return self.check(reply, request_id)

    @staticmethod
    def check(reply, request_id):
        if not reply.get("ok"):
            raise FerryError(reply.get("code"), reply.get("message"))
        if reply.get("id") != request_id:
            raise ConnectionError(f"reply id {reply.get('id')} for request {request_id}")
        return reply

    def hello(self):
        return self.call("hello", version=1, features=["hash:md5"], client="ferry_client.py")

    def login(self, user, password):
        return self.call("login", user=user, password=password)

    def ls(self, path="."):
        return self.call("ls", path=path)["entries"]

    def put(self, local_path, remote_path, overwrite=False):
        with open(local_path, "rb") as f:
            data = f.read()
        digest = "md5:" + hashlib.md5(data).hexdigest()
        request_id = self.next_id
        self.next_id += 1
        send_frame(
            self.sock,
            dict(id=request_id, op="put", path=remote_path, size=len(data), hash=digest,
                 overwrite=overwrite),
            data,
        )
        return self.check(recv_header(self.sock), request_id)

    def get(self, remote_path, local_path):
        """Downloads a file, verifying its md5 before it takes its final name."""
        request_id = self.next_id
        self.next_id += 1
        send_frame(self.sock, dict(id=request_id, op="get", path=remote_path, algo="md5"))
        reply = self.check(recv_header(self.sock), request_id)
        md5 = hashlib.md5()
        remaining = reply.get("body_len", 0)
        partial = local_path + ".part"
        with open(partial, "wb") as f:
            while remaining > 0:
                chunk = self.sock.recv(min(remaining, BUFFER_SIZE))
                if not chunk:
                    raise ConnectionError("server closed the connection mid-file")
                md5.update(chunk)
                f.write(chunk)
                remaining -= len(chunk)
        actual = "md5:" + md5.hexdigest()
        if actual != reply["hash"]:
            os.remove(partial)
            raise FerryError("checksum_mismatch", f"expected {reply['hash']}, got {actual}")
        os.replace(partial, local_path)
        return reply

    def quit(self):
        try:
            self.call("quit")
        finally:
            self.sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("FERRY_SERVER", "127.0.0.1:9696"))
    parser.add_argument("--user", default=os.environ.get("FERRY_USER"), required=False)
    parser.add_argument("--plain", action="store_true", help="plain TCP (server run with --plain)")
    parser.add_argument("--fingerprint", help="the server certificate's sha256:… fingerprint")
    parser.add_argument("--cafile", help="PEM file of the CA (or certificate) to trust")
    parser.add_argument("command", choices=["ls", "put", "get"])
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()

    host, _, port = args.server.rpartition(":")
    password = os.environ.get("FERRY_PASSWORD") or getpass.getpass("password: ")
    try:
        client = FerryClient(host.strip("[]"), int(port), plain=args.plain,
                             fingerprint=args.fingerprint, cafile=args.cafile)
    except (ValueError, ConnectionError, ssl.SSLError) as e:
        print(f"ferry_client.py: {e}", file=sys.stderr)
        return 3
    hello = client.hello()
    print(f"connected to {hello['server']} as {hello['peer']}")
    client.login(args.user, password)
    try:
        if args.command == "ls":
            for entry in client.ls(args.args[0] if args.args else "."):
                print(f"{entry['kind']:4} {entry['size']:>12} {entry['name']}")
        elif args.command == "put":
            for local in args.args:
                reply = client.put(local, os.path.basename(local))
                print(f"put {local} -> {reply['path']} {reply['size']} bytes {reply['hash']}")
        elif args.command == "get":
            remote, local_dir = args.args[0], (args.args[1] if len(args.args) > 1 else ".")
            local = os.path.join(local_dir, os.path.basename(remote))
            reply = client.get(remote, local)
            print(f"get {remote} -> {local} {reply['size']} bytes {reply['hash']} verified")
    except FerryError as e:
        print(f"ferry_client.py: {e}", file=sys.stderr)
        return 5
    finally:
        client.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())

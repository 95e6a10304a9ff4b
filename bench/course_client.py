#!/usr/bin/env python3
"""The course's download, reimplemented faithfully (the seed in shared/ holds only notes).

    course_client.py serve PORT FILE      tiny server: one connection, one file, then exit
    course_client.py get PORT OUT [--fixed-count]

The server sends what the course's server sends: struct.pack('i', len(header)), the header
(JSON with the file name, its total length in "data_all" and its md5), then the file's bytes
(with sendall; the course used send(), which may send less and is a bug of its own).

The client is the course's receive loop, line for line:

    count_data = 0
    data = b""
    buffer_size = 1024
    while count_data < data_length_all:
        data += client.recv(buffer_size)      # bytes += : copies all of data every time
        count_data += buffer_size             # counts 1024 even when recv returned less
    md5 = hashlib.md5(); md5.update(data)

`data += ...` on bytes copies the whole buffer on every call, so the loop is quadratic: for a
file of N bytes it copies about N^2 / 2048 bytes. `count_data += buffer_size` adds 1024 even
when recv() returned fewer bytes, so the loop can stop early with a short file (the md5 check
then fails). --fixed-count counts what was received instead (still quadratic), which is the
row we time as "the course's client".

Exit status: 0 if the md5 matched, 6 if it did not (short or wrong data).
"""

import hashlib
import json
import os
import socket
import struct
import sys


def serve(port, path):
    with open(path, "rb") as f:
        file_data = f.read()
    header = {
        "file_name": os.path.basename(path),
        "data_all": len(file_data),
        "md5": hashlib.md5(file_data).hexdigest(),
    }
    header_bytes = json.dumps(header).encode("utf-8")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(5)
    client_socket, _ = server.accept()
    client_socket.sendall(struct.pack("i", len(header_bytes)))
    client_socket.sendall(header_bytes)
    client_socket.sendall(file_data)
    # Wait for the client to close (it may stop reading early), then exit.
    try:
        while client_socket.recv(65536):
            pass
    except OSError:
        pass
    client_socket.close()
    server.close()


def get(port, out, fixed_count):
    client = socket.socket()
    client.connect(("127.0.0.1", port))
    # The course reads the 4 length bytes and the header with single recv() calls too.
    pack_data = client.recv(4)
    json_data_length_all = struct.unpack("i", pack_data)[0]
    file_data_dict = json.loads(client.recv(json_data_length_all))
    data_length_all = file_data_dict.get("data_all")
    count_data = 0
    data = b""
    buffer_size = 1024
    while count_data < data_length_all:
        chunk = client.recv(buffer_size)
        data += chunk
        if fixed_count:
            if not chunk:
                break
            count_data += len(chunk)
        else:
            count_data += buffer_size
    md5 = hashlib.md5()
    md5.update(data)
    client.close()
    with open(out, "wb") as f:
        f.write(data)
    if md5.hexdigest() != file_data_dict.get("md5"):
        print(
            f"course_client: md5 mismatch: received {len(data)} of {data_length_all} bytes",
            file=sys.stderr,
        )
        return 6
    return 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "serve":
        serve(int(argv[1]), argv[2])
        return 0
    if len(argv) >= 3 and argv[0] == "get":
        return get(int(argv[1]), argv[2], "--fixed-count" in argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

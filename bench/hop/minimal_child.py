#!/usr/bin/python3
"""bench/hop/minimal.c's Python child: echoes 4-byte-length-prefixed frames
on fd 3. The least a persistent Python worker can do per request: receive,
slice, hand to a function, send; answers of one read share one write."""
import socket
import struct

sock = socket.socket(fileno=3)
buf = bytearray(1 << 20)
view = memoryview(buf)
unpack = struct.Struct("<I").unpack_from
pack = struct.Struct("<I").pack


def handle(payload):
    return payload


start = end = 0
while True:
    try:
        got = sock.recv_into(view[end:])
    except ConnectionResetError:  # the server was stopped
        break
    if not got:
        break
    end += got
    out = []
    while end - start >= 4:
        (n,) = unpack(buf, start)
        if end - start - 4 < n:
            break
        body = handle(bytes(view[start + 4:start + 4 + n]))
        out.append(pack(len(body)) + body)
        start += 4 + n
    if out:
        sock.sendall(b"".join(out))
    if start == end:
        start = end = 0
    elif end > len(buf) // 2:
        kept = buf[start:end]
        buf[:len(kept)] = kept
        start, end = 0, len(kept)

#!/usr/bin/env python3
"""Writes the seed inputs of the `deframer` fuzz target into deframer/ (next to this file).

An input is one control byte, then a TCP byte stream: u32-big-endian length-prefixed messages,
each a rdma-rpc frame (16-byte header + body). The control byte's bits 6-7 pick the deframer's
maximum message size (0, 32, 1024, 16 MiB + 4096) and bits 0-5 the feeding chunk length
(0 = the whole stream at once). See fuzz_targets/deframer.rs.
"""

import os
import struct

END, HAS_MESSAGE = 1, 2
SETTINGS, CALL, MESSAGE, DATA, STREAM_END, TRAILER, CREDIT, PING, PONG, GOAWAY = range(1, 11)


def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def field_bytes(number, value):
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def header(kind, flags, call_id):
    return struct.pack(">BBHIQ", 1, kind, flags, 0, call_id)


def message(body):
    return struct.pack(">I", len(body)) + body


def status(code, text):
    return field_varint(1, code) + field_bytes(2, text)


settings = (
    field_varint(1, 16 * 1024 * 1024 + 16)
    + field_varint(2, 1 << 20)
    + field_varint(3, 1 << 24)
    + field_varint(5, 100)
    + field_varint(6, 1 << 16)
    + field_bytes(7, b"rdma-rpc/0.1")
)
call_header = (
    field_bytes(1, b"/rdmarpc.echo.Echo/Echo")
    + field_varint(2, 1_000_000)
    + field_bytes(3, field_bytes(1, b"trace-id") + field_bytes(2, b"4bf92f35"))
)
echo_request = field_bytes(1, b"hello")

SEEDS = {
    # Handshake, a unary call and its reply; fed whole, maximum 1024.
    "unary-call": (
        0x80,
        message(header(SETTINGS, 0, 0) + settings)
        + message(header(CALL, END | HAS_MESSAGE, 1) + varint(len(call_header)) + call_header + echo_request)
        + message(header(MESSAGE, END, 1) + echo_request),
    ),
    # Stream data, half-close, credit, trailer, ping/pong and a partial frame; byte by byte.
    "stream-byte-by-byte": (
        0x81,
        message(header(DATA, 0, 3) + bytes(range(32)))
        + message(header(DATA, END, 3))
        + message(header(STREAM_END, 0, 3))
        + message(header(CREDIT, 0, 0) + struct.pack(">QI", 1 << 16, 8))
        + message(header(TRAILER, 0, 3) + status(0, b""))
        + message(header(PING, 0, 0) + struct.pack(">Q", 42))
        + message(header(PONG, 0, 0) + struct.pack(">Q", 42))
        + struct.pack(">I", 40)
        + header(DATA, 0, 5)[:10],
    ),
    # GOAWAY with a status, then an empty message; chunks of 5, the default maximum.
    "goaway-chunked": (
        0xC5,
        message(header(GOAWAY, 0, 0) + field_varint(1, 7) + field_bytes(2, status(14, b"server shutting down")))
        + message(b""),
    ),
    # A valid PING, then a message over the 32-byte maximum; chunks of 3.
    "oversized": (
        0x43,
        message(header(PING, 0, 0) + struct.pack(">Q", 1)) + message(header(DATA, 0, 9) + bytes(64)),
    ),
}

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deframer")
    os.makedirs(out, exist_ok=True)
    for name, (control, stream) in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([control]) + stream)

"""A minimal TCP bulk sender/receiver for the fast-path benchmark (run inside namespaces).

    python bench/tcpbulk.py serve ADDR PORT [PORT ...]      # prints READY, serves forever
    python bench/tcpbulk.py send ADDR PORT BYTES            # prints {"seconds": s, "bytes": n}
    python bench/tcpbulk.py connect ADDR PORT COUNT         # prints {"connect_us": [...]}

The receiver answers each finished transfer with the byte count it read, so the sender's
time covers delivery, not just queueing into its own socket buffer.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

CHUNK = 1 << 20


def serve(addr: str, ports: list[int]) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for port in ports:
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, port))
        listener.listen(128)
        threading.Thread(target=accept_loop, args=(listener,), daemon=True).start()
    print("READY", flush=True)
    threading.Event().wait()


def accept_loop(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def drain(conn: socket.socket) -> None:
    buffer = bytearray(CHUNK)
    total = 0
    with conn:
        while read := conn.recv_into(buffer):
            total += read
        conn.sendall(total.to_bytes(8, "big"))


def send(addr: str, port: int, size: int) -> None:
    payload = memoryview(bytes(CHUNK))
    started = time.perf_counter()
    with socket.create_connection((addr, port), timeout=60) as conn:
        left = size
        while left > 0:
            conn.sendall(payload[: min(left, CHUNK)])
            left -= CHUNK
        conn.shutdown(socket.SHUT_WR)
        received = int.from_bytes(conn.recv(8), "big")
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "bytes": received}))


def connect(addr: str, port: int, count: int) -> None:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection((addr, port), timeout=10) as conn:
            times.append((time.perf_counter() - started) * 1e6)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(8)
    print(json.dumps({"connect_us": times}))


if __name__ == "__main__":
    mode, address = sys.argv[1], sys.argv[2]
    numbers = [int(arg) for arg in sys.argv[3:]]
    if mode == "serve":
        serve(address, numbers)
    elif mode == "send":
        send(address, numbers[0], numbers[1])
    else:
        connect(address, numbers[0], numbers[1])

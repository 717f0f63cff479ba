"""Never-reading PING flooders, in their own process (so that their sending
does not share the server's reactor): ``python flooder.py HOST PORT SECONDS
CLIENT_ID:TOKEN...``. Each client authenticates, reads its AUTH_OK, then sends PINGs as fast as
the socket takes them for SECONDS and never reads. Prints the bytes each one
got out, one line per client."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

from pigeonpush.wire.codec import ENCODED_PING, encode
from pigeonpush.wire.frames import Auth


def flood(host: str, port: int, seconds: float, client_id: str, token: str, out: list[int]) -> None:
    sent = 0
    chunk = ENCODED_PING * 2000
    deadline = time.monotonic() + seconds
    try:
        with socket.create_connection((host, port)) as sock:
            sock.sendall(encode(Auth(client_id, token)))
            _read_frame(sock)  # AUTH_OK (PINGs before it would be UNEXPECTED); no more reads
            sock.settimeout(0.2)
            while time.monotonic() < deadline:
                try:
                    sent += sock.send(chunk)
                except TimeoutError:
                    continue  # the server stopped reading: keep trying until the end
    except OSError:
        pass  # closed by the server
    out.append(sent)


def _read_frame(sock: socket.socket) -> bytes:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = sock.recv(size - len(data))
            if not more:
                raise OSError("closed")
            data += more
        return data

    (length,) = struct.unpack("!I", exactly(4))
    return exactly(length)


def main(argv: list[str]) -> None:
    host, port, seconds = argv[0], int(argv[1]), float(argv[2])
    results: list[int] = []
    threads = []
    for pair in argv[3:]:
        client_id, token = pair.split(":", 1)
        thread = threading.Thread(
            target=flood, args=(host, port, seconds, client_id, token, results)
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for sent in results:
        print(sent)


if __name__ == "__main__":
    main(sys.argv[1:])

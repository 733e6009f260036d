"""What unauthenticated uploads cost a `visdex serve --token` server: N clients at once each send a
24 MiB POST /api/search without a token; we record the server process's peak RSS growth and how
long each client waits for its 401.

    python benchmarks/server_unauth_uploads.py --index /tmp/ix            # 16 clients x 24 MiB
    PYTHONPATH=/tmp/old/src python benchmarks/server_unauth_uploads.py --index /tmp/ix   # another checkout

The server runs in a subprocess (its own RSS), bound to 127.0.0.1; the index needs a model that
loads offline (e.g. one made by tests/tinymodels.py, or lite0-minilm).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

SERVER = """
import sys, uvicorn
from visdex.server import create_app
app = create_app(sys.argv[1], token="s3cret")
app.state.served.warm()
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
"""


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def upload(port: int, size: int, out: list) -> None:
    t0 = time.perf_counter()
    head = b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
    head += f"Content-Length: {size}\r\n\r\n".encode()
    chunk, sent, status = b"\0" * (1 << 20), 0, None
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head)
        try:
            while sent < size:
                sent += s.send(chunk[: size - sent])
        except OSError:  # the server answered and closed: the rest of the body is not wanted
            pass
        with contextlib.suppress(OSError, IndexError):
            status = s.recv(64).split(b" ")[1].decode()
    out.append({"status": status, "sent_mib": round(sent / 2**20, 1), "seconds": round(time.perf_counter() - t0, 3)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--mib", type=int, default=24)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, args.index, str(port)], env=os.environ)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        before = rss_kib(proc.pid, "VmRSS")
        results: list = []
        threads = [threading.Thread(target=upload, args=(port, args.mib << 20, results)) for _ in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak = rss_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps({
        "clients": args.clients, "mib_each": args.mib, "rss_before_mib": round(before / 1024),
        "peak_rss_growth_mib": round((peak - before) / 1024), "wall_s": round(wall, 2),
        "statuses": sorted({r["status"] for r in results}, key=str),
        "max_mib_sent": max(r["sent_mib"] for r in results), "max_wait_s": max(r["seconds"] for r in results),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

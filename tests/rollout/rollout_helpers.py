"""Server processes and HTTP helpers shared by the rollout tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

SERVER_TOKEN = "test-token-8c1f"


class ServerProcess:
    """`megarl serve` as a subprocess; `url` once it listens."""

    def __init__(self, model_dir: str, *, token: str | None = SERVER_TOKEN, extra: list[str] | None = None):
        cmd = [sys.executable, "-m", "megarl.rollout.serve_cli", "--model", model_dir, "--port", "0", "--threads", "1"]
        cmd += extra or []
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        env.pop("MEGARL_SERVE_TOKEN", None)
        if token:
            env["MEGARL_SERVE_TOKEN"] = token  # the token never goes on the command line
        self.argv = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.url = None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on http://" in line:
                self.url = line.rsplit("listening on ", 1)[1].strip()
                break
        if self.url is None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(lines[-30:]))
        # keep draining output so the pipe never fills
        import threading
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def http_json(url: str, body: dict | None = None, *, token: str | None = None, method: str | None = None):
    """(status, parsed JSON or text) of one request; never raises on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("POST" if body is not None else "GET"),
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text

"""A real built-in server (RolloutServer + GenerationEngine) on 127.0.0.1 in a thread of the test process.

For tests that must reach inside the server: slow or wedge the engine's forward pass, read
the worker's state, or change a limit between requests.
"""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web

from megarl.rollout.engine import GenerationEngine
from megarl.rollout.server import RolloutServer


class InProcessServer:
    def __init__(self, model_dir: str, **server_options):
        self.engine = GenerationEngine(model_dir)
        self.server = RolloutServer(self.engine, **server_options)
        self.forward_calls = 0
        self.forward_delay_s = 0.0
        self.poison_token: int | None = None  # a prompt holding this token makes the forward pass raise
        self.gate = threading.Event()  # cleared: the forward pass blocks (a wedged worker)
        self.gate.set()
        original = self.engine._forward

        def forward(input_ids, *args):
            self.forward_calls += 1
            if self.poison_token is not None and bool((input_ids == self.poison_token).any()):
                raise RuntimeError(f"poisoned batch: token {self.poison_token} in a prompt")
            self.gate.wait()
            if self.forward_delay_s:
                time.sleep(self.forward_delay_s)
            return original(input_ids, *args)

        self.engine._forward = forward
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(60):
            raise RuntimeError("in-process server did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.server.app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def stop(self) -> None:
        self.gate.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

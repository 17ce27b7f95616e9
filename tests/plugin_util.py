"""Plugins written by a test: a module in a directory of its own, importable by name."""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def write_plugin(
    directory: Path, source: str, monkeypatch: pytest.MonkeyPatch | None = None, prefix: str = "p"
) -> str:
    """Write ``source`` as a new module in ``directory`` (put on ``sys.path`` when
    ``monkeypatch`` is given); its name, unique in the process."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    if monkeypatch is not None:
        monkeypatch.syspath_prepend(str(directory))
    importlib.invalidate_caches()
    return name


EXAMPLE_PROJECT = Path(__file__).resolve().parents[1] / "examples" / "chatproxy-plugin-example"


@pytest.fixture(scope="session")
def example_plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/chatproxy-plugin-example installed by pip, as a user would, into a directory of
    its own (not into the virtualenv: outside these tests, no plugin is loaded)."""
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path_factory.mktemp("example-plugin-source") / EXAMPLE_PROJECT.name
    shutil.copytree(EXAMPLE_PROJECT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path_factory.mktemp("example-plugin")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--target", str(target), str(source)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("chatproxy_plugin_example-*.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def example_plugin(example_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The installed example on this process's path and on its subprocesses'."""
    monkeypatch.syspath_prepend(str(example_plugin_dir))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(example_plugin_dir), *([path] if path else [])])
    )
    return example_plugin_dir

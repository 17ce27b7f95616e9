"""Plugins written by a test: a module in a directory of its own, importable by name."""

from __future__ import annotations

import importlib
import secrets
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

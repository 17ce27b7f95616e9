"""The ``llm`` CLI against the proxy, as its users drive it.

    .venv-clients/bin/python tests/clients/llm_client.py BASE_URL SCENARIO

A fresh LLM_USER_PATH holds an ``extra-openai-models.yaml`` whose model ``proxy`` points
``api_base`` at the proxy (no key needed: llm sends a dummy one). The commands run one after
the other in this process through ``llm``'s own click entry point (``llm.cli:cli``, what the
``llm`` executable calls), as llm's own tests drive it: one interpreter start for them all.
Each scenario runs once with ``--no-stream`` (``stream: false``) and once streaming, the mode
named in every prompt, and prints ``RESULT {json}``: each command's output, by mode.

- ``chat``: ``llm -m proxy PROMPT``, then ``llm -c PROMPT``; two separate
  ``llm -m proxy -s SAME PROMPT`` runs; ``llm -m proxy --schema ... PROMPT`` (JSON);
- ``functions``: ``llm -m proxy --functions CODE PROMPT`` (a tool round trip), then
  ``llm -c --functions CODE PROMPT`` (llm resends the call and its result from its log).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner
from llm.cli import cli

SYSTEM = "You are a terse assistant."
FUNCTIONS = """
def get_weather(city: str) -> str:
    "The weather in a city."
    return f"Sunny in {city}"
"""
MODES = {"no-stream": ["--no-stream"], "stream": []}


def llm(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"llm {' '.join(args)} exited {result.exit_code}: {result.output}")
    return result.output.strip()


def chat(mode: str) -> list[str]:
    flags = MODES[mode]
    return [
        llm("-m", "proxy", *flags, f"Hello there ({mode})"),
        llm("-c", *flags, f"Tell me more ({mode})"),
        llm("-m", "proxy", *flags, "-s", SYSTEM, f"Task one ({mode})"),
        llm("-m", "proxy", *flags, "-s", SYSTEM, f"Task two ({mode})"),
        llm("-m", "proxy", *flags, "--schema", "city, sunny bool", f"Forecast ({mode})"),
    ]


def functions(mode: str) -> list[str]:
    flags = [*MODES[mode], "--functions", FUNCTIONS]
    return [
        llm("-m", "proxy", *flags, f"Weather in Paris? ({mode})"),
        llm("-c", *flags, f"And tomorrow? ({mode})"),
    ]


def main(base_url: str, scenario: str, home: Path) -> None:
    os.environ["LLM_USER_PATH"] = str(home)
    model = {
        "model_id": "proxy",
        "model_name": "fake-model",
        "api_base": base_url,
        "supports_tools": True,
        "supports_schema": True,
    }
    # JSON is YAML: the list of one model, as llm's docs write it in YAML.
    (home / "extra-openai-models.yaml").write_text(json.dumps([model]))
    run = {"chat": chat, "functions": functions}[scenario]
    print("RESULT " + json.dumps({mode: run(mode) for mode in MODES}))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="llm-user-") as user_path:
        main(sys.argv[1], sys.argv[2], Path(user_path))

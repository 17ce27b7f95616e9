"""LiteLLM as a client of the proxy, as its users drive it:
``litellm.completion(model="openai/<model>", api_base=PROXY, api_key=...)``.

    .venv-clients/bin/python tests/clients/litellm_client.py BASE_URL SCENARIO

Each scenario runs once with ``stream=False`` and once with ``stream=True``, the mode named
in every user message, and prints ``RESULT {json}``: the text of each answer, by mode.

- ``two_turns``: a conversation of two turns (turn 2 resends turn 1 and its answer);
- ``shared_system``: two conversations that share only their system prompt;
- ``conversations``: both, one after the other (LiteLLM takes seconds to import: one start).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import litellm

SYSTEM = "You are a terse assistant."
MODES = {"no-stream": False, "stream": True}


def complete(base_url: str, messages: list[dict[str, Any]], stream: bool) -> str:
    response = litellm.completion(
        model="openai/fake-model",
        api_base=base_url,
        api_key="sk-dummy",
        messages=messages,
        stream=stream,
        num_retries=0,
    )
    if not stream:
        return response.choices[0].message.content
    return "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)


def two_turns(base_url: str, mode: str) -> list[str]:
    stream = MODES[mode]
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Turn one ({mode})"}]
    first = complete(base_url, messages, stream)
    messages += [
        {"role": "assistant", "content": first},
        {"role": "user", "content": f"Turn two ({mode})"},
    ]
    return [first, complete(base_url, messages, stream)]


def shared_system(base_url: str, mode: str) -> list[str]:
    return [
        complete(
            base_url,
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{task} ({mode})"},
            ],
            MODES[mode],
        )
        for task in ("Task one", "Task two")
    ]


def main(base_url: str, scenario: str) -> None:
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    run = {
        "two_turns": two_turns,
        "shared_system": shared_system,
        "conversations": lambda url, mode: two_turns(url, mode) + shared_system(url, mode),
    }[scenario]
    print("RESULT " + json.dumps({mode: run(base_url, mode) for mode in MODES}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

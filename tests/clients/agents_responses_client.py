"""openai-agents with its default model, the Responses API one, against the proxy.

    .venv-clients/bin/python tests/clients/agents_responses_client.py BASE_URL SCENARIO

The agent names its model as a string (``Agent(model="fake-model")``) and the SDK's default
provider resolves it, on the client given to ``set_default_openai_client``, to an
``OpenAIResponsesModel``: every model call is a ``POST /v1/responses``. Each scenario runs once
with ``Runner.run`` (``stream: false``) and once with ``Runner.run_streamed`` (``stream:
true``), the mode named in every user message, and prints ``RESULT {json}``: by mode, the
model class, each run's final output and ``last_response_id``, and every request the client
sent (its path, ``previous_response_id``, ``stream`` and the number of input items).

- ``previous``: a second turn continued on the server, ``previous_response_id`` set to the first
  run's ``last_response_id`` and only the new user message as input;
- ``input_list``: a second turn sent as ``result.to_input_list()`` plus a new user message;
- ``tool``: a function tool round trip, then a second turn with ``previous_response_id`` that
  calls the tool again (within that run the SDK chains each call on the one before);
- ``tool_input_list``: a function tool round trip, then a second turn from ``to_input_list()``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
from agents import (
    Agent,
    RunConfig,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.models.multi_provider import MultiProvider
from openai import AsyncOpenAI

INSTRUCTIONS = "You are a weather assistant. Answer briefly."
MODES = {"no-stream": False, "stream": True}
SCENARIOS = ("previous", "input_list", "tool", "tool_input_list")


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


class Recorder:
    """The requests a client sends, as the RESULT reports them."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        given = body.get("input")
        self.sent.append(
            {
                "path": request.url.path,
                "previous_response_id": body.get("previous_response_id"),
                "stream": bool(body.get("stream")),
                "inputs": len(given) if isinstance(given, list) else 1,
            }
        )


async def run(agent: Agent[Any], given: str | list[Any], stream: bool, **kwargs: Any) -> Any:
    if not stream:
        return await Runner.run(agent, given, **kwargs)
    result = Runner.run_streamed(agent, given, **kwargs)
    async for _ in result.stream_events():
        pass
    return result


def summary(result: Any) -> dict[str, Any]:
    return {"output": result.final_output, "last_response_id": result.last_response_id}


async def scenario(name: str, mode: str) -> list[dict[str, Any]]:
    stream = MODES[mode]
    tools = [get_weather] if name.startswith("tool") else []
    agent = Agent(name="weather", instructions=INSTRUCTIONS, model="fake-model", tools=tools)
    ask = "Weather in Paris?" if tools else "Turn one"
    then = "And tomorrow?" if tools else "Turn two"
    first = await run(agent, f"{ask} ({mode})", stream)
    if name.endswith("input_list"):
        again = [*first.to_input_list(), {"role": "user", "content": f"{then} ({mode})"}]
        second = await run(agent, again, stream)
    else:
        previous = first.last_response_id
        second = await run(agent, f"{then} ({mode})", stream, previous_response_id=previous)
    return [summary(first), summary(second)]


async def main(base_url: str, name: str) -> None:
    if name not in SCENARIOS:
        raise SystemExit(f"unknown scenario {name!r}")
    set_tracing_disabled(True)
    recorder = Recorder()
    http = httpx.AsyncClient(event_hooks={"request": [recorder]})
    client = AsyncOpenAI(base_url=base_url, api_key="sk-dummy", max_retries=0, http_client=http)
    set_default_openai_client(client, use_for_tracing=False)
    model = MultiProvider().get_model("fake-model")  # what RunConfig's default provider gives
    assert isinstance(RunConfig().model_provider, MultiProvider)
    outputs: dict[str, Any] = {}
    for mode in MODES:
        runs = await scenario(name, mode)
        outputs[mode] = {"model": type(model).__name__, "runs": runs, "sent": recorder.sent}
        recorder.sent = []
    await client.close()
    print("RESULT " + json.dumps(outputs))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

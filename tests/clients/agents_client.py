"""openai-agents with OpenAIChatCompletionsModel against the proxy, as its users drive it.

    .venv-clients/bin/python tests/clients/agents_client.py BASE_URL SCENARIO

Each scenario runs once with ``Runner.run`` (``stream: false``) and once with
``Runner.run_streamed`` (``stream: true``), the mode named in every user message, and prints
``RESULT {json}``: each run's final output, by mode.

- ``two_runs``: two runs of one agent (same instructions, a structured output type);
- ``two_turns``: a second turn sent as ``result.to_input_list()`` plus a new user message;
- ``tool``: a function tool round trip, then a second turn that calls it again.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI
from pydantic import BaseModel

INSTRUCTIONS = "You are a weather assistant. Answer briefly."
MODES = {"no-stream": False, "stream": True}


class Forecast(BaseModel):
    city: str
    sunny: bool


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


async def run(agent: Agent[Any], given: str | list[Any], stream: bool) -> Any:
    if not stream:
        return await Runner.run(agent, given)
    result = Runner.run_streamed(agent, given)
    async for _ in result.stream_events():
        pass
    return result


def output(result: Any) -> Any:
    final = result.final_output
    return final.model_dump() if isinstance(final, BaseModel) else final


async def scenario(name: str, model: OpenAIChatCompletionsModel, mode: str) -> list[Any]:
    stream = MODES[mode]
    if name == "two_runs":
        agent = Agent(
            name="forecaster", instructions=INSTRUCTIONS, model=model, output_type=Forecast
        )
        first = await run(agent, f"Forecast for Paris ({mode})", stream)
        second = await run(agent, f"Forecast for Rome ({mode})", stream)
        return [output(first), output(second)]
    if name == "two_turns":
        agent = Agent(name="chatter", instructions=INSTRUCTIONS, model=model)
        first = await run(agent, f"Turn one ({mode})", stream)
        again = [*first.to_input_list(), {"role": "user", "content": f"Turn two ({mode})"}]
        second = await run(agent, again, stream)
        return [output(first), output(second)]
    if name == "tool":
        agent = Agent(name="weather", instructions=INSTRUCTIONS, model=model, tools=[get_weather])
        first = await run(agent, f"Weather in Paris? ({mode})", stream)
        again = [*first.to_input_list(), {"role": "user", "content": f"And tomorrow? ({mode})"}]
        second = await run(agent, again, stream)
        return [output(first), output(second)]
    raise SystemExit(f"unknown scenario {name!r}")


async def main(base_url: str, name: str) -> None:
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key="sk-dummy", max_retries=0)
    model = OpenAIChatCompletionsModel(model="fake-model", openai_client=client)
    outputs = {mode: await scenario(name, model, mode) for mode in MODES}
    await client.close()
    print("RESULT " + json.dumps(outputs))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

"""langchain-openai's ChatOpenAI against the proxy, as its users drive it.

    .venv-clients/bin/python tests/clients/langchain_client.py BASE_URL SCENARIO

Each scenario runs once with ``invoke`` (``stream: false``) and once with ``stream``
(``stream: true``), the mode named in every user message, and prints ``RESULT {json}``: the
text of each answer, by mode.

- ``chat``: a one-shot string prompt, then a two-turn message list that starts with a
  SystemMessage (turn 2 resends turn 1 and its answer);
- ``tools``: ``bind_tools`` with a tool round trip, then a second turn that calls it again
  (LangChain resends the call's arguments re-serialised by ``json.dumps``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

SYSTEM = "You are a terse assistant."
MODES = ("no-stream", "stream")


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def ask(model: Any, given: str | list[BaseMessage], mode: str) -> AIMessage:
    if mode == "no-stream":
        return model.invoke(given)
    full = None
    for chunk in model.stream(given):
        full = chunk if full is None else full + chunk
    assert full is not None
    return full


def chat(llm: ChatOpenAI, mode: str) -> list[Any]:
    one_shot = ask(llm, f"Hello there ({mode})", mode)
    messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(f"Turn one ({mode})")]
    first = ask(llm, messages, mode)
    messages += [first, HumanMessage(f"Turn two ({mode})")]
    second = ask(llm, messages, mode)
    return [one_shot.content, first.content, second.content]


def tools(llm: ChatOpenAI, mode: str) -> list[Any]:
    bound = llm.bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(f"Weather in Paris? ({mode})")]
    answers = []
    for follow_up in (f"And tomorrow? ({mode})", None):
        call = ask(bound, messages, mode)
        messages += [call, *(get_weather.invoke(c) for c in call.tool_calls)]
        answer = ask(bound, messages, mode)
        messages.append(answer)
        answers.append({"args": [c["args"] for c in call.tool_calls], "text": answer.content})
        if follow_up is not None:
            messages.append(HumanMessage(follow_up))
    return answers


def main(base_url: str, scenario: str) -> None:
    llm = ChatOpenAI(model="fake-model", base_url=base_url, api_key="sk-dummy", max_retries=0)
    run = {"chat": chat, "tools": tools}[scenario]
    print("RESULT " + json.dumps({mode: run(llm, mode) for mode in MODES}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

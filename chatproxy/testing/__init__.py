"""A scriptable fake OpenAI-compatible upstream for tests, demos and benchmarks.

::

    async with FakeUpstream() as fake:
        fake.enqueue(Reply(content="Hi there"), Reply(status=503, headers={"Retry-After": "1"}))
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="x")
        ...
        assert fake.chat_requests[0].json["messages"][0]["role"] == "user"

It speaks the Chat Completions and the Responses wire formats closely enough for the ``openai``
SDK to parse, and misbehaves on demand: slow or fragmented streams, dropped connections, bad
events, failures mid-stream, error statuses.

``POST /v1/responses`` answers from the same queue. A reply's reasoning becomes a ``reasoning``
item (its summary), its content and refusal a ``message`` item, its tool calls ``function_call``
items; ``finish_reason="length"`` (or a ``max_output_tokens`` below the reply's piece count, which
cuts it there) makes it ``incomplete``. ``responses="stateful"`` (the default) remembers what it
answered, as OpenAI does, and resolves ``previous_response_id`` itself (what the model saw is
``RecordedRequest.model_input``); ``"stateless"`` remembers nothing, as vLLM, Ollama and
llama.cpp do; ``"none"`` answers 404 there, as an upstream without that API does.

With ``auto`` (``FakeUpstream(auto=True)`` for every unscripted answer, ``Reply(auto=True)`` for
one; ``demo`` implies it) it answers in kind, as an agent framework expects a model to:

- the request offers ``tools`` and its last message is not a tool result: a call of the tool
  ``tool_choice`` names (else the first one), its arguments built from the tool's JSON schema
  (required properties only: strings ``"Paris"``, numbers ``1``, booleans ``true``), spelled
  compact as OpenAI sends them (``{"city":"Paris"}``) or, with ``spaced_arguments``, as
  Python's ``json.dumps`` does (``{"city": "Paris"}``), and streamed in fragments;
- ``response_format`` (Responses: ``text.format``) asks for JSON: a JSON document
  (``json_schema``: one with the schema's required properties; ``json_object``:
  ``{"answer": <the reply's text>}``);
- the last message is a tool result: text quoting it (``The tool said: ...``).

The package: ``replies`` (``Reply``, ``ToolCall`` and how a reply resolves against its request,
``auto`` included), ``chat_wire`` (the Chat Completions wire format, and how a stream is written
and made to misbehave), ``responses_wire`` (the Responses API wire format and its stored
chains), ``server`` (``FakeUpstream`` and ``RecordedRequest``).
"""

# The names in ``__all__``, and (``X as X``) the other public names the single module had.
from chatproxy.testing.replies import (
    DEFAULT_CONTENT,
    PLACEHOLDER_TEXT,
    Reply,
    ToolCall,
    example_value,
)
from chatproxy.testing.replies import DEMO_CHUNK_DELAY as DEMO_CHUNK_DELAY
from chatproxy.testing.replies import MODELS as MODELS
from chatproxy.testing.responses_wire import ResponsesMode as ResponsesMode
from chatproxy.testing.server import FAST_CHUNKS as FAST_CHUNKS
from chatproxy.testing.server import FakeUpstream, RecordedRequest

__all__ = [
    "DEFAULT_CONTENT",
    "PLACEHOLDER_TEXT",
    "FakeUpstream",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "example_value",
]

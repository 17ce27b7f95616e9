"""Property: however an upstream's byte stream is split into reads, the proxy's parser and
accumulator produce the same stored message."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from chatproxy.engine.accumulate import Accumulator
from chatproxy.engine.sse import SSEParser

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
delta = st.one_of(
    st.builds(lambda t: {"content": t}, text),
    st.builds(lambda t: {"reasoning_content": t}, text),
    st.builds(
        lambda i, name, args: {
            "tool_calls": [
                {
                    "index": i,
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
            ]
        },
        st.integers(0, 2),
        st.sampled_from(["get_weather", "search"]),
        text,
    ),
    st.builds(
        lambda i, args: {"tool_calls": [{"index": i, "function": {"arguments": args}}]},
        st.integers(0, 2),
        text,
    ),
)


def render(deltas: list[dict], line_ending: bytes) -> bytes:
    events = []
    for d in deltas:
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": d, "finish_reason": None}],
        }
        events.append(b"data: " + orjson.dumps(chunk))
    final = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": None,
    }
    events.append(b"data: " + orjson.dumps(final))
    usage = {
        "id": "chatcmpl-1",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    events.append(b"data: " + orjson.dumps(usage))
    events.append(b"data: [DONE]")
    sep = line_ending * 2
    return sep.join(events) + sep


def run(stream: bytes, cuts: list[int]) -> tuple[dict, bytes]:
    """Feed ``stream`` split at ``cuts``; the accumulated message and the forwarded bytes."""
    parser, acc = SSEParser(), Accumulator()
    forwarded = []
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for start, end in itertools.pairwise(bounds):
        events, raws = parser.split(stream[start:end])
        forwarded.extend(raws)
        for ev in events:
            if ev.data != b"[DONE]":
                acc.add_chunk(orjson.loads(ev.data))
    events, raws, tail = parser.finish()
    forwarded += [*raws, tail]
    for ev in events:
        if ev.data != b"[DONE]":
            acc.add_chunk(orjson.loads(ev.data))
    result = acc.message() | {"finish_reason": acc.finish_reason, "usage": acc.usage}
    return result, b"".join(forwarded)


@settings(max_examples=300, deadline=None)
@given(
    deltas=st.lists(delta, max_size=15),
    line_ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    data=st.data(),
)
def test_any_split_of_a_valid_stream_yields_the_same_message_and_bytes(
    deltas: list[dict], line_ending: bytes, data: st.DataObject
) -> None:
    stream = render(deltas, line_ending)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    whole, forwarded_whole = run(stream, [])
    split, forwarded_split = run(stream, cuts)
    assert split == whole
    # Forwarding never changes a byte, whatever the reads.
    assert forwarded_split == forwarded_whole == stream
    assert whole["finish_reason"] == "stop"
    assert whole["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    expected_text = "".join(d.get("content", "") for d in deltas)
    assert (whole["content"] or "") == expected_text

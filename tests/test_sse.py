"""SSEParser: WHATWG line/field rules under arbitrary chunking."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatproxy.engine.sse import SSEEvent, SSEParser

Event = tuple[bytes, str | None, str | None]

STREAM = (
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    b": keep-alive\n\n"
    b"event: ping\nid: 7\ndata: first\ndata: second\n\n"
    b"retry: 1000\n\n"
    b"data:no-space\r\n\r\n"
    b"data:  two spaces\r\rdata\n\n"
    b"data: [DONE]\n\n"
)


def ev(data: bytes, event: str | None = None, id: str | None = None) -> Event:
    """An expected event."""
    return (data, event, id)


def fields(events: list[SSEEvent]) -> list[Event]:
    return [(e.data, e.event, e.id) for e in events]


EXPECTED = [
    ev(b'{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}', None, None),
    ev(b"first\nsecond", "ping", "7"),
    ev(b"no-space", None, None),
    ev(b" two spaces", None, None),
    ev(b"", None, None),
    ev(b"[DONE]", None, None),
]


def feed_all(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    return events


def parse(chunks: list[bytes]) -> list[Event]:
    return fields(feed_all(chunks))


def test_one_feed_yields_every_event_in_order() -> None:
    parser = SSEParser()
    assert fields(parser.feed(STREAM)) == EXPECTED
    assert fields(parser.flush()) == []


def test_every_single_split_point_yields_the_same_events() -> None:
    for cut in range(len(STREAM) + 1):
        assert parse([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_every_pair_of_split_points_yields_the_same_events() -> None:
    stream = b"data: a\r\n\r\nevent: e\rdata: b\r\rdata: c\n\n"
    expected = [ev(b"a"), ev(b"b", "e"), ev(b"c")]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            assert parse([stream[:i], stream[i:j], stream[j:]]) == expected, (i, j)


def test_one_byte_at_a_time_yields_the_same_events() -> None:
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_events_are_returned_by_the_feed_that_completes_them() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"data: one\n\ndata: tw")) == [ev(b"one")]
    assert fields(parser.feed(b"o\n")) == []
    assert fields(parser.feed(b"\ndata: three\n\n")) == [ev(b"two"), ev(b"three")]


def test_crlf_split_between_feeds_is_one_line_ending() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"data: a\r")) == []
    # If the \n were taken as a second (blank) line the event would be dispatched here.
    assert fields(parser.feed(b"\ndata: b\r")) == []
    assert fields(parser.feed(b"\n\r")) == [ev(b"a\nb")]
    assert fields(parser.feed(b"\n")) == []
    assert fields(parser.flush()) == []


def test_lone_cr_line_endings() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"data: a\rdata: b\r\rdata: c\r")) == [ev(b"a\nb")]
    assert fields(parser.feed(b"\r")) == [ev(b"c")]


def test_comments_are_ignored() -> None:
    stream = b": hello\n\n:\ndata: x\n: inside\ndata: y\n\n"
    assert parse([stream]) == [ev(b"x\ny")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse([b'data: {\ndata:   "a": 1\ndata: }\n\n']) == [ev(b'{\n  "a": 1\n}')]


def test_event_and_id_fields_apply_to_their_event_only() -> None:
    stream = b"event: delta\nid: 42\ndata: x\n\ndata: y\n\n"
    assert parse([stream]) == [ev(b"x", "delta", "42"), ev(b"y", None, None)]


def test_only_one_leading_space_is_stripped_from_values() -> None:
    assert parse([b"event:  e\ndata:\tx \n\n"]) == [ev(b"\tx ", " e")]


def test_line_without_colon_is_a_field_with_empty_value() -> None:
    assert parse([b"data\ndata\n\n"]) == [ev(b"\n")]


def test_events_without_data_are_not_dispatched() -> None:
    assert parse([b"event: x\nid: 1\n\nretry: 5\n\nfoo: bar\n\n\n\n"]) == []


def test_unknown_fields_are_ignored() -> None:
    assert parse([b"foo: 1\nretry: 10\ndata: x\nDATA: no\n\n"]) == [ev(b"x")]


def test_id_containing_nul_is_ignored() -> None:
    assert parse([b"id: a\x00b\ndata: x\n\n"]) == [ev(b"x", None, None)]


def test_bom_at_stream_start_is_stripped_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    for cut in range(len(stream) + 1):
        assert parse([stream[:cut], stream[cut:]]) == [ev(b"x")], cut


def test_bom_later_in_the_stream_is_kept() -> None:
    assert parse([b"data: a\n\ndata: \xef\xbb\xbfb\n\n"]) == [
        ev(b"a"),
        ev(b"\xef\xbb\xbfb"),
    ]


def test_flush_returns_an_unterminated_event_with_data() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"data: done\n\nevent: last\ndata: tail")) == [ev(b"done")]
    assert fields(parser.flush()) == [ev(b"tail", "last")]


def test_flush_after_single_newline_and_cr() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"data: tail\r")) == []
    assert fields(parser.flush()) == [ev(b"tail")]


def test_flush_drops_an_event_without_data_and_resets() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"event: x\n")) == []
    assert fields(parser.flush()) == []
    assert fields(parser.feed(b"\xef\xbb\xbfdata: again\n\n")) == [ev(b"again")]


def test_empty_feeds_are_harmless() -> None:
    parser = SSEParser()
    assert fields(parser.feed(b"")) == []
    assert fields(parser.feed(b"data: x\r")) == []
    assert fields(parser.feed(b"")) == []
    assert fields(parser.feed(b"\n\n")) == [ev(b"x")]


def test_big_event_in_small_pieces_is_reassembled() -> None:
    payload = b"x" * 200_000
    stream = b"data: " + payload + b"\n\n"
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(stream), 7):
        events.extend(parser.feed(stream[i : i + 7]))
    assert fields(events) == [ev(payload)]


line_text = st.text(
    alphabet=st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)),
    max_size=40,
)


@given(
    payloads=st.lists(line_text, max_size=8),
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=10),
)
def test_any_payloads_split_anywhere_come_back_exactly(
    payloads: list[str], ending: bytes, cuts: list[int]
) -> None:
    stream = b"".join(b"data: " + p.encode() + ending + ending for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert [e.data.decode() for e in feed_all(chunks)] == payloads


def split_all(chunks: list[bytes]) -> tuple[list[SSEEvent], list[bytes], bytes]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    raws: list[bytes] = []
    for chunk in chunks:
        got, pieces = parser.split(chunk)
        events += got
        raws += pieces
    got, pieces, tail = parser.finish()
    return events + got, raws + pieces, tail


def test_each_event_comes_with_the_untouched_bytes_that_carry_it() -> None:
    stream = b"\xef\xbb\xbf" + STREAM + b": trailing comment\n\n"
    for cut in range(len(stream) + 1):
        for second in (cut, min(len(stream), cut + 3)):
            chunks = [stream[:cut], stream[cut:second], stream[second:]]
            events, raws, tail = split_all(chunks)
            assert fields(events) == EXPECTED, cut
            assert len(raws) == len(events)
            assert b"".join(raws) + tail == stream, cut
            assert tail == b": trailing comment\n\n"
            # Every piece holds its event whole: read alone, it gives that event.
            for event, raw in zip(events, raws, strict=True):
                alone = SSEParser()
                assert fields(alone.feed(raw) + alone.flush()) == fields([event]), (cut, raw)


def test_a_chunk_holding_one_event_is_forwarded_as_read() -> None:
    chunk = b'data: {"choices":[]}\n\n'
    events, raws = SSEParser().split(chunk)
    assert raws[0] is chunk and events[0].data == b'{"choices":[]}'


def test_an_unterminated_last_event_keeps_its_own_bytes() -> None:
    for stream in (b"data: x", b"data: x\n", b"data: x\r", b"data: x\r\n"):
        events, raws, tail = split_all([stream])
        assert fields(events) == [ev(b"x")] and raws == [stream] and tail == b"", stream

"""Items and messages (chatproxy.faces.items) and the Responses request's checks and its
translation to chat completions (chatproxy.faces.responses.translate), as pure functions: every
item kind, every refusal's exact code, param and message, round trips, and the shapes checked
against the openai SDK's own types."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)
from openai.types.chat.completion_create_params import ResponseFormat
from openai.types.conversations.conversation_item import ConversationItem
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseInputItemParam,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseReasoningItem,
)
from pydantic import TypeAdapter

from chatproxy.errors import InvalidRequest
from chatproxy.faces.items import (
    ItemError,
    answer_items,
    input_to_messages,
    items_to_messages,
    message_items,
    messages_to_input,
)
from chatproxy.faces.responses.translate import chat_request, validate_request
from chatproxy.store.models import Message, Status

OUTPUT_ITEM: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)
CONVERSATION_ITEM: TypeAdapter[Any] = TypeAdapter(ConversationItem)
INPUT_ITEMS: TypeAdapter[Any] = TypeAdapter(list[ResponseInputItemParam])
CHAT_MESSAGES: TypeAdapter[Any] = TypeAdapter(list[ChatCompletionMessageParam])

IMAGE = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQ="
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
CALL_2 = {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}


def refusal(fn: Any, *args: Any) -> tuple[str, str, str]:
    """The ``(code, param, message)`` of the ItemError ``fn(*args)`` raises."""
    with pytest.raises(ItemError) as err:
        fn(*args)
    code, param, message = err.value.args
    return code, param, message


def invalid(fn: Any, *args: Any) -> tuple[str | None, str | None, str]:
    """The ``(code, param, message)`` of the 400 ``fn(*args)`` raises."""
    with pytest.raises(InvalidRequest) as err:
        fn(*args)
    assert err.value.status == 400 and err.value.type == "invalid_request_error"
    return err.value.code, err.value.param, err.value.message


def stored(mid: str, role: str, data: dict[str, Any], status: str = Status.COMPLETED) -> Message:
    return Message(id=mid, chat_id="chat_1", role=role, data=data, status=status)


def sdk_output(item: dict[str, Any]) -> Any:
    """``item`` parsed by the SDK as an output item; it must dump back to exactly itself."""
    parsed = OUTPUT_ITEM.validate_python(item)
    assert parsed.to_dict() == item
    return parsed


# -- input -> messages -----------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    assert input_to_messages("Hi there") == [{"role": "user", "content": "Hi there"}]
    assert input_to_messages("") == [{"role": "user", "content": ""}]


def test_easy_messages_of_every_role_are_stored_as_sent() -> None:
    items = [{"role": r, "content": f"{r} says"} for r in ("system", "developer", "user")]
    items.append({"role": "assistant", "content": "assistant says"})
    assert input_to_messages(items) == [
        {"role": r, "content": f"{r} says"} for r in ("system", "developer", "user", "assistant")
    ]


def test_text_parts_join_and_images_and_files_are_kept_as_chat_parts() -> None:
    items = [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look "},
                {"type": "input_text", "text": "at this"},
            ],
        },
        {
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [
                {"type": "input_text", "text": "And these:"},
                {"type": "input_image", "image_url": IMAGE},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                {"type": "input_file", "file_data": PDF, "filename": "a.pdf"},
                {"type": "input_file", "file_id": "file-abc"},
            ],
        },
    ]
    messages = input_to_messages(items)
    assert messages == [
        {"role": "user", "content": "Look at this"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And these:"},
                {"type": "image_url", "image_url": {"url": IMAGE, "detail": "auto"}},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/a.png", "detail": "low"},
                },
                {"type": "file", "file": {"file_data": PDF, "filename": "a.pdf"}},
                {"type": "file", "file": {"file_id": "file-abc"}},
            ],
        },
    ]
    CHAT_MESSAGES.validate_python(messages)


def test_an_assistant_message_item_keeps_its_text_and_its_refusal() -> None:
    items = [
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Sure.", "annotations": []}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "I can't help with that."}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Partly: ", "annotations": []},
                {"type": "refusal", "refusal": "not that."},
            ],
        },
    ]
    assert input_to_messages(items) == [
        {"role": "assistant", "content": "Sure."},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "assistant", "content": "Partly: ", "refusal": "not that."},
    ]


def test_function_calls_join_the_answer_before_them_and_outputs_are_tool_messages() -> None:
    items = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Checking."},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "weather",
            "arguments": "{}",
            "status": "completed",
        },
        {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "no"}, {"type": "input_text", "text": "on"}],
        },
        {"type": "function_call", "call_id": "call_3", "name": "weather", "arguments": "{}"},
    ]
    assert input_to_messages(items) == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, CALL_2]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        # No answer before it to join: a call starts one, as a chat completion carries it.
        {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": "call_3"}]},
    ]


def test_reasoning_is_stored_with_the_answer_that_follows_it() -> None:
    summary = [
        {"type": "summary_text", "text": "**Plan**"},
        {"type": "summary_text", "text": "Be kind."},
    ]
    items = [
        {"role": "user", "content": "Hi"},
        {"type": "reasoning", "id": "rs_1", "summary": summary, "encrypted_content": "gAAA"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
        # Raw reasoning text (open-weight models) when there is no summary.
        {
            "type": "reasoning",
            "id": "rs_2",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "Call the tool."}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        # Two in a row, and one that is only encrypted (nothing to keep).
        {"type": "reasoning", "id": "rs_3", "summary": [{"type": "summary_text", "text": "A"}]},
        {"type": "reasoning", "id": "rs_4", "summary": [], "encrypted_content": "gAAB"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "B"}]},
        {"role": "assistant", "content": "18C."},
        # Between an answer and its call: still that answer's.
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "More."}]},
        {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
    ]
    assert input_to_messages(items) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "**Plan**\n\nBe kind."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Call the tool.",
            "tool_calls": [CALL],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {
            "role": "assistant",
            "content": "18C.",
            "reasoning_content": "A\n\nB\n\nMore.",
            "tool_calls": [CALL_2],
        },
    ]
    only_encrypted = [items[8], {"role": "assistant", "content": "x"}]
    assert input_to_messages(only_encrypted) == [{"role": "assistant", "content": "x"}]


def test_the_conversations_default_bound_is_1000_items_and_input_has_none() -> None:
    many = [{"role": "user", "content": "x"}] * 1001
    assert refusal(items_to_messages, many) == (
        "invalid_value",
        "items",
        "'items' must be an array of at most 1000 items",
    )
    assert len(input_to_messages(many)) == 1001


IMG = {"type": "input_image", "image_url": IMAGE}


@pytest.mark.parametrize(
    ("value", "code", "param", "message"),
    [
        (5, "invalid_type", "input", "'input' must be a string or an array of input items"),
        (
            None,
            "missing_required_parameter",
            "input",
            "'input' must be a string or an array of input items",
        ),
        (["hi"], "invalid_type", "input[0]", "'input[0]' must be an object"),
        (
            [{"role": "wizard", "content": "x"}],
            "invalid_value",
            "input[0].role",
            "'input[0].role' must be one of user, system, developer, assistant",
        ),
        (
            [{"role": "user"}],
            "missing_required_parameter",
            "input[0].content",
            "'input[0].content' must be a string or an array of content parts",
        ),
        (
            [{"role": "user", "content": 5}],
            "invalid_type",
            "input[0].content",
            "'input[0].content' must be a string or an array of content parts",
        ),
        (
            [{"role": "user", "content": ["x"]}],
            "invalid_type",
            "input[0].content[0]",
            "'input[0].content[0]' must be an object",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "user", "content": [{"type": "input_audio"}]},
            ],
            "invalid_value",
            "input[2].content[0].type",
            "'input[2].content[0].type' must be input_text, input_image or input_file",
        ),
        (
            [{"role": "user", "content": [{"type": "input_text"}]}],
            "missing_required_parameter",
            "input[0].content[0].text",
            "'input[0].content[0].text' is required and must be a string",
        ),
        (
            [{"role": "user", "content": [{"type": "input_text", "text": 7}]}],
            "invalid_type",
            "input[0].content[0].text",
            "'input[0].content[0].text' is required and must be a string",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}],
                }
            ],
            "unsupported_parameter",
            "input[0].content[0].file_id",
            "'input[0].content[0].file_id' is not supported: images are stored by URL, send "
            "image_url (a URL or a data: URL)",
        ),
        (
            [{"role": "user", "content": [{"type": "input_image", "detail": "auto"}]}],
            "missing_required_parameter",
            "input[0].content[0].image_url",
            "'input[0].content[0].image_url' is required and must be a string",
        ),
        (
            [{"role": "user", "content": [{**IMG, "detail": "huge"}]}],
            "invalid_value",
            "input[0].content[0].detail",
            "'input[0].content[0].detail' must be one of auto, low, high, original",
        ),
        (
            [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}],
            "unsupported_parameter",
            "input[0].content[0].file_url",
            "'input[0].content[0].file_url' is not supported: send the file as file_data (a "
            "data: URL) or file_id",
        ),
        (
            [{"role": "user", "content": [{"type": "input_file", "filename": "a.pdf"}]}],
            "missing_required_parameter",
            "input[0].content[0].file_data",
            "'input[0].content[0].file_data' (or file_id) is required",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "input_file", "file_data": PDF, "filename": 1}],
                }
            ],
            "invalid_type",
            "input[0].content[0].filename",
            "'input[0].content[0].filename' must be a string",
        ),
        (
            [{"role": "assistant", "content": [IMG]}],
            "invalid_value",
            "input[0].content[0].type",
            "'input[0].content[0].type' must be output_text or refusal",
        ),
        (
            [{"role": "assistant", "content": [{"type": "refusal"}]}],
            "missing_required_parameter",
            "input[0].content[0].refusal",
            "'input[0].content[0].refusal' is required and must be a string",
        ),
        (
            [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}],
            "invalid_value",
            "input[0].content[0].type",
            "'input[0].content[0].type' must be input_text, input_image or input_file",
        ),
        (
            [{"type": "item_reference", "id": "msg_1"}],
            "invalid_value",
            "input[0].type",
            "'input[0].type' must be message, function_call, function_call_output or reasoning",
        ),
        (
            [{"type": "web_search_call", "id": "ws_1", "status": "completed"}],
            "invalid_value",
            "input[0].type",
            "'input[0].type' must be message, function_call, function_call_output or reasoning",
        ),
        (
            [{"type": "function_call", "call_id": 1, "name": "f", "arguments": "{}"}],
            "invalid_type",
            "input[0].call_id",
            "'input[0].call_id' is required and must be a string",
        ),
        (
            [{"type": "function_call", "call_id": "c", "arguments": "{}"}],
            "missing_required_parameter",
            "input[0].name",
            "'input[0].name' is required and must be a string",
        ),
        (
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}],
            "invalid_type",
            "input[0].arguments",
            "'input[0].arguments' is required and must be a string",
        ),
        (
            [{"type": "function_call_output", "call_id": "c"}],
            "missing_required_parameter",
            "input[0].output",
            "'input[0].output' must be a string or an array of input_text parts",
        ),
        (
            [{"type": "function_call_output", "call_id": "c", "output": 18}],
            "invalid_type",
            "input[0].output",
            "'input[0].output' must be a string or an array of input_text parts",
        ),
        (
            [{"type": "function_call_output", "call_id": "c", "output": [IMG]}],
            "invalid_value",
            "input[0].output[0].type",
            "'input[0].output[0].type' must be input_text: a tool result is stored as text",
        ),
        (
            [{"type": "function_call_output", "output": "x"}],
            "missing_required_parameter",
            "input[0].call_id",
            "'input[0].call_id' is required and must be a string",
        ),
        (
            [{"type": "reasoning", "id": "rs_1"}],
            "missing_required_parameter",
            "input[0].summary",
            "'input[0].summary' must be an array of summary_text parts",
        ),
        (
            [{"type": "reasoning", "summary": [{"type": "reasoning_text", "text": "x"}]}],
            "invalid_value",
            "input[0].summary[0].type",
            "'input[0].summary[0].type' must be summary_text",
        ),
        (
            [
                {
                    "type": "reasoning",
                    "summary": [],
                    "content": [{"type": "summary_text", "text": "x"}],
                }
            ],
            "invalid_value",
            "input[0].content[0].type",
            "'input[0].content[0].type' must be reasoning_text",
        ),
        (
            [{"type": "reasoning", "summary": [], "encrypted_content": 5}],
            "invalid_type",
            "input[0].encrypted_content",
            "'input[0].encrypted_content' must be a string",
        ),
        (
            [{"role": "user", "content": "Hi"}, {"type": "reasoning", "summary": []}],
            "invalid_value",
            "input[1].type",
            "'input[1].type' is reasoning, which must come before the assistant message or "
            "function_call it belongs to",
        ),
        (
            [{"type": "reasoning", "summary": []}, {"role": "user", "content": "Hi"}],
            "invalid_value",
            "input[0].type",
            "'input[0].type' is reasoning, which must come before the assistant message or "
            "function_call it belongs to",
        ),
        (
            [
                {"type": "reasoning", "summary": []},
                {"type": "function_call_output", "call_id": "c", "output": "x"},
            ],
            "invalid_value",
            "input[0].type",
            "'input[0].type' is reasoning, which must come before the assistant message or "
            "function_call it belongs to",
        ),
    ],
)
def test_every_item_that_cannot_be_stored_is_refused_naming_its_exact_param(
    value: Any, code: str, param: str, message: str
) -> None:
    assert refusal(input_to_messages, value) == (code, param, message)


def test_the_conversations_face_names_its_own_param() -> None:
    assert refusal(items_to_messages, "hello") == (
        "invalid_type",
        "items",
        "'items' must be an array of at most 1000 items",
    )
    assert refusal(items_to_messages, [{"type": "reasoning", "summary": []}])[:2] == (
        "invalid_value",
        "items[0].type",
    )


# -- stored answers -> output items ----------------------------------------------------------


def test_an_answer_is_a_message_item_of_output_text() -> None:
    items = answer_items({"role": "assistant", "content": "Paris."}, Status.COMPLETED, "msg_a")
    assert items == [
        {
            "id": "msg_a",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Paris.", "annotations": []}],
        }
    ]
    assert isinstance(sdk_output(items[0]), ResponseOutputMessage)


def test_an_answer_with_reasoning_and_tool_calls_is_reasoning_message_and_calls() -> None:
    data = {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "Two tools.",
        "tool_calls": [CALL, CALL_2],
    }
    items = answer_items(data, Status.COMPLETED, "msg_a")
    assert items == [
        {
            "id": "rs_msg_a",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Two tools."}],
        },
        {
            "id": "msg_a",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {
            "id": "msg_a_1",
            "type": "function_call",
            "call_id": "call_1",
            "name": "weather",
            "arguments": "{}",
            "status": "completed",
        },
        {
            "id": "msg_a_2",
            "type": "function_call",
            "call_id": "call_2",
            "name": "time",
            "arguments": "{}",
            "status": "completed",
        },
    ]
    kinds = [type(sdk_output(item)) for item in items]
    assert kinds == [
        ResponseReasoningItem,
        ResponseOutputMessage,
        ResponseFunctionToolCall,
        ResponseFunctionToolCall,
    ]
    # The ids its conversation items have: reasoning shifts none of them.
    as_items = message_items(stored("msg_a", "assistant", data))
    assert [i["id"] for i in as_items] == [i["id"] for i in items[1:]]


def test_an_answer_that_only_calls_tools_or_refuses_has_no_empty_text() -> None:
    calls = answer_items(
        {"role": "assistant", "content": None, "tool_calls": [CALL]}, "completed", "m"
    )
    assert [(i["id"], i["type"]) for i in calls] == [("m", "function_call")]
    refused = answer_items(
        {"role": "assistant", "content": None, "refusal": "I can't."}, "completed", "m"
    )
    assert refused[0]["content"] == [{"type": "refusal", "refusal": "I can't."}]
    empty = answer_items({"role": "assistant", "content": ""}, "completed", "m")
    assert empty[0]["content"] == [{"type": "output_text", "text": "", "annotations": []}]
    for item in [*calls, *refused, *empty]:
        sdk_output(item)


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (Status.IN_PROGRESS, "in_progress"),
        (Status.COMPLETED, "completed"),
        (Status.INCOMPLETE, "incomplete"),
        (Status.FAILED, "incomplete"),
        (Status.CANCELLED, "incomplete"),
    ],
)
def test_an_answer_that_did_not_finish_is_incomplete(status: str, shown: str) -> None:
    data = {"role": "assistant", "content": "Par", "tool_calls": [CALL]}
    items = answer_items(data, status, "m")
    assert [i["status"] for i in items] == [shown, shown]
    for item in items:
        sdk_output(item)


def test_answer_items_read_back_as_the_stored_answer() -> None:
    answers = [
        {"role": "assistant", "content": "Paris.", "reasoning_content": "Easy."},
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, CALL_2]},
        {"role": "assistant", "content": None, "reasoning_content": "Tool.", "tool_calls": [CALL]},
        {"role": "assistant", "content": None, "refusal": "I can't."},
    ]
    for data in answers:
        assert items_to_messages(answer_items(data, Status.COMPLETED, "msg_a")) == [data]


# -- stored messages -> conversation items ---------------------------------------------------


def test_message_items_are_the_conversation_items_of_each_stored_message() -> None:
    user = stored(
        "msg_u",
        "user",
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "This:"},
                {"type": "image_url", "image_url": {"url": IMAGE}},
                {"type": "file", "file": {"file_data": PDF, "filename": "a.pdf"}},
                {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
            ],
        },
    )
    answer = stored(
        "msg_a",
        "assistant",
        {"role": "assistant", "content": "Hi", "reasoning_content": "r", "tool_calls": [CALL]},
    )
    tool = stored("msg_t", "tool", {"role": "tool", "tool_call_id": "call_1", "content": "18C"})
    assert message_items(user) == [
        {
            "id": "msg_u",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [
                {"type": "input_text", "text": "This:"},
                {"type": "input_image", "image_url": IMAGE, "detail": "auto"},
                {"type": "input_file", "file_data": PDF, "filename": "a.pdf"},
            ],
        }
    ]
    # An answer's reasoning is not a conversation item.
    assert [(i["id"], i["type"]) for i in message_items(answer)] == [
        ("msg_a", "message"),
        ("msg_a_1", "function_call"),
    ]
    assert message_items(tool) == [
        {
            "id": "msg_t",
            "type": "function_call_output",
            "call_id": "call_1",
            "status": "completed",
            "output": "18C",
        }
    ]
    for m in (user, answer, tool):
        for item in message_items(m):
            assert CONVERSATION_ITEM.validate_python(item).to_dict() == item


# -- stored chain -> Responses input ---------------------------------------------------------


CHAIN: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": "Use metric units."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": IMAGE, "detail": "high"}},
            {"type": "file", "file": {"file_id": "file-abc"}},
        ],
    },
    {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, CALL_2]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
    {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": "call_3"}]},
    {"role": "tool", "tool_call_id": "call_3", "content": "19C"},
    {"role": "assistant", "content": "18C at noon.", "reasoning_content": "Summarise."},
]


def test_a_stored_chain_is_responses_input_without_reasoning() -> None:
    sent = messages_to_input(CHAIN)
    assert sent == [
        {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "Be brief."}],
        },
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "Use metric units."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": IMAGE, "detail": "high"},
                {"type": "input_file", "file_id": "file-abc"},
            ],
        },
        {"type": "message", "role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2", "output": "noon"},
        {"type": "function_call", "call_id": "call_3", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_3", "output": "19C"},
        {"type": "message", "role": "assistant", "content": "18C at noon."},
    ]
    assert "reasoning" not in {item["type"] for item in sent}
    INPUT_ITEMS.validate_python(sent)


def test_a_stored_chain_reads_back_as_itself_but_for_reasoning() -> None:
    back = input_to_messages(messages_to_input(CHAIN))
    expected = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in CHAIN]
    expected[2]["content"][0] = {"type": "text", "text": "Weather here?"}
    expected[5]["content"] = "noon"  # text parts are stored as the text
    assert back == expected


def test_what_the_responses_api_cannot_carry_is_left_out_of_the_input() -> None:
    chain = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Listen:"},
                {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
            ],
        },
        {"role": "critic", "content": "Imported from elsewhere."},
        {"role": "assistant", "content": None, "refusal": "I can't."},
        {"role": "function", "name": "legacy", "content": "old result"},
    ]
    assert messages_to_input(chain) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Listen:"}]},
        # A refusal is what the assistant said: its text.
        {"type": "message", "role": "assistant", "content": "I can't."},
        {"type": "function_call_output", "call_id": "legacy", "output": "old result"},
    ]


# -- the request's checks --------------------------------------------------------------------


BODY: dict[str, Any] = {"model": "gpt-4o-mini", "input": "Hi"}
RULE = "1 to 128 characters of A-Z, a-z, 0-9, _ and -"


def test_a_well_formed_request_passes() -> None:
    full = {
        **BODY,
        "input": [{"role": "user", "content": "Hi"}],
        "instructions": "Be brief.",
        "stream": True,
        "store": False,
        "background": None,
        "previous_response_id": "msg_abc",
        "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
            {"type": "web_search"},
        ],
        "tool_choice": {
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "f"}],
        },
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {}, "strict": True}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 1,
        "top_logprobs": 20,
        "metadata": {"project": "travel"},
        "temperature": 0.2,
    }
    assert validate_request(full) is None
    assert validate_request({**BODY, "conversation": {"id": "chat_1"}}) is None
    assert validate_request({**BODY, "conversation": "chat_1"}) is None


@pytest.mark.parametrize(
    ("changes", "code", "param", "message"),
    [
        ({"model": None}, "missing_required_parameter", "model", "'model' is required"),
        ({"model": 4}, "invalid_type", "model", "'model' must be a string"),
        ({"model": "m" * 257}, "invalid_value", "model", "'model' is longer than 256 characters"),
        ({"input": None}, "missing_required_parameter", "input", "'input' is required"),
        (
            {"input": {"role": "user"}},
            "invalid_type",
            "input",
            "'input' must be a string or an array of input items",
        ),
        ({"stream": "yes"}, "invalid_type", "stream", "'stream' must be a boolean"),
        ({"background": 1}, "invalid_type", "background", "'background' must be a boolean"),
        ({"store": "false"}, "invalid_type", "store", "'store' must be a boolean"),
        (
            {"parallel_tool_calls": "no"},
            "invalid_type",
            "parallel_tool_calls",
            "'parallel_tool_calls' must be a boolean",
        ),
        (
            {"instructions": ["x"]},
            "invalid_type",
            "instructions",
            "'instructions' must be a string",
        ),
        (
            {"previous_response_id": "resp 1"},
            "invalid_response_id",
            "previous_response_id",
            f"'previous_response_id' is not a valid response id ({RULE})",
        ),
        (
            {"conversation": "chat/1"},
            "invalid_chat_id",
            "conversation",
            f"'conversation' is not a valid conversation id ({RULE})",
        ),
        (
            {"conversation": {"id": "chat 1"}},
            "invalid_chat_id",
            "conversation.id",
            f"'conversation.id' is not a valid conversation id ({RULE})",
        ),
        (
            {"conversation": {}},
            "missing_required_parameter",
            "conversation.id",
            "'conversation.id' (the conversation id) is required",
        ),
        (
            {"conversation": 5},
            "invalid_type",
            "conversation",
            "'conversation' must be a conversation id or an object with an id",
        ),
        (
            {"conversation": "chat_1", "previous_response_id": "msg_1"},
            "mutually_exclusive_parameters",
            None,
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
        ),
        ({"tools": {"type": "function"}}, "invalid_type", "tools", "'tools' must be an array"),
        ({"tools": ["f"]}, "invalid_type", "tools[0]", "'tools[0]' must be an object"),
        (
            {"tools": [{}]},
            "missing_required_parameter",
            "tools[0].type",
            "'tools[0].type' is required",
        ),
        (
            {"tools": [{"type": "web_search"}, {"type": "function"}]},
            "missing_required_parameter",
            "tools[1].name",
            "'tools[1].name' is required",
        ),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": "{}"}]},
            "invalid_type",
            "tools[0].parameters",
            "'tools[0].parameters' must be an object",
        ),
        (
            {"tools": [{"type": "function", "name": "f", "strict": "yes"}]},
            "invalid_type",
            "tools[0].strict",
            "'tools[0].strict' must be a boolean",
        ),
        (
            {"tool_choice": "sometimes"},
            "invalid_value",
            "tool_choice",
            "'tool_choice' must be one of auto, none, required",
        ),
        (
            {"tool_choice": 1},
            "invalid_type",
            "tool_choice",
            "'tool_choice' must be a string or an object",
        ),
        (
            {"tool_choice": {"type": "function"}},
            "missing_required_parameter",
            "tool_choice.name",
            "'tool_choice.name' is required",
        ),
        (
            {"tool_choice": {"type": "allowed_tools", "mode": "always", "tools": []}},
            "invalid_value",
            "tool_choice.mode",
            "'tool_choice.mode' must be one of auto, required",
        ),
        (
            {"tool_choice": {"type": "allowed_tools", "mode": "auto"}},
            "missing_required_parameter",
            "tool_choice.tools",
            "'tool_choice.tools' is required",
        ),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "auto",
                    "tools": [{"type": "function"}],
                }
            },
            "missing_required_parameter",
            "tool_choice.tools[0].name",
            "'tool_choice.tools[0].name' is required",
        ),
        ({"text": "json"}, "invalid_type", "text", "'text' must be an object"),
        (
            {"text": {"format": {"type": "xml"}}},
            "invalid_value",
            "text.format.type",
            "'text.format.type' must be one of text, json_schema, json_object",
        ),
        (
            {"text": {"format": {"type": "json_schema", "schema": {}}}},
            "missing_required_parameter",
            "text.format.name",
            "'text.format.name' is required",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "x"}}},
            "missing_required_parameter",
            "text.format.schema",
            "'text.format.schema' is required",
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {}, "strict": 1}}},
            "invalid_type",
            "text.format.strict",
            "'text.format.strict' must be a boolean",
        ),
        ({"reasoning": "high"}, "invalid_type", "reasoning", "'reasoning' must be an object"),
        (
            {"reasoning": {"effort": 3}},
            "invalid_type",
            "reasoning.effort",
            "'reasoning.effort' must be a string",
        ),
        (
            {"max_output_tokens": 0},
            "invalid_value",
            "max_output_tokens",
            "'max_output_tokens' must be an integer at least 1",
        ),
        (
            {"max_output_tokens": "100"},
            "invalid_type",
            "max_output_tokens",
            "'max_output_tokens' must be an integer",
        ),
        (
            {"max_output_tokens": True},
            "invalid_type",
            "max_output_tokens",
            "'max_output_tokens' must be an integer",
        ),
        (
            {"top_logprobs": 21},
            "invalid_value",
            "top_logprobs",
            "'top_logprobs' must be an integer from 0 to 20",
        ),
        (
            {"metadata": {"n": 1}},
            "invalid_type",
            "metadata",
            "'metadata' must be an object of strings",
        ),
        (
            {"instructions": "a\u0000b"},
            "invalid_value",
            "instructions",
            "'instructions' contains a NUL character (U+0000), which cannot be stored",
        ),
    ],
)
def test_every_malformed_request_is_a_400_naming_its_param(
    changes: dict[str, Any], code: str, param: str | None, message: str
) -> None:
    body = {k: v for k, v in {**BODY, **changes}.items() if v is not None}
    assert invalid(validate_request, body) == (code, param, message)


def test_a_nul_in_the_input_is_left_to_the_store() -> None:
    # The input is stored with any NUL replaced, as chat-completions messages are.
    assert validate_request({**BODY, "input": "a\u0000b"}) is None


# -- the translation to chat completions -----------------------------------------------------


TOOL = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def test_a_responses_request_becomes_the_chat_completions_request() -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": "ignored: the caller converts it",
        "instructions": "Be brief.",
        "tools": [TOOL, {"type": "function", "name": "time", "parameters": None, "strict": None}],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "w",
                "schema": {"type": "object"},
                "strict": True,
            },
            "verbosity": "low",
        },
        "reasoning": {"effort": "high", "summary": "auto"},
        "max_output_tokens": 200,
        "top_logprobs": 2,
        "stream": True,
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "u-1",
        "safety_identifier": "s-1",
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "top_k": 40,  # an upstream's own extension
        # The proxy's own, and what has no chat form: never sent.
        "store": True,
        "previous_response_id": "msg_1",
        "background": False,
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "metadata": {"a": "b"},
        "stream_options": {"include_obfuscation": False},
        "max_tool_calls": 3,
        "context_management": [{"type": "compaction"}],
    }
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_content": "Greet back."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    out = chat_request(body, messages)
    assert out == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "The weather in a city.",
                    "parameters": TOOL["parameters"],
                    "strict": True,
                },
            },
            {"type": "function", "function": {"name": "time"}},
        ],
        "parallel_tool_calls": False,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "verbosity": "low",
        "reasoning_effort": "high",
        "max_completion_tokens": 200,
        "logprobs": True,
        "top_logprobs": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "u-1",
        "safety_identifier": "s-1",
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "top_k": 40,
    }
    assert messages[1]["reasoning_content"] == "Greet back."  # the caller's list is untouched
    CHAT_MESSAGES.validate_python(out["messages"])
    TypeAdapter(list[ChatCompletionFunctionToolParam]).validate_python(out["tools"])
    TypeAdapter(ChatCompletionToolChoiceOptionParam).validate_python(out["tool_choice"])
    TypeAdapter(ResponseFormat).validate_python(out["response_format"])


def test_a_plain_request_sends_only_what_it_has() -> None:
    out = chat_request({**BODY, "stream": False, "text": {"format": {"type": "text"}}}, [])
    # stream false is the default, and so is a text format: neither is sent.
    assert out == {"model": "gpt-4o-mini", "messages": []}


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "weather"}],
            },
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "weather"}}],
                },
            },
        ),
    ],
)
def test_tool_choice_takes_its_chat_form(choice: Any, sent: Any) -> None:
    out = chat_request({**BODY, "tools": [TOOL], "tool_choice": choice}, [])
    assert out["tool_choice"] == sent
    TypeAdapter(ChatCompletionToolChoiceOptionParam).validate_python(sent)


def test_tool_settings_without_tools_are_not_sent() -> None:
    out = chat_request(
        {**BODY, "tools": [], "tool_choice": "none", "parallel_tool_calls": True}, []
    )
    assert out == {"model": "gpt-4o-mini", "messages": []}


def test_a_json_object_format_is_sent_and_no_logprobs_are_asked_for() -> None:
    out = chat_request({**BODY, "text": {"format": {"type": "json_object"}}, "top_logprobs": 0}, [])
    assert out == {
        "model": "gpt-4o-mini",
        "messages": [],
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    "kind", ["web_search", "file_search", "mcp", "computer_use_preview", "custom"]
)
def test_a_tool_a_chat_completion_cannot_run_is_refused(kind: str) -> None:
    body = {**BODY, "tools": [TOOL, {"type": kind}]}
    assert invalid(chat_request, body, []) == (
        "unsupported_value",
        "tools[1].type",
        f"Unsupported value: 'tools[1].type' does not support '{kind}' with this upstream: it "
        "has no /v1/responses, and a chat completion can only call function tools.",
    )


def test_a_built_in_tool_choice_is_refused() -> None:
    body = {**BODY, "tools": [TOOL], "tool_choice": {"type": "file_search"}}
    assert invalid(chat_request, body, [])[:2] == ("unsupported_value", "tool_choice.type")
    allowed = {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [{"type": "function", "name": "weather"}, {"type": "mcp"}],
    }
    assert invalid(chat_request, {**body, "tool_choice": allowed}, [])[:2] == (
        "unsupported_value",
        "tool_choice.tools[1].type",
    )


def test_a_stored_prompt_is_refused() -> None:
    body = {**BODY, "prompt": {"id": "pmpt_1"}}
    assert invalid(chat_request, body, []) == (
        "unsupported_parameter",
        "prompt",
        "Unsupported parameter: 'prompt' is not supported with this upstream: it has no "
        "/v1/responses to resolve a stored prompt.",
    )


def test_input_translated_end_to_end_is_a_valid_chat_request() -> None:
    body = {
        **BODY,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}, IMG]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Tool."}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        ],
    }
    validate_request(body)
    out = chat_request(body, input_to_messages(body["input"]))
    assert out["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    CHAT_MESSAGES.validate_python(out["messages"])

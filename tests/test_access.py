"""One access rule for every face (chatproxy.access): its whole table; another user probing
every endpoint through a real port (a private chat does not exist for them, a public one is
read-only, posting into either is 403); malformed ids, pagination and metadata with one wording
and one code each, on every face that takes them; and nothing changed in the store."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from chatproxy.access import Need, Verdict, decide, refusal
from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store.models import Chat, Message, Vote
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.aisdk import full, single, user

TEAM = {"limits.ip_rate": "0", "auth.mode": "header", "server.trusted_proxies": ["127.0.0.0/8"]}
RULE = "1 to 128 characters of A-Z, a-z, 0-9, _ and -"
CHAT, MISSING_CHAT = "alices-chat", "no-such-chat"
MISSING_COMPLETION = "msg_doesnotexist"
ERROR_KEYS = {"message", "type", "param", "code"}


# -- the rule --------------------------------------------------------------------------------

TABLE = {
    # (the caller owns it, visibility, need): verdict
    (True, "private", Need.READ): Verdict.ALLOWED,
    (True, "private", Need.WRITE): Verdict.ALLOWED,
    (True, "private", Need.POST): Verdict.ALLOWED,
    (True, "public", Need.READ): Verdict.ALLOWED,
    (True, "public", Need.WRITE): Verdict.ALLOWED,
    (True, "public", Need.POST): Verdict.ALLOWED,
    (False, "private", Need.READ): Verdict.HIDDEN,
    (False, "private", Need.WRITE): Verdict.HIDDEN,
    (False, "private", Need.POST): Verdict.FORBIDDEN,
    (False, "public", Need.READ): Verdict.ALLOWED,
    (False, "public", Need.WRITE): Verdict.READ_ONLY,
    (False, "public", Need.POST): Verdict.FORBIDDEN,
}


def test_the_table_covers_every_caller_visibility_and_need() -> None:
    combos = itertools.product((True, False), ("private", "public"), tuple(Need))
    assert set(TABLE) == set(combos)


@pytest.mark.parametrize(("case", "verdict"), TABLE.items(), ids=lambda v: str(v))
def test_the_rule(case: tuple[bool, str, Need], verdict: Verdict) -> None:
    owns, visibility, need = case
    assert decide("alice", "alice" if owns else "bob", visibility, need) is verdict


@pytest.mark.parametrize(
    ("verdict", "what", "param", "status", "error"),
    [
        (
            Verdict.HIDDEN,
            "chat",
            None,
            404,
            ("invalid_request_error", "chat_not_found", None, "no conversation with id 'c1'"),
        ),
        (
            Verdict.HIDDEN,
            "completion",
            "completion_id",
            404,
            (
                "invalid_request_error",
                "not_found",
                "completion_id",
                "no chat completion with id 'c1'",
            ),
        ),
        (
            Verdict.READ_ONLY,
            "chat",
            None,
            403,
            (
                "permission_error",
                "permission_denied",
                None,
                "this conversation belongs to another user: it is read-only for you",
            ),
        ),
        (
            Verdict.READ_ONLY,
            "completion",
            "completion_id",
            403,
            (
                "permission_error",
                "permission_denied",
                None,
                "this chat completion belongs to another user: it is read-only for you",
            ),
        ),
        (
            Verdict.FORBIDDEN,
            "chat",
            None,
            403,
            (
                "permission_error",
                "chat_forbidden",
                None,
                "this chat belongs to another user: name a chat id of your own",
            ),
        ),
    ],
)
def test_each_refusal_is_one_error(
    verdict: Verdict,
    what: str,
    param: str | None,
    status: int,
    error: tuple[str, str, str | None, str],
) -> None:
    exc = refusal(verdict, "c1", what=what, param=param)
    body = exc.body()["error"]
    assert exc.status == status
    assert (body["type"], body["code"], body["param"], body["message"]) == error


def test_an_allowed_verdict_is_no_refusal() -> None:
    with pytest.raises(ValueError):
        refusal(Verdict.ALLOWED, "c1")


# -- through the proxy -----------------------------------------------------------------------


@pytest.fixture
async def team(start_proxy) -> ProxyServer:
    """Users named by ``X-User-Id`` (a trusted gateway), no per-IP limit."""
    return await start_proxy(**TEAM)


@dataclass(frozen=True)
class Ids:
    chat: str
    completion: str  # the answer
    item: str  # the question (an item, a message)


async def send(
    http: aiohttp.ClientSession,
    proxy: ProxyServer,
    method: str,
    path: str,
    *,
    user: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request to the proxy (``path`` from its root) as ``user``: status and JSON body
    (``None`` when there is none)."""
    url = proxy.url.removesuffix("/v1") + path
    head = {"X-User-Id": user, "Content-Type": "application/json", **(headers or {})}
    data = None if body is None else orjson.dumps(body)
    async with http.request(method, url, data=data, headers=head) as resp:
        raw = await resp.read()
        if resp.content_type != "application/json":
            return resp.status, None
        return resp.status, orjson.loads(raw)


async def alices_chat(http: aiohttp.ClientSession, proxy: ProxyServer, *, public: bool) -> Ids:
    body = {"model": "m", "messages": [{"role": "user", "content": "secret plans"}]}
    url = f"{proxy.url}/chat/completions"
    head = {"X-User-Id": "alice", "X-Chat-Id": CHAT}
    async with http.post(url, json=body, headers=head) as resp:
        assert resp.status == 200
        completion = resp.headers["X-Message-Id"]
    status, items = await send(
        http, proxy, "GET", f"/v1/conversations/{CHAT}/items?order=asc", user="alice"
    )
    assert status == 200
    if public:
        visibility = {"visibility": "public"}
        status, _ = await send(
            http, proxy, "POST", f"/v1/conversations/{CHAT}", user="alice", body=visibility
        )
        assert status == 200
    return Ids(CHAT, completion, items["data"][0]["id"])


async def snapshot(store: Store) -> tuple[list[Any], ...]:
    """Every row a request could change."""
    chats = await store.read(lambda: Chat.all().order_by("id"))
    messages = await store.read(lambda: Message.all().order_by("id"))
    votes = await store.read(lambda: Vote.all().order_by("id"))
    return (
        [
            (c.id, c.owner_id, c.head_id, c.visibility, c.title, c.metadata, c.updated_at)
            for c in chats
        ],
        [(m.id, m.parent_id, m.status, m.data, m.metadata) for m in messages],
        [(v.message_id, v.user_id, v.up) for v in votes],
    )


READS = [
    ("GET", "/v1/conversations/{chat}", None),
    ("GET", "/v1/conversations/{chat}/items", None),
    ("GET", "/v1/conversations/{chat}/items/{item}", None),
    ("GET", "/v1/conversations/{chat}/messages", None),
    ("GET", "/v1/conversations/{chat}/messages?all=true", None),
    ("GET", "/v1/conversations/{chat}/export?format=markdown", None),
    ("GET", "/v1/conversations/{chat}/stream", None),
    ("GET", "/v1/chat/completions/{completion}", None),
    ("GET", "/v1/chat/completions/{completion}/messages", None),
    ("GET", "/api/chat/{chat}/messages", None),
    ("GET", "/api/chat/{chat}/stream", None),
]
# Writes of the management faces: 404 on a private chat, 403 permission_denied on a public one.
WRITES = [
    ("POST", "/v1/conversations/{chat}", {"title": "mine now"}),
    ("DELETE", "/v1/conversations/{chat}", None),
    ("POST", "/v1/conversations/{chat}/items", {"items": [{"role": "user", "content": "x"}]}),
    ("DELETE", "/v1/conversations/{chat}/items/{item}", None),
    ("GET", "/v1/conversations/{chat}/export?format=json", None),  # what only the owner sees
    ("POST", "/v1/chat/completions/{completion}", {"metadata": {"k": "v"}}),
    ("DELETE", "/v1/chat/completions/{completion}", None),
    ("DELETE", "/api/chat?id={chat}", None),
]
QUESTION = {"role": "user", "content": "secret plans"}
# Posting into the chat a request names: 403 chat_forbidden, whatever the visibility.
POSTS: list[tuple[str, Any, dict[str, str]]] = [
    ("/v1/chat/completions", {"model": "m", "messages": [QUESTION]}, {"X-Chat-Id": CHAT}),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "more"}]},
        {"X-Chat-Id": CHAT, "X-Chat-History": "server"},
    ),
    (
        "/v1/chat/completions",
        {"model": "m", "messages": [QUESTION]},
        {"X-OpenWebUI-Chat-Id": CHAT},
    ),
    ("/api/chat", {"model": "m", **full(CHAT, user("u1", "secret plans"))}, {}),
    ("/api/chat", {"model": "m", **single(CHAT, user("u2", "let me in"))}, {}),
    (
        "/api/chat",
        {"model": "m", **full(CHAT, user("u1", "secret plans"), trigger="regenerate-message")},
        {},
    ),
]


def fill(path: str, ids: Ids) -> str:
    return path.format(chat=ids.chat, completion=ids.completion, item=ids.item)


async def assert_forbidden_posts(
    http: aiohttp.ClientSession, proxy: ProxyServer, user: str
) -> None:
    for path, body, headers in POSTS:
        status, answer = await send(
            http, proxy, "POST", path, user=user, body=body, headers=headers
        )
        assert status == 403, (path, headers, answer)
        assert set(answer["error"]) == ERROR_KEYS
        assert (answer["error"]["type"], answer["error"]["code"]) == (
            "permission_error",
            "chat_forbidden",
        )


async def test_another_users_private_chat_does_not_exist_on_any_face(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    ids = await alices_chat(http, team, public=False)
    missing = Ids(MISSING_CHAT, MISSING_COMPLETION, ids.item)
    store = team.app[STORE]
    before, asked = await snapshot(store), len(upstream.chat_requests)
    vote = ("PUT", "/v1/conversations/{chat}/messages/{item}/vote", {"up": True})
    for method, path, body in [*READS, vote, *WRITES]:
        status, answer = await send(http, team, method, fill(path, ids), user="bob", body=body)
        assert status == 404, (method, path, answer)
        code = "not_found" if "{completion}" in path else "chat_not_found"
        assert answer["error"]["code"] == code, (method, path)
        # Word for word what an id that names nothing gets.
        status, nothing = await send(http, team, method, fill(path, missing), user="bob", body=body)
        assert status == 404
        said = orjson.dumps(nothing).replace(MISSING_CHAT.encode(), CHAT.encode())
        said = said.replace(MISSING_COMPLETION.encode(), ids.completion.encode())
        assert answer == orjson.loads(said), (method, path)
    await assert_forbidden_posts(http, team, "bob")
    # Listing is one's own: nothing of Alice's, and her ids are no cursor.
    for lister in ("/v1/conversations", "/v1/chat/completions"):
        status, listed = await send(http, team, "GET", lister, user="bob")
        assert (status, listed["data"]) == (200, [])
    status, answer = await send(http, team, "GET", f"/v1/conversations?after={CHAT}", user="bob")
    assert (status, answer["error"]["code"]) == (400, "invalid_cursor")
    assert await snapshot(store) == before
    assert len(upstream.chat_requests) == asked
    # Alice still reads and writes all of it.
    for method, path, body in READS:
        status, _ = await send(http, team, method, fill(path, ids), user="alice", body=body)
        assert status in (200, 204), (method, path)


async def test_another_users_public_chat_is_read_only_on_every_face(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    ids = await alices_chat(http, team, public=True)
    store = team.app[STORE]
    before, asked = await snapshot(store), len(upstream.chat_requests)
    for method, path, body in READS:
        status, answer = await send(http, team, method, fill(path, ids), user="bob", body=body)
        # The answer was not streamed: there is nothing to follow (204).
        assert status == (204 if path.endswith("/stream") else 200), (method, path, answer)
    for method, path, body in WRITES:
        status, answer = await send(http, team, method, fill(path, ids), user="bob", body=body)
        assert status == 403, (method, path, answer)
        assert set(answer["error"]) == ERROR_KEYS
        assert (answer["error"]["type"], answer["error"]["code"]) == (
            "permission_error",
            "permission_denied",
        )
    await assert_forbidden_posts(http, team, "bob")
    assert await snapshot(store) == before
    assert len(upstream.chat_requests) == asked


async def test_a_running_answer_in_another_users_private_chat_cannot_be_followed(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.enqueue(Reply(chunks=[f"w{i} " for i in range(30)], chunk_delay=0.05))
    body = {"model": "m", "messages": [QUESTION], "stream": True}
    head = {"X-User-Id": "alice", "X-Chat-Id": CHAT}
    async with http.post(f"{team.url}/chat/completions", json=body, headers=head) as resp:
        assert resp.status == 200
        await resp.content.readline()  # the answer is under way
        for path in (f"/v1/conversations/{CHAT}/stream", f"/api/chat/{CHAT}/stream"):
            status, answer = await send(http, team, "GET", path, user="bob")
            assert (status, answer["error"]["code"]) == (404, "chat_not_found")
        # Its owner follows it.
        url = team.url.removesuffix("/v1") + f"/v1/conversations/{CHAT}/stream"
        async with http.get(url, headers={"X-User-Id": "alice"}) as follower:
            assert follower.status == 200
            assert (await follower.read()).endswith(b"data: [DONE]\n\n")
        await resp.read()


# -- ids -------------------------------------------------------------------------------------

NOUNS = {
    "invalid_chat_id": "conversation",
    "invalid_item_id": "item",
    "invalid_message_id": "message",
    "invalid_id": "chat completion",
    "invalid_cursor": "list item",
    "invalid_parent": "message",
}
LONG = "c" * 129
SERVER = {"X-Chat-History": "server"}
CHAT_BODY = {"model": "m", "messages": [QUESTION]}
# (method, path, headers, body, code, param): path, query string, header and body ids.
BAD_IDS: list[tuple[str, str, dict[str, str], Any, str, str]] = [
    ("GET", "/v1/conversations/bad.id", {}, None, "invalid_chat_id", "chat_id"),
    ("GET", f"/v1/conversations/{LONG}/items", {}, None, "invalid_chat_id", "chat_id"),
    ("GET", "/v1/conversations/bad.id/stream", {}, None, "invalid_chat_id", "chat_id"),
    ("GET", "/v1/conversations/{chat}/items/bad.id", {}, None, "invalid_item_id", "item_id"),
    (
        "PUT",
        "/v1/conversations/{chat}/messages/bad.id/vote",
        {},
        {"up": True},
        "invalid_message_id",
        "message_id",
    ),
    ("GET", "/v1/chat/completions/bad.id", {}, None, "invalid_id", "completion_id"),
    ("DELETE", f"/v1/chat/completions/{LONG}", {}, None, "invalid_id", "completion_id"),
    ("GET", "/api/chat/bad.id/messages", {}, None, "invalid_chat_id", "id"),
    ("GET", "/api/chat/bad.id/stream", {}, None, "invalid_chat_id", "id"),
    ("DELETE", "/api/chat?id=bad.id", {}, None, "invalid_chat_id", "id"),
    ("DELETE", f"/api/chat?id={LONG}", {}, None, "invalid_chat_id", "id"),
    (
        "POST",
        "/api/chat",
        {},
        {"model": "m", **full("bad.id", user("u1", "x"))},
        "invalid_chat_id",
        "id",
    ),
    ("GET", "/v1/conversations?after=bad.id", {}, None, "invalid_cursor", "after"),
    ("GET", "/v1/conversations?after=", {}, None, "invalid_cursor", "after"),
    ("GET", "/v1/conversations/{chat}/items?after=bad.id", {}, None, "invalid_cursor", "after"),
    ("GET", "/v1/chat/completions?after=bad.id", {}, None, "invalid_cursor", "after"),
    ("GET", "/v1/chat/completions?after=", {}, None, "invalid_cursor", "after"),
    (
        "GET",
        "/v1/chat/completions/{completion}/messages?after=bad.id",
        {},
        None,
        "invalid_cursor",
        "after",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"X-Chat-Id": "bad.id"},
        CHAT_BODY,
        "invalid_chat_id",
        "X-Chat-Id",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"X-Chat-Id": LONG},
        CHAT_BODY,
        "invalid_chat_id",
        "X-Chat-Id",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"x-litellm-session-id": "bad.id"},
        CHAT_BODY,
        "invalid_chat_id",
        "X-Chat-Id",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {**SERVER, "X-Chat-Parent": "bad.id"},
        CHAT_BODY,
        "invalid_parent",
        "X-Chat-Parent",
    ),
]


async def test_a_malformed_id_is_400_with_its_kinds_code_and_one_wording(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    ids = await alices_chat(http, team, public=False)
    store = team.app[STORE]
    before, asked = await snapshot(store), len(upstream.chat_requests)
    for method, path, headers, body, code, param in BAD_IDS:
        status, answer = await send(
            http, team, method, fill(path, ids), user="alice", body=body, headers=headers
        )
        error = answer["error"]
        assert status == 400, (method, path, headers, answer)
        assert set(error) == ERROR_KEYS
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            code,
            param,
        ), (method, path, headers)
        assert error["message"] == f"'{param}' is not a valid {NOUNS[code]} id ({RULE})"
    # A missing id is one error too.
    status, answer = await send(http, team, "DELETE", "/api/chat", user="alice")
    assert status == 400
    assert answer["error"] == {
        "message": "'id' (the conversation id) is required",
        "type": "invalid_request_error",
        "param": "id",
        "code": "missing_required_parameter",
    }
    assert await snapshot(store) == before
    assert len(upstream.chat_requests) == asked


# -- pagination and metadata -----------------------------------------------------------------

LIMIT = "'limit' must be an integer from 1 to 100"
ORDER = "'order' must be one of asc, desc"
METADATA = "'metadata' holds at most 16 pairs, keys of 1 to 64 characters and values of at most 512"
# (path, takes order, takes metadata filters)
LISTS = [
    ("/v1/conversations", False, True),
    ("/v1/conversations/{chat}/items", True, False),
    ("/v1/chat/completions", True, True),
    ("/v1/chat/completions/{completion}/messages", True, False),
]
BAD_LIMITS = ["0", "101", "", "ten", "-1", "1.5", "+5", "%D9%A3", "1" * 5000]
BAD_ORDERS = ["sideways", "", "DESC"]
BAD_FILTERS = [
    ("metadata[]=x", METADATA),
    (f"metadata[{'k' * 65}]=x", METADATA),
    (f"metadata[k]={'v' * 513}", METADATA),
    ("&".join(f"metadata[k{i}]=v" for i in range(17)), METADATA),
    ("metadata[k]=a&metadata[k]=b", "a metadata key is filtered on twice: give each once"),
]
GOOD_FILTERS = [
    "&".join(f"metadata[k{i}]=v" for i in range(16)),
    f"metadata[{'k' * 64}]={'v' * 512}",
]


def expect(status: int, answer: Any, code: str, param: str, message: str | None) -> None:
    assert status == 400, answer
    error = answer["error"]
    assert set(error) == ERROR_KEYS
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    if message is not None:
        assert error["message"] == message


async def test_bad_pagination_and_metadata_filters_are_400_alike_on_every_list(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    ids = await alices_chat(http, team, public=False)
    store = team.app[STORE]
    before = await snapshot(store)
    for path, takes_order, takes_metadata in LISTS:
        url = fill(path, ids)
        for limit in BAD_LIMITS:
            status, answer = await send(http, team, "GET", f"{url}?limit={limit}", user="alice")
            expect(status, answer, "invalid_value", "limit", LIMIT)
        for limit in ("1", "100"):
            status, _ = await send(http, team, "GET", f"{url}?limit={limit}", user="alice")
            assert status == 200
        status, answer = await send(http, team, "GET", f"{url}?after=unknown_id", user="alice")
        expect(status, answer, "invalid_cursor", "after", "no list item with id 'unknown_id'")
        if takes_order:
            for order in BAD_ORDERS:
                status, answer = await send(http, team, "GET", f"{url}?order={order}", user="alice")
                expect(status, answer, "invalid_value", "order", ORDER)
        if takes_metadata:
            for query, message in BAD_FILTERS:
                status, answer = await send(http, team, "GET", f"{url}?{query}", user="alice")
                expect(status, answer, "invalid_value", "metadata", message)
            for query in GOOD_FILTERS:
                status, listed = await send(http, team, "GET", f"{url}?{query}", user="alice")
                assert (status, listed["data"]) == (200, [])
            # A filter reaches the database as it is: a NUL is refused, naming it.
            status, answer = await send(http, team, "GET", f"{url}?metadata[k]=a%00b", user="alice")
            expect(status, answer, "invalid_value", "metadata[k]", None)
    assert await snapshot(store) == before


BAD_METADATA: list[tuple[Any, str, str]] = [
    ("x", "invalid_type", "'metadata' must be an object of strings"),
    ([], "invalid_type", "'metadata' must be an object of strings"),
    (["a"], "invalid_type", "'metadata' must be an object of strings"),
    ({"n": 1}, "invalid_type", "'metadata' must be an object of strings"),
    ({f"k{i}": "v" for i in range(17)}, "invalid_value", METADATA),
    ({"": "v"}, "invalid_value", METADATA),
    ({"k" * 65: "v"}, "invalid_value", METADATA),
    ({"k": "v" * 513}, "invalid_value", METADATA),
]


async def test_bad_metadata_in_a_body_is_400_alike_on_conversations_and_completions(
    team: ProxyServer, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    ids = await alices_chat(http, team, public=False)
    store = team.app[STORE]
    before = await snapshot(store)
    targets = [
        "/v1/conversations",
        f"/v1/conversations/{ids.chat}",
        f"/v1/chat/completions/{ids.completion}",
    ]
    for target in targets:
        for metadata, code, message in BAD_METADATA:
            status, answer = await send(
                http, team, "POST", target, user="alice", body={"metadata": metadata}
            )
            expect(status, answer, code, "metadata", message)
    assert await snapshot(store) == before
    # Within the limits, both faces store it.
    good = {f"k{i}": "v" * 512 for i in range(15)} | {"k" * 64: "v"}
    for target in targets[1:]:
        status, answer = await send(
            http, team, "POST", target, user="alice", body={"metadata": good}
        )
        assert (status, answer["metadata"]) == (200, good)

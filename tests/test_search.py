"""Full-text search (``GET /v1/conversations?q=``, :mod:`chatproxy.store.search`) on both
stores: the matching rule, the caller's chats only, both query plans page alike, the index
follows every write (streamed answers, renames, deletes, prune) and a store indexed by the
migration, and no query text is ever the database's own search syntax."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import openai
import pytest

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.store import search
from chatproxy.store.history import list_chats
from chatproxy.store.maintenance import prune
from chatproxy.store.models import Chat, Message, User
from chatproxy.store.search import Term
from chatproxy.store.store import Store
from chatproxy.testing import FakeUpstream, Reply
from tests.util import store_at

TEAM = {"limits.ip_rate": "0", "auth.mode": "header", "server.trusted_proxies": ["127.0.0.0/8"]}


@pytest.fixture
async def team(start_proxy) -> ProxyServer:
    """A proxy behind a trusted gateway: ``X-User-Id`` picks the user."""
    return await start_proxy(**TEAM)


def _store(proxy: ProxyServer) -> Store:
    assert proxy.app is not None
    return proxy.app[STORE]


async def new_chat(
    http: aiohttp.ClientSession,
    proxy: ProxyServer,
    user: str,
    *texts: str,
    title: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """A chat of ``user`` holding ``texts`` (user and assistant in turn); its id."""
    roles = ("user", "assistant")
    items = [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]
    body: dict[str, Any] = {"items": items, "title": title}
    if metadata:
        body["metadata"] = metadata
    async with http.post(
        f"{proxy.url}/conversations", json=body, headers={"X-User-Id": user}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["id"]


async def found(
    http: aiohttp.ClientSession, proxy: ProxyServer, user: str, q: str, **params: str
) -> list[str]:
    """Every chat id ``q`` finds for ``user``, page after page."""
    ids: list[str] = []
    after: str | None = None
    while True:
        query = {"q": q, **params, **({"after": after} if after else {})}
        async with http.get(
            f"{proxy.url}/conversations", params=query, headers={"X-User-Id": user}
        ) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        ids += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            return ids
        assert page["data"], "has_more without a page"
        after = page["last_id"]


async def fts_rows(store: Store, table: str, match: str) -> int:
    """SQLite: how many rows of an FTS table ``match`` finds (its index, not the content)."""
    _, rows = await store.read(
        lambda: store.conn.execute_query(
            f"SELECT count(*) FROM {table} WHERE {table} MATCH ?", [match]
        )
    )
    return rows[0][0]


async def assert_index_consistent(store: Store) -> None:
    """SQLite: the FTS indexes hold exactly what the tables hold (FTS5's integrity check
    against the external content); PostgreSQL's expression indexes cannot drift."""
    if store.conn.capabilities.dialect == "postgres":
        return
    for table in ("messages_fts", "chats_fts"):
        # An error if the index and the table differ (a statement outside any transaction).
        sql = f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)"
        await store.read(lambda sql=sql: store.conn.execute_query(sql))


# -- the query language ----------------------------------------------------------------------


def test_queries_are_words_prefixes_and_phrases_built_from_quoted_tokens() -> None:
    assert search.parse('Sea ott* "sea otter" "sea ott"* x.com') == [
        Term(("Sea",)),
        Term(("ott",), prefix=True),
        Term(("sea", "otter")),
        Term(("sea", "ott"), prefix=True),
        Term(("x", "com")),
    ]
    terms = search.parse('NEAR(a b) OR "c')
    assert terms == [Term(("NEAR", "a")), Term(("b",)), Term(("OR",)), Term(("c",))]
    assert search.fts5_query(terms) == '"NEAR a" AND "b" AND "OR" AND "c"'
    assert search.tsquery(search.parse("ab* x.y")) == "('ab':*) & ('x' <-> 'y')"
    assert search.tsquery(search.parse('"x y"'), phrases=False) == "('x' & 'y')"
    for nothing in ["", " ", '"', "*", ":", "&|!", "'", "\x00", "-", "()", "x" * 300]:
        assert search.parse(nothing) is None, nothing


# -- the matching rule -----------------------------------------------------------------------


async def test_words_prefixes_phrases_any_case_all_terms_in_one_message_or_the_title(
    team: ProxyServer, http: aiohttp.ClientSession
) -> None:
    a = await new_chat(
        http, team, "alice", "Where do sea otters sleep?", "Sea otters sleep holding hands."
    )
    b = await new_chat(http, team, "alice", "The otter is a mammal.", "Rivers are home to it.")
    c = await new_chat(http, team, "alice", "Spice islands?", "Yes.", title="Zanzibar notes")
    d = await new_chat(http, team, "alice", "Visit example.com, don't wait", "Café au lait?")

    async def q(text: str) -> list[str]:
        return await found(http, team, "alice", text)

    assert await q("otters") == [a]  # whole words: "otter" is another word
    assert await q("otter") == [b]
    assert await q("OTT*") == [b, a]  # newest first
    assert await q("SeA oTtErS") == [a]
    assert await q('"sea otters"') == [a]
    assert await q('"otters sea"') == []
    assert await q('"sea ott"*') == [a]
    assert await q("hands sleep") == [a]  # every term, in any order, in one message
    assert await q("mammal rivers") == []  # two messages of one chat are not one text
    assert await q("otter rivers zanzibar") == []
    assert await q("zanzibar") == [c]  # the title alone
    assert await q("notes zanz*") == [c]
    assert await q("example.com") == [d]  # punctuation separates words on both stores
    assert await q("example com") == [d]
    assert await q("don't") == [d]
    assert await q("café") == [d]
    assert await q("cafe") == []  # accents are kept
    assert await q("sleep*") == [a]
    assert await q("nothing-like-this") == []


async def test_another_users_messages_never_match_and_their_chats_are_never_returned(
    team: ProxyServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(team)
    mine = await new_chat(http, team, "alice", "A quokka smiles.", "Indeed.")
    theirs = await new_chat(http, team, "bob", "Quokka secrets", "Platypus.", title="Quokka")
    # A message of bob's in alice's chat (no API writes one) does not make her chat match.
    chat = await store.read(lambda: Chat.get(id=mine))
    await store.write(
        lambda: Message.create(
            id="msg_bobs_in_alices",
            chat_id=mine,
            parent_id=chat.head_id,
            user_id="bob",
            role="user",
            text="platypus",
            data={"role": "user", "content": "platypus"},
            prefix_hash="",
            status="completed",
            created_at=datetime.now(UTC),
        )
    )
    assert await store.read(lambda: Message.filter(id="msg_bobs_in_alices", chat_id=mine).exists())
    for bound in (search.HITS_BOUND, 0):  # both plans
        monkeypatch.setattr(search, "HITS_BOUND", bound)
        assert await found(http, team, "alice", "quokka") == [mine]
        assert await found(http, team, "alice", "platypus") == []
        assert await found(http, team, "bob", "quokka") == [theirs]
        assert await found(http, team, "bob", "platypus") == [theirs]
        assert await found(http, team, "carol", "quokka") == []
        # The operator's view (the CLI without --user): every user's chats.
        views, more = await list_chats(store, None, limit=10, q="quokka")
        assert [v.chat.id for v in views] == [theirs, mine] and not more


# -- pagination, both plans ------------------------------------------------------------------


async def test_both_plans_give_the_same_pages_with_after_and_metadata(
    team: ProxyServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(team)
    expected: dict[str, list[str]] = {"common": [], "rare": [], "common rare": [], "lemur": []}
    project: dict[str, str] = {}
    for i in range(14):
        words = ["common" if i % 4 != 3 else "plain", "rare" if i % 5 == 0 else "filler"]
        title = "Lemur facts" if i % 6 == 1 else None
        meta = {"project": "p1" if i % 2 else "p2"}
        chat = await new_chat(
            http, team, "alice", f"Chat {i} about {words[0]}", f"An {words[1]} answer.",
            title=title, metadata=meta,
        )  # fmt: skip
        project[chat] = meta["project"]
        for q, hit in (
            ("common", words[0] == "common"),
            ("rare", words[1] == "rare"),
            ("common rare", False),  # in two messages only
            ("lemur", title is not None),
        ):
            if hit:
                expected[q].insert(0, chat)
        # bob's chats hold every word and are never found.
        await new_chat(http, team, "bob", "common rare lemur", "common rare", title="Lemur")
    # The stored order is the listing's: newest updated_at first.
    listed = [
        c.id
        for c in await store.read(
            lambda: Chat.filter(owner_id="alice").order_by("-updated_at", "-id")
        )
    ]
    for ids in expected.values():
        assert ids == [c for c in listed if c in ids]
    assert len(expected["common"]) == 11 and len(expected["rare"]) == 3

    async def pages(q: str, **params: str) -> list[str]:
        return await found(http, team, "alice", q, limit="2", **params)

    # Hits; hits or walk by the count; walk; walks that stop after 1 or 3 of alice's 14 chats
    # and give way to the hits plan when they found fewer than a page.
    plans = [(search.HITS_BOUND, search.WALK_BOUND), (20, search.WALK_BOUND)]
    plans += [(0, search.WALK_BOUND), (0, 1), (0, 3)]
    for bound, walk_bound in plans:
        monkeypatch.setattr(search, "HITS_BOUND", bound)
        monkeypatch.setattr(search, "WALK_BOUND", walk_bound)
        for q, ids in expected.items():
            assert await pages(q) == ids, (bound, q)
            p1 = [c for c in ids if project[c] == "p1"]
            assert await pages(q, **{"metadata[project]": "p1"}) == p1, (bound, q)
        views, more = await list_chats(store, "alice", limit=4, q="common")
        assert [v.chat.id for v in views] == expected["common"][:4] and more
        views, more = await list_chats(
            store, "alice", limit=4, after=expected["common"][3], q="common"
        )
        assert [v.chat.id for v in views] == expected["common"][4:8] and more
        assert all(v.message_count == 2 for v in views)


# -- the index follows every write -----------------------------------------------------------


async def test_a_streamed_answer_is_found_by_its_final_text_and_a_rename_by_its_new_title(
    team: ProxyServer, http: aiohttp.ClientSession, upstream: FakeUpstream
) -> None:
    store = _store(team)
    upstream.enqueue(Reply(content="Flamingos stand on one leg to keep warm, mostly."))
    async with openai.AsyncOpenAI(
        base_url=team.url, api_key="x", max_retries=0, default_headers={"X-User-Id": "alice"}
    ) as client:
        stream = await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "Why one leg?"}],
            stream=True,
        )
        async for _ in stream:
            pass
    (chat,) = await store.read(lambda: Chat.filter(owner_id="alice"))
    answer = await store.read(lambda: Message.get(chat_id=chat.id, role="assistant"))
    assert answer.status == "completed" and "Flamingos" in (answer.text or "")
    assert await found(http, team, "alice", "flamingos leg") == [chat.id]
    assert await found(http, team, "alice", "why") == [chat.id]

    async with http.post(
        f"{team.url}/conversations/{chat.id}",
        json={"title": "Wading birds"},
        headers={"X-User-Id": "alice"},
    ) as resp:
        assert resp.status == 200
    assert (await store.read(lambda: Chat.get(id=chat.id))).title == "Wading birds"
    assert await found(http, team, "alice", "wading") == [chat.id]
    if store.conn.capabilities.dialect != "postgres":  # the old title left the index
        assert chat.title == "Why one leg?"
        assert await fts_rows(store, "chats_fts", "why") == 0
        assert await fts_rows(store, "chats_fts", "wading") == 1
    await assert_index_consistent(store)


async def test_deleted_chats_messages_and_pruned_chats_leave_the_index(
    team: ProxyServer, http: aiohttp.ClientSession
) -> None:
    store = _store(team)
    sqlite = store.conn.capabilities.dialect != "postgres"
    gone = await new_chat(http, team, "alice", "aardvark burrows", "Deep.", title="Aardvark")
    kept = await new_chat(http, team, "alice", "badger setts", "Wide.")
    old = await new_chat(http, team, "alice", "capybara pools", "Warm.", title="Capybara")
    later = (await store.read(lambda: Message.filter(chat_id=kept).order_by("created_at")))[1]
    async with http.post(
        f"{team.url}/conversations/{kept}/items",
        json={"items": [{"role": "user", "content": "dingo dens"}]},
        headers={"X-User-Id": "alice"},
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert await found(http, team, "alice", "dingo") == [kept]

    async with http.delete(
        f"{team.url}/conversations/{gone}", headers={"X-User-Id": "alice"}
    ) as resp:
        assert resp.status == 200
    dingo = await store.read(lambda: Message.get(chat_id=kept, text="dingo dens"))
    async with http.delete(
        f"{team.url}/conversations/{kept}/items/{dingo.id}", headers={"X-User-Id": "alice"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    await store.write(
        lambda: Chat.filter(id=old).update(updated_at=datetime.now(UTC) - timedelta(days=30))
    )
    assert await prune(store, timedelta(days=7)) == 1

    assert not await store.read(lambda: Chat.filter(id__in=[gone, old]).exists())
    assert not await store.read(lambda: Message.filter(chat_id__in=[gone, old]).exists())
    assert [
        m.id for m in await store.read(lambda: Message.filter(chat_id=kept).order_by("created_at"))
    ][-1] == (later.id)
    for q in ("aardvark", "capybara", "dingo", "burrows", "pools"):
        assert await found(http, team, "alice", q) == [], q
    assert await found(http, team, "alice", "badger") == [kept]
    if sqlite:  # the FTS index itself holds nothing of them
        for word in ("aardvark", "capybara", "dingo", "burrows"):
            assert await fts_rows(store, "messages_fts", word) == 0, word
            assert await fts_rows(store, "chats_fts", word) == 0, word
        assert await fts_rows(store, "messages_fts", "badger") == 1
    await assert_index_consistent(store)


# -- hostile queries -------------------------------------------------------------------------

HOSTILE = [
    "NEAR(",
    "NEAR(otter rose, 2)",
    '"',
    '""',
    '"otter',
    "*",
    "**otter",
    "otter**",
    "OR",
    "otter OR rose",
    "-otter",
    "otter -rose",
    "text:otter",
    "title : otter",
    "{text title}: otter",
    "^otter",
    "otter & rose",
    "otter | rose",
    "!otter",
    "'otter'",
    "'",
    "otter:*",
    "otter <-> rose",
    "otter <2> rose",
    "(((",
    "\\",
    "%",
    "_",
    "'; DROP TABLE chats; --",
    "🦦 otter",
    "é\u0301",
    "\u200b",
    "x" * 1000,
]


async def test_hostile_queries_are_words_or_nothing_never_syntax_or_a_500(
    team: ProxyServer, http: aiohttp.ClientSession
) -> None:
    store = _store(team)
    otter = await new_chat(http, team, "alice", "An otter and a rose, or not", "Sure.")
    await new_chat(http, team, "bob", "otter rose or not", "otter")
    # Operators are separators or words: these find the chat, every other query nothing
    # ("NEAR", "text", "title" and "2" are words it lacks; "x" * 1000 is too long a word).
    finds = {'"otter', "**otter", "otter**", "OR", "otter OR rose", "-otter", "otter -rose"}
    finds |= {"^otter", "otter & rose", "otter | rose", "!otter", "'otter'", "otter:*"}
    finds |= {"otter <-> rose", "🦦 otter"}
    for q in HOSTILE:
        async with http.get(
            f"{team.url}/conversations", params={"q": q}, headers={"X-User-Id": "alice"}
        ) as resp:
            assert resp.status == 200, (q, await resp.text())
            ids = [c["id"] for c in (await resp.json())["data"]]
        assert ids == ([otter] if q in finds else []), q
    # A NUL or more than 1,000 characters are refused (10,000 are over the URL's limit).
    for q, status in (("otter\x00", 400), ("x" * 1001, 400), ("x" * 10_000, 431)):
        async with http.get(
            f"{team.url}/conversations", params={"q": q}, headers={"X-User-Id": "alice"}
        ) as resp:
            assert resp.status == status, q[:10]
            error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    # Nothing broken: the store still answers and holds both chats.
    assert await found(http, team, "alice", "otter") == [otter]
    assert await store.read(lambda: Chat.all().count()) == 2
    await assert_index_consistent(store)


# -- the migration ---------------------------------------------------------------------------


async def test_the_migration_indexes_a_store_written_before_it(
    db_url: str, start_proxy, http: aiohttp.ClientSession
) -> None:
    async with store_at(db_url, "0007_message_depth"):
        now = datetime.now(UTC) - timedelta(days=1)
        for user in ("alice", "bob"):
            await User.create(id=user, name=user, created_at=now)
        for i, (user, title, text) in enumerate(
            [
                ("alice", "Narwhal tusks", "How long is a tusk?"),
                ("alice", None, "Axolotls regrow limbs"),
                ("bob", "Narwhals", "axolotls too"),
            ]
        ):
            at = now + timedelta(minutes=i)
            chat = await Chat.create(
                id=f"chat_old{i}",
                owner_id=user,
                title=title,
                metadata={},
                created_at=at,
                updated_at=at,
            )
            await Message.create(
                id=f"msg_old{i}",
                chat_id=chat.id,
                user_id=user,
                role="user",
                text=text,
                data={"role": "user", "content": text},
                prefix_hash="",
                status="completed",
                depth=1,
                created_at=at,
            )
            await Chat.filter(id=chat.id).update(head_id=f"msg_old{i}")

    proxy = await start_proxy(**TEAM)  # opens the store: 0008 runs on the populated store
    assert await found(http, proxy, "alice", "narwhal") == ["chat_old0"]
    assert await found(http, proxy, "alice", "tusk") == ["chat_old0"]
    assert await found(http, proxy, "alice", "axolotl*") == ["chat_old1"]
    assert await found(http, proxy, "bob", "narwhal*") == ["chat_old2"]
    await assert_index_consistent(_store(proxy))

"""The history browser (``/ui``) driven in headless Chromium, like a person would use it:
chats made through the official ``openai`` SDK against the fake upstream, then read, searched,
switched between branches, renamed, shared, exported and deleted in the page; markup in
messages shown as text; one user never seeing another's chats.

Debian's ``chromium`` is the browser (``make test`` installs it); Playwright only drives it.
In CI a missing browser fails these tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from playwright.async_api import Browser, Page, expect

from chatproxy.appkeys import STORE
from chatproxy.server import ProxyServer
from chatproxy.testing import FakeUpstream, Reply, ToolCall
from tests.test_identity import make_key
from tests.util import post_stream

ARTIFACTS = Path(__file__).parent / "artifacts"
UNLIMITED = {"limits.ip_rate": "0"}  # the page makes many calls; limits are tested elsewhere

ANSWER = """Paris is the capital of **France**, on the Seine.

```python
cities = {"France": "Paris", "Germany": "Berlin"}
print(cities["France"])
```

| country | capital |
| --- | --- |
| France | Paris |
| Germany | Berlin |
"""


@pytest.fixture
def db_url(db_path: Path) -> str:
    # The page is the subject here; every store query it uses runs on both databases in the
    # API's own tests.
    return f"sqlite://{db_path}"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh tab; at the end, the page must have thrown nothing and broken no CSP rule."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield page
    await context.close()
    assert problems == []


def ui_url(proxy: ProxyServer) -> str:
    return f"http://127.0.0.1:{proxy.port}/ui"


def sdk(proxy: ProxyServer, key: str = "sk-unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url, api_key=key, max_retries=0)


async def ask(client: openai.AsyncOpenAI, messages: list[Any], **headers: str) -> tuple[str, str]:
    """A chat completion through the proxy: ``(chat id, answer's message id)``."""
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-model", messages=messages, extra_headers=headers or None
    )
    return raw.headers["x-chat-id"], raw.headers["x-message-id"]


async def api(http: aiohttp.ClientSession, proxy: ProxyServer, path: str) -> tuple[int, Any]:
    async with http.get(f"{proxy.url}{path}") as resp:
        return resp.status, await resp.json()


async def download(page: Page, button: str) -> tuple[str, str]:
    """Click ``button`` and catch the file it downloads: its name and its text."""
    async with page.expect_download() as info:
        await page.click(button)
    done = await info.value
    path = Path(await done.path())
    return done.suggested_filename, await asyncio.to_thread(path.read_text)


def chat_items(page: Page):
    return page.locator("#chat-list .chat-item-title")


def message_bodies(page: Page):
    return page.locator("#messages .msg .body")


@pytest.fixture
async def proxy(start_proxy: Callable[..., Any]) -> ProxyServer:
    return await start_proxy(**UNLIMITED)


async def test_browse_search_switch_branches_rename_share_export_and_delete_a_chat(
    proxy: ProxyServer,
    upstream: FakeUpstream,
    page: Page,
    http: aiohttp.ClientSession,
    artifacts: Path,
) -> None:
    question = "What is the capital of France?"
    upstream.enqueue(
        Reply(content="Crisp leaves drifting down"),
        Reply(content="Budget approved; launch moved to May."),
        Reply(content="Paris."),
        Reply(content=ANSWER, reasoning="The user asks for a capital city."),
        Reply(tool_calls=[ToolCall("get_weather", '{"city": "Berlin"}')]),
    )
    async with sdk(proxy) as client:
        for older in ("Write a haiku about autumn", "Summarise the meeting notes"):
            await ask(client, [{"role": "user", "content": older}])
        chat_id, first = await ask(client, [{"role": "user", "content": question}])
        question_id = (await proxy.app[STORE].get_message(first)).parent_id
        # A regenerated answer: a sibling of the first one, and the chat's new head.
        _, second = await ask(
            client, [], **{"X-Chat-History": "server", "X-Chat-Parent": question_id}
        )
        other_id, _ = await ask(client, [{"role": "user", "content": "Weather in Berlin?"}])

    await page.goto(ui_url(proxy))
    # Newest first.
    older = ["Summarise the meeting notes", "Write a haiku about autumn"]
    await expect(chat_items(page)).to_have_text(["Weather in Berlin?", question, *older])

    await page.fill("#search", "capital")
    await expect(chat_items(page)).to_have_text([question])
    await page.fill("#search", "no such words anywhere")
    await expect(chat_items(page)).to_have_count(0)
    await expect(page.locator("#list-end")).to_have_text("No chat matches.")
    await page.fill("#search", "")
    await expect(chat_items(page)).to_have_count(4)

    await page.click(f'.chat-item[data-id="{other_id}"]')
    await expect(page.locator(".tool-call")).to_contain_text("get_weather")
    await expect(page.locator(".tool-call pre")).to_have_text('{\n  "city": "Berlin"\n}')

    await page.get_by_text(question).first.click()
    await expect(page.locator("#chat-title")).to_have_text(question)
    await expect(page).to_have_url(f"{ui_url(proxy)}#{chat_id}")
    # The active branch ends in the regenerated answer, rendered from Markdown.
    answer = page.locator(f'.msg[data-id="{second}"]')
    await expect(answer.locator("strong")).to_have_text("France")
    code = answer.locator("pre code.language-python")
    await expect(code).to_contain_text('print(cities["France"])')
    await expect(answer.locator("table td")).to_have_text(["France", "Paris", "Germany", "Berlin"])
    reasoning = answer.locator("details.reasoning")
    await expect(reasoning).not_to_have_attribute("open", "")
    await expect(reasoning.locator(".md")).not_to_be_visible()
    await reasoning.locator("summary").click()
    await expect(reasoning.locator(".md")).to_have_text("The user asks for a capital city.")
    await expect(answer.locator(".branch-position")).to_have_text("2 / 2")
    await expect(page.locator("#branch-note")).to_be_hidden()

    await page.screenshot(path=artifacts / "ui.png")

    await answer.get_by_label("Previous branch").click()
    await expect(message_bodies(page)).to_have_text([question, "Paris."])
    await expect(page.locator(f'.msg[data-id="{first}"] .branch-position')).to_have_text("1 / 2")
    await expect(page.locator("#branch-note")).to_be_visible()
    await page.get_by_label("Next branch").click()
    await expect(page.locator(f'.msg[data-id="{second}"]')).to_be_visible()
    await page.get_by_label("Previous branch").click()
    await page.click("#branch-back")
    await expect(page.locator(f'.msg[data-id="{second}"]')).to_be_visible()
    # Switching is a view: the chat's head did not move.
    _, stored = await api(http, proxy, f"/conversations/{chat_id}/messages")
    assert stored["head_id"] == second

    await page.click("#rename")
    await page.fill("#rename-input", "Capitals of Europe")
    await page.press("#rename-input", "Enter")
    await expect(page.locator("#chat-title")).to_have_text("Capitals of Europe")
    await expect(page.locator(f'.chat-item[data-id="{chat_id}"]')).to_contain_text(
        "Capitals of Europe"
    )
    await page.click("#visibility")
    await expect(page.locator("#visibility")).to_have_text("Make private")
    await expect(page.locator("#chat-meta .pill")).to_have_text("public")
    _, conversation = await api(http, proxy, f"/conversations/{chat_id}")
    assert (conversation["title"], conversation["visibility"]) == ("Capitals of Europe", "public")

    name, text = await download(page, "#export-json")
    assert name == f"{chat_id}.json"
    document = json.loads(text)
    assert document["chat"]["title"] == "Capitals of Europe"
    assert {m["id"] for m in document["messages"]} == {question_id, first, second}
    name, markdown = await download(page, "#export-markdown")
    assert name == f"{chat_id}.md"
    assert markdown.startswith("# Capitals of Europe")
    assert 'print(cities["France"])' in markdown and "Paris." not in markdown

    # Deleting asks first; cancelling keeps the chat.
    await page.click("#delete")
    await expect(page.locator("#confirm-delete")).to_be_visible()
    await expect(page.locator("#confirm-title")).to_have_text("Capitals of Europe")
    await page.click("#confirm-cancel")
    await expect(page.locator("#confirm-delete")).to_be_hidden()
    assert (await api(http, proxy, f"/conversations/{chat_id}"))[0] == 200
    await page.click("#delete")
    await page.click("#confirm-yes")
    await expect(chat_items(page)).to_have_text(["Weather in Berlin?", *older])
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#toast")).to_have_text("Chat deleted.")
    assert (await api(http, proxy, f"/conversations/{chat_id}"))[0] == 404


async def test_unfinished_answers_show_their_status_and_what_arrived(
    start_proxy: Callable[..., Any], upstream: FakeUpstream, page: Page, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(**UNLIMITED, **{"upstream.max_duration": 0.5})
    upstream.enqueue(
        Reply(chunks=["The meeting ", "covered ", "the budget ", "and"], drop_after=3),
        Reply(chunks=[f"w{i} " for i in range(40)], chunk_delay=0.05),
    )
    answers = {}
    for question in ("Summarise the meeting", "Count to forty"):
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": question}]}
        _, _, answers[question] = await post_stream(http, proxy.url, body)

    await page.goto(ui_url(proxy))
    await page.get_by_text("Summarise the meeting").click()
    failed = page.locator(f'.msg[data-id="{answers["Summarise the meeting"]}"]')
    await expect(failed).to_have_attribute("data-status", "failed")
    await expect(failed.locator(".badge")).to_have_text("failed")
    await expect(failed.locator(".content")).to_have_text("The meeting covered")
    await expect(failed.locator(".error-text")).not_to_be_empty()
    await page.get_by_text("Count to forty").click()
    cut = page.locator(f'.msg[data-id="{answers["Count to forty"]}"]')
    await expect(cut.locator(".badge")).to_have_text("incomplete")
    await expect(cut.locator(".content")).to_contain_text("w0 w1")
    await expect(cut.locator(".error-text")).to_contain_text("duration")


async def test_the_list_scrolls_through_every_page_newest_first(
    proxy: ProxyServer, page: Page
) -> None:
    async with sdk(proxy) as client:
        for n in range(45):
            await client.conversations.create(
                items=[{"type": "message", "role": "user", "content": f"Chat number {n}"}]
            )
    await page.goto(ui_url(proxy))
    await expect(chat_items(page)).to_have_count(20)  # one page: the rest is below the fold
    for shown in (40, 45):
        await chat_items(page).last.scroll_into_view_if_needed()
        await expect(chat_items(page)).to_have_count(shown)
    await expect(chat_items(page)).to_have_text([f"Chat number {n}" for n in reversed(range(45))])


async def test_a_running_generation_shows_live_through_the_resume_endpoint(
    proxy: ProxyServer, upstream: FakeUpstream, page: Page, http: aiohttp.ClientSession
) -> None:
    words = [f"word{i} " for i in range(40)]
    upstream.enqueue(Reply(chunks=words, chunk_delay=0.15))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Count."}]}
    resumed: list[int] = []
    page.on("response", lambda r: resumed.append(r.status) if r.url.endswith("/stream") else None)

    async with http.post(f"{proxy.url}/chat/completions", json=body) as resp:
        chat_id, message_id = resp.headers["X-Chat-Id"], resp.headers["X-Message-Id"]
        reading = asyncio.create_task(resp.read())
        await page.goto(f"{ui_url(proxy)}#{chat_id}")
        answer = page.locator(f'.msg[data-id="{message_id}"]')
        await expect(answer.locator(".badge-in_progress")).to_have_text("generating")
        await expect(answer.locator(".body")).to_contain_text("word3")
        partial = await answer.locator(".body").inner_text()
        assert "word39" not in partial
        await reading

    await expect(answer).to_have_attribute("data-status", "completed", timeout=10_000)
    await expect(answer.locator(".body")).to_have_text("".join(words).strip())
    await expect(answer.locator(".badge")).to_have_count(0)
    assert resumed[0] == 200


async def test_markup_in_messages_is_shown_as_text_and_never_runs(
    proxy: ProxyServer, upstream: FakeUpstream, page: Page
) -> None:
    question = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    answer = (
        '<img src=x onerror="window.pwned = 2"> and <script>window.pwned = 3</script>\n\n'
        "[click me](javascript:window.pwned=4) <b>not bold</b>\n\n"
        "```html\n<iframe src=javascript:window.pwned=5></iframe>\n```"
    )
    upstream.enqueue(Reply(content=answer, reasoning='<svg onload="window.pwned = 6">'))
    async with sdk(proxy) as client:
        chat_id, _ = await ask(client, [{"role": "user", "content": question}])

    await page.goto(f"{ui_url(proxy)}#{chat_id}")
    bodies = message_bodies(page)
    await expect(bodies.first).to_have_text(question)
    await expect(bodies.nth(1)).to_contain_text('<img src=x onerror="window.pwned = 2"> and')
    await expect(bodies.nth(1)).to_contain_text("<script>window.pwned = 3</script>")
    await expect(bodies.nth(1)).to_contain_text("click me <b>not bold</b>")
    await expect(bodies.nth(1).locator("pre")).to_have_text(
        "<iframe src=javascript:window.pwned=5></iframe>"
    )
    await page.click("details.reasoning summary")
    await expect(page.locator("details.reasoning .md")).to_have_text(
        '<svg onload="window.pwned = 6">'
    )
    # The title (from the question) is text too, in the list, the heading and the dialog.
    await expect(page.locator("#chat-title")).to_have_text(question)
    await expect(chat_items(page)).to_have_text([question])
    await page.click("#delete")
    await expect(page.locator("#confirm-title")).to_have_text(question)
    await page.click("#confirm-cancel")

    for selector in ("script", "img", "iframe", "svg", "b", "[onerror]", "[onload]", "a"):
        assert await page.locator(f"#messages {selector}, #chat-list {selector}").count() == 0
    assert await page.locator("#chat-title *, #confirm-title *").count() == 0
    assert await page.evaluate("document.querySelectorAll('[onerror], [onload]').length") == 0
    assert await page.evaluate("window.pwned") is None


async def test_another_users_chats_never_appear(
    start_proxy: Callable[..., Any], upstream: FakeUpstream, page: Page
) -> None:
    proxy = await start_proxy(**UNLIMITED, **{"auth.mode": "keys"})
    _, alice = await make_key(proxy.app[STORE], "alice")
    _, bob = await make_key(proxy.app[STORE], "bob")
    upstream.enqueue(Reply(content="Step one: tell no one."), Reply(content="Milk, eggs."))
    async with sdk(proxy, alice) as client:
        secret_id, _ = await ask(client, [{"role": "user", "content": "Alice's secret plan"}])
        await client.conversations.create(
            items=[{"type": "message", "role": "user", "content": "Alice's public notes"}],
            extra_body={"visibility": "public"},
        )
    async with sdk(proxy, bob) as client:
        await ask(client, [{"role": "user", "content": "Bob's grocery list"}])

    # Mode keys: the page asks for a key, and says so when one is refused.
    await page.goto(ui_url(proxy))
    await expect(page.locator("#signin")).to_be_visible()
    await page.fill("#key", "cp-not-a-real-key")
    await page.press("#key", "Enter")
    await expect(page.locator("#signin-error")).to_have_text("That key was not accepted.")

    await page.fill("#key", bob)
    await page.click("#signin button[type=submit]")
    await expect(chat_items(page)).to_have_text(["Bob's grocery list"])
    await page.fill("#search", "Alice")
    await expect(page.locator("#list-end")).to_have_text("No chat matches.")
    await expect(chat_items(page)).to_have_count(0)
    await page.fill("#search", "tell no one")  # the text of Alice's answer
    await expect(page.locator("#list-end")).to_have_text("No chat matches.")
    # Not even by its address: another user's private chat does not exist.
    await page.goto(f"{ui_url(proxy)}#{secret_id}")
    await expect(page.locator("#toast")).to_contain_text("no conversation")
    await expect(page.locator("#chat")).to_be_hidden()
    await expect(page.locator("#messages")).not_to_contain_text("tell no one")
    # The key lives in this tab only, and goes with sign-out.
    assert await page.evaluate("sessionStorage.getItem('chatproxy.key')") == bob
    assert await page.evaluate("localStorage.length") == 0
    await page.click("#signout")
    await expect(page.locator("#signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0

    await page.fill("#key", alice)
    await page.press("#key", "Enter")
    await expect(chat_items(page)).to_have_text(["Alice's public notes", "Alice's secret plan"])
    await expect(page.locator("#chat-list")).not_to_contain_text("Bob")


LINK = 'target="_blank" rel="noopener noreferrer nofollow"'
MARKDOWN = [
    (
        "**bold** *em* ~~gone~~ `a<b`",
        "<p><strong>bold</strong> <em>em</em> <del>gone</del> <code>a&lt;b</code></p>",
    ),
    ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
    (
        "[ok](https://example.com/a?b=1&c=2)",
        f'<p><a href="https://example.com/a?b=1&amp;c=2" {LINK}>ok</a></p>',
    ),
    # Only http(s) and mailto become links; the rest keep their text.
    (
        "[js](javascript:alert(1)) [data](data:text/html,<b>x</b>) [rel](/etc/passwd)",
        "<p><span>js</span> <span>data</span> <span>rel</span></p>",
    ),
    (
        "see <https://a.org/x> and https://b.org/y.",
        f'<p>see <a href="https://a.org/x" {LINK}>https://a.org/x</a> and '
        f'<a href="https://b.org/y" {LINK}>https://b.org/y</a>.</p>',
    ),
    # An image is never loaded: it becomes a link to it.
    (
        "![cat](https://img.example/cat.png)",
        f'<p><a href="https://img.example/cat.png" {LINK}>🖼 cat</a></p>',
    ),
    (
        "- a\n- b\n  - c\n\n3. x\n4. y",
        '<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><ol start="3"><li>x</li><li>y</li></ol>',
    ),
    ("> quoted\n> more", "<blockquote><p>quoted<br>more</p></blockquote>"),
    # A fence still open (an answer being streamed) runs to the end.
    (
        "```js\nlet x = '<b>';",
        '<div class="code"><div class="code-head"><span>js</span><button type="button" '
        'class="copy" aria-label="Copy code">Copy</button></div><pre><code class="language-js">'
        "let x = '&lt;b&gt;';</code></pre></div>",
    ),
    (
        "# Title\n---\n| a | b |\n|:-|-:|\n| 1 | 2 |",
        '<h3>Title</h3><hr><div class="table"><table><thead><tr><th class="align-left">a</th>'
        '<th class="align-right">b</th></tr></thead><tbody><tr><td class="align-left">1</td>'
        '<td class="align-right">2</td></tr></tbody></table></div>',
    ),
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    (
        "``code with ` inside`` and \\*not em\\*",
        "<p><code>code with ` inside</code> and *not em*</p>",
    ),
]


async def test_markdown_becomes_safe_nodes(proxy: ProxyServer, page: Page) -> None:
    await page.goto(ui_url(proxy))
    texts = [text for text, _ in MARKDOWN] + [">" * 5000 + " deep", "*x " * 5000]
    rendered = await page.evaluate(
        """async (texts) => {
            const { renderMarkdown } = await import("/ui/static/markdown.js");
            return texts.map((text) => {
                const box = document.createElement("div");
                box.append(renderMarkdown(text));
                return box.innerHTML;
            });
        }""",
        texts,
    )
    assert rendered[: len(MARKDOWN)] == [html for _, html in MARKDOWN]
    # Hostile nesting ends in text, not in a stack overflow.
    deep = rendered[-2]
    assert deep.count("<blockquote>") == 17
    assert deep.endswith("deep</p>" + "</blockquote>" * 17)
    assert rendered[-1].startswith("<p>*x *x")

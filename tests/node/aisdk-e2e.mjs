// End-to-end: the Vercel AI SDK's own client code (the `ai` package from npm) against
// chatproxy's /api/chat. Usage: node aisdk-e2e.mjs http://127.0.0.1:PORT
// AI_PACKAGE names the package to use: `ai` (AI SDK 7, the default) or `ai6` (AI SDK 6).
//
// The proxy's upstream is scripted by the caller (tests/test_aisdk_node.py), one answer per
// request, in the order of the steps below. Each step checks what it can on its own; the last
// line printed is `RESULT {json}` with what the caller checks against its script.
import assert from 'node:assert/strict';

import { ArrayState } from './array-state.mjs';

const { AbstractChat, DefaultChatTransport, readUIMessageStream } = await import(
  process.env.AI_PACKAGE ?? 'ai'
);

const base = process.argv[2] ?? process.env.CHATPROXY_URL;
assert.ok(base, 'usage: node aisdk-e2e.mjs http://127.0.0.1:PORT');
const api = `${base}/api/chat`;
const body = { model: 'fake-model' };

// A framework-free chat: AbstractChat (what useChat wraps) over a plain array.
class Chat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new ArrayState(messages) });
  }
}

const textOf = message =>
  message.parts
    .filter(part => part.type === 'text')
    .map(part => part.text)
    .join('');

async function storedMessages(chatId) {
  const response = await fetch(`${api}/${chatId}/messages`);
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

async function settle(chat) {
  assert.equal(chat.status, 'ready', `chat ended as ${chat.status}: ${chat.error}`);
  return chat.messages.at(-1);
}

const result = {};
const chatId = `node-${process.pid}-${Date.now()}`;
const transport = new DefaultChatTransport({ api, body });

// 1. Send a message through the chat class and its transport; read the answer's text.
const chat = new Chat({ id: chatId, transport });
await chat.sendMessage({ text: 'Hello!' });
const first = await settle(chat);
assert.equal(first.role, 'assistant');
assert.equal(first.metadata?.model, 'fake-model');
assert.ok(first.metadata.usage.totalTokens > 0);
result.first = textOf(first);

// 2. Reload: what the proxy stored is what the client holds (ids, roles, text).
const stored = await storedMessages(chatId);
assert.deepEqual(
  stored.map(m => [m.id, m.role, textOf(m)]),
  chat.messages.map(m => [m.id, m.role, textOf(m)]),
);

// A page load: a new chat hydrated from the store goes on with the same conversation.
const reloaded = new Chat({ id: chatId, messages: stored, transport });
await reloaded.resumeStream(); // useChat({ resume: true }) on load: nothing runs (204)
assert.equal(reloaded.status, 'ready');
await reloaded.sendMessage({ text: 'And a second question.' });
result.second = textOf(await settle(reloaded));
assert.equal((await storedMessages(chatId)).length, 4);

// 3. Abort mid-stream, then resume through the transport's reconnectToStream.
const question = {
  id: 'q3',
  role: 'user',
  parts: [{ type: 'text', text: 'Tell me a long story.' }],
};
const abort = new AbortController();
const live = await transport.sendMessages({
  chatId,
  messages: [...reloaded.messages, question],
  trigger: 'submit-message',
  messageId: undefined,
  abortSignal: abort.signal,
});
let partial = '';
let liveId;
try {
  for await (const message of readUIMessageStream({ stream: live })) {
    liveId = message.id;
    partial = textOf(message);
    if (partial) abort.abort();
  }
} catch (error) {
  assert.equal(error.name, 'AbortError', String(error));
}
assert.ok(partial.length > 0, 'read some text before aborting');
const resumed = await transport.reconnectToStream({ chatId });
assert.ok(resumed, 'the answer still runs: the proxy resumes it');
let whole;
for await (const message of readUIMessageStream({ stream: resumed })) whole = message;
assert.equal(whole.id, liveId);
assert.ok(textOf(whole).startsWith(partial));
result.partial = partial;
result.resumed = textOf(whole);

// 4. Regenerate the last answer: a sibling; reloading shows the new one.
const afterResume = await storedMessages(chatId);
assert.equal(afterResume.at(-1).id, whole.id);
assert.equal(textOf(afterResume.at(-1)), textOf(whole));
const again = new Chat({ id: chatId, messages: afterResume, transport });
await again.regenerate();
const regenerated = await settle(again);
assert.notEqual(regenerated.id, whole.id);
result.regenerated = textOf(regenerated);
const afterRegenerate = await storedMessages(chatId);
assert.deepEqual(
  afterRegenerate.map(m => m.id),
  again.messages.map(m => m.id),
);

// 5. The "send only the last message" pattern: the history comes from the store.
const single = new Chat({
  id: chatId,
  messages: afterRegenerate,
  transport: new DefaultChatTransport({
    api,
    prepareSendMessagesRequest: ({ id, messages, trigger, messageId }) => ({
      body: { ...body, id, message: messages.at(-1), trigger, messageId },
    }),
  }),
});
await single.sendMessage({ text: 'Only this message is sent.' });
result.single = textOf(await settle(single));
result.messages = (await storedMessages(chatId)).length;
result.chatId = chatId;

console.log(`RESULT ${JSON.stringify(result)}`);

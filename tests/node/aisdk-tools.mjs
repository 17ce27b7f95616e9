// A tool run by the client, with the Vercel AI SDK's own chat class against chatproxy's
// /api/chat: a tool without `execute`, `onToolCall` + `addToolOutput`, and
// `sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls`, as the AI SDK's docs
// show it. Usage: node aisdk-tools.mjs http://127.0.0.1:PORT CHAT_ID
// AI_PACKAGE names the package to use: `ai` (AI SDK 7, the default) or `ai6` (AI SDK 6).
//
// The proxy's upstream is scripted by the caller (tests/test_aisdk_node.py): a call of
// getWeather, the answer after its result, the answers to two more questions, then the first
// answer again (regenerated). The last line printed is `RESULT {json}`: what the client holds,
// and what a reload gives, after each step.
import assert from 'node:assert/strict';

import { ArrayState } from './array-state.mjs';

const { AbstractChat, DefaultChatTransport, lastAssistantMessageIsCompleteWithToolCalls } =
  await import(process.env.AI_PACKAGE ?? 'ai');

const [base, chatId] = process.argv.slice(2);
assert.ok(base && chatId, 'usage: node aisdk-tools.mjs http://127.0.0.1:PORT CHAT_ID');
const api = `${base}/api/chat`;
// The app offers its tool to the model (chat-completions `tools`, forwarded upstream).
const tools = [
  {
    type: 'function',
    function: {
      name: 'getWeather',
      parameters: { type: 'object', properties: { city: { type: 'string' } } },
    },
  },
];

const toolCalls = [];
const chat = new AbstractChat({
  id: chatId,
  state: new ArrayState(),
  transport: new DefaultChatTransport({ api, body: { model: 'fake-model', tools } }),
  sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
  onToolCall: ({ toolCall }) => {
    toolCalls.push(toolCall);
    if (toolCall.dynamic) return;
    // Not awaited, as the AI SDK's docs say (awaiting it inside onToolCall deadlocks).
    chat.addToolOutput({
      tool: 'getWeather',
      toolCallId: toolCall.toolCallId,
      output: { city: toolCall.input.city, weather: 'sunny' },
    });
  },
});

// The continuation is sent automatically once the tool output is in; wait until it is over.
async function settled() {
  for (let i = 0; i < 200; i += 1) {
    if (chat.status === 'ready' || chat.status === 'error') break;
    await new Promise(resolve => setTimeout(resolve, 25));
  }
  assert.equal(chat.status, 'ready', `chat ended as ${chat.status}: ${chat.error}`);
}

// What a message is, without the fields the client adds while streaming (`state` of text...).
const summary = message => ({
  id: message.id,
  role: message.role,
  parts: message.parts.map(part =>
    part.type === 'text'
      ? { type: 'text', text: part.text }
      : part.type.startsWith('tool-')
        ? {
            type: part.type,
            toolCallId: part.toolCallId,
            state: part.state,
            input: part.input,
            output: part.output,
          }
        : { type: part.type },
  ),
});

async function stored() {
  const response = await fetch(`${api}/${chatId}/messages`);
  assert.equal(response.status, 200, await response.clone().text());
  return (await response.json()).map(summary);
}

const result = {};

// 1. A question whose answer calls the client's tool; the answer goes on after its output.
await chat.sendMessage({ text: 'What is the weather in Paris?' });
await settled();
assert.equal(toolCalls.length, 1);
result.afterTool = chat.messages.map(summary);
result.reloadedAfterTool = await stored();

// 2. The next question, with the whole history as the client holds it.
await chat.sendMessage({ text: 'Thanks! And tomorrow?' });
await settled();
result.afterNext = chat.messages.map(summary);
result.reloadedAfterNext = await stored();

// 3. A page load: a chat hydrated from the store goes on without storing anything twice.
const reloaded = new AbstractChat({
  id: chatId,
  state: new ArrayState(await (await fetch(`${api}/${chatId}/messages`)).json()),
  transport: new DefaultChatTransport({ api, body: { model: 'fake-model', tools } }),
});
await reloaded.sendMessage({ text: 'One more.' });
assert.equal(reloaded.status, 'ready', `chat ended as ${reloaded.status}: ${reloaded.error}`);
result.afterReload = reloaded.messages.map(summary);
result.reloadedAfterReload = await stored();

// 4. Regenerate the answer that went through the tool: the whole UIMessage is answered again.
await reloaded.regenerate({ messageId: result.afterTool[1].id });
assert.equal(reloaded.status, 'ready', `chat ended as ${reloaded.status}: ${reloaded.error}`);
result.afterRegenerate = reloaded.messages.map(summary);
result.reloadedAfterRegenerate = await stored();

console.log(`RESULT ${JSON.stringify(result)}`);

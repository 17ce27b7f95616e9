// The npm `openai` SDK against chatproxy's /v1, as an app uses it: two conversations that share
// their system prompt, two turns each, the history resent every time.
// Usage: node openai-sdk.mjs http://127.0.0.1:PORT/v1 stream|plain
//
// The proxy's upstream is scripted by the caller (tests/test_node_clients.py), one answer per
// request: the first turn of A, of B, then the second turn of A, of B. The last line printed is
// `RESULT {json}`: each answer's text and the X-Chat-Id it came with.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [baseURL, mode] = process.argv.slice(2);
assert.ok(
  baseURL && ['stream', 'plain'].includes(mode),
  'usage: node openai-sdk.mjs BASE_URL stream|plain',
);
const client = new OpenAI({ baseURL, apiKey: 'sk-test', maxRetries: 0 });
const system = { role: 'system', content: 'You are a helpful assistant.' };

async function ask(messages) {
  if (mode === 'plain') {
    const { data, response } = await client.chat.completions
      .create({ model: 'fake-model', messages })
      .withResponse();
    return { text: data.choices[0].message.content, chatId: response.headers.get('x-chat-id') };
  }
  const { data: stream, response } = await client.chat.completions
    .create({ model: 'fake-model', messages, stream: true })
    .withResponse();
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  return { text, chatId: response.headers.get('x-chat-id') };
}

const conversations = {
  a: [system, { role: 'user', content: 'Tell me about apples.' }],
  b: [system, { role: 'user', content: 'Tell me about boats.' }],
};
const result = { a: [], b: [] };
for (const [next, name] of [
  ['And their colours?', 'a'],
  ['And their sails?', 'b'],
]) {
  const answer = await ask(conversations[name]);
  result[name].push(answer);
  conversations[name].push({ role: 'assistant', content: answer.text });
  conversations[name].push({ role: 'user', content: next });
}
for (const name of ['a', 'b']) result[name].push(await ask(conversations[name]));
console.log(`RESULT ${JSON.stringify(result)}`);

// The `ai` package's streamText with the OpenAI provider's default model, `openai('fake-model')`,
// which speaks the Responses API (POST /v1/responses), pointed at chatproxy's /v1, with a tool
// the SDK runs itself. A first turn in every scenario: the model calls getWeather, the SDK sends
// its result back, the model answers. Then, as SCENARIO says:
// - `tool`: nothing more;
// - `history`: the whole history plus a new user message, as an app keeps it (the provider
//   stores by default, so the earlier answer goes as an `item_reference` to its stored item);
// - `previous`: only a new user message, continuing on the server with `previousResponseId` (the
//   id of the first turn's last response); the SDK sends that id with every step of the turn.
// Usage: node ai-responses.mjs http://127.0.0.1:PORT/v1 SCENARIO
//
// The proxy's upstream is scripted by the caller (tests/test_node_responses.py). The last line
// printed is `RESULT {json}`: the model's provider; each turn's text, tool calls and results,
// and each step's X-Chat-Id, response id and output item ids; every request the SDK sent (its
// path, its `previous_response_id`, its input items' types, the ids its item references name).
import assert from 'node:assert/strict';
import { createOpenAI } from '@ai-sdk/openai';
import { isStepCount, jsonSchema, streamText, tool } from 'ai';

const [baseURL, scenario] = process.argv.slice(2);
assert.ok(
  baseURL && ['tool', 'history', 'previous'].includes(scenario),
  'usage: node ai-responses.mjs BASE_URL tool|history|previous',
);
const sent = [];
async function recording(url, init) {
  const body = typeof init?.body === 'string' ? JSON.parse(init.body) : {};
  sent.push({
    path: new URL(url).pathname,
    previousResponseId: body.previous_response_id ?? null,
    inputs: (body.input ?? []).map(item => item.type ?? `message:${item.role}`),
    references: (body.input ?? []).filter(i => i.type === 'item_reference').map(i => i.id),
  });
  return fetch(url, init);
}
const openai = createOpenAI({ baseURL, apiKey: 'sk-test', fetch: recording });
const model = openai('fake-model');
const tools = {
  getWeather: tool({
    description: 'The weather in a city',
    inputSchema: jsonSchema({
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
    }),
    execute: async ({ city }) => ({ city, weather: 'sunny' }),
  }),
};

async function turn(messages, previousResponseId) {
  const result = streamText({
    model,
    instructions: 'You answer in one sentence.', // AI SDK 7's system prompt
    messages,
    tools,
    stopWhen: isStepCount(3),
    ...(previousResponseId && { providerOptions: { openai: { previousResponseId } } }),
  });
  let text = '';
  for await (const delta of result.textStream) text += delta;
  const steps = await result.steps;
  return {
    text,
    messages: await result.responseMessages, // every step's (AI SDK 7; `response` has the last)
    chatIds: steps.map(step => step.response.headers?.['x-chat-id']),
    responseIds: steps.map(step => step.providerMetadata?.openai?.responseId),
    itemIds: steps.map(step =>
      step.content
        .filter(part => part.type === 'text' || part.type === 'tool-call')
        .map(part => part.providerMetadata?.openai?.itemId),
    ),
    toolCalls: steps.flatMap(step =>
      step.toolCalls.map(call => ({ name: call.toolName, input: call.input })),
    ),
    toolResults: steps.flatMap(step => step.toolResults.map(r => r.output)),
  };
}

const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
const turns = [await turn(messages)];
const [first] = turns;
if (scenario === 'history') {
  messages.push(...first.messages, { role: 'user', content: 'Thanks! Anything else?' });
  turns.push(await turn(messages));
} else if (scenario === 'previous') {
  const previous = first.responseIds[first.responseIds.length - 1];
  turns.push(await turn([{ role: 'user', content: 'And in Rome?' }], previous));
}
for (const done of turns) delete done.messages;
console.log(`RESULT ${JSON.stringify({ provider: model.provider, turns, sent })}`);

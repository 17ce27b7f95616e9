// The `ai` package's streamText with the OpenAI provider's chat model pointed at chatproxy's /v1
// (`createOpenAI({ baseURL }).chat(...)`) and a tool it runs itself: the model calls the tool,
// the SDK sends its result back, the model answers; then a second turn with the whole history.
// Usage: node ai-stream-text.mjs http://127.0.0.1:PORT/v1
//
// The proxy's upstream is scripted by the caller (tests/test_node_clients.py): a call of
// getWeather, the answer after its result, the answer to the second turn. The last line printed
// is `RESULT {json}`: each turn's text, the tool calls and results, and the X-Chat-Id of each
// step.
import assert from 'node:assert/strict';
import { createOpenAI } from '@ai-sdk/openai';
import { isStepCount, jsonSchema, streamText, tool } from 'ai';

const [baseURL] = process.argv.slice(2);
assert.ok(baseURL, 'usage: node ai-stream-text.mjs BASE_URL');
const provider = createOpenAI({ baseURL, apiKey: 'sk-test' });
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

async function turn(messages) {
  const result = streamText({
    model: provider.chat('fake-model'),
    instructions: 'You answer in one sentence.', // AI SDK 7's system prompt
    messages,
    tools,
    stopWhen: isStepCount(3),
  });
  let text = '';
  for await (const delta of result.textStream) text += delta;
  const steps = await result.steps;
  return {
    text,
    messages: await result.responseMessages, // every step's (AI SDK 7; `response` has the last)
    chatIds: steps.map(step => step.response.headers?.['x-chat-id']),
    toolCalls: steps.flatMap(step =>
      step.toolCalls.map(call => ({ name: call.toolName, input: call.input })),
    ),
    toolResults: steps.flatMap(step => step.toolResults.map(r => r.output)),
  };
}

const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
const first = await turn(messages);
messages.push(...first.messages, { role: 'user', content: 'Thanks! Anything else?' });
const second = await turn(messages);
delete first.messages;
delete second.messages;
console.log(`RESULT ${JSON.stringify({ first, second })}`);

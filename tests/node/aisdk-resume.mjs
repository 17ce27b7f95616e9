// A page load with the Vercel AI SDK's own chat class: the stored messages
// (useChat({ messages })), then the chat's running answer (useChat({ resume: true })).
// Usage: node aisdk-resume.mjs BASE CHAT_ID
// AI_PACKAGE names the package to use: `ai` (AI SDK 7, the default) or `ai6` (AI SDK 6).
//
// The last line printed is `RESULT {json}`: `resumed` (false for 204), the messages the chat
// holds afterwards, the type of every part the resumed stream carried, the error the chat
// reported (useChat's `error`) if any, and the tool calls onToolCall was given.
import { ArrayState } from './array-state.mjs';

const { AbstractChat, DefaultChatTransport } = await import(process.env.AI_PACKAGE ?? 'ai');

const [base, chatId] = process.argv.slice(2);
if (!base || !chatId) throw new Error('usage: node aisdk-resume.mjs BASE CHAT_ID');
const api = `${base}/api/chat`;
const result = { resumed: false, types: [], error: null, toolCalls: [] };

// The transport as useChat's, recording the parts of the resumed stream.
let recorded = Promise.resolve();
class RecordingTransport extends DefaultChatTransport {
  async reconnectToStream(options) {
    const stream = await super.reconnectToStream(options);
    if (stream == null) return null;
    result.resumed = true;
    const [forChat, forRecord] = stream.tee();
    recorded = (async () => {
      for await (const chunk of forRecord) result.types.push(chunk.type);
    })();
    return forChat;
  }
}

const response = await fetch(`${api}/${chatId}/messages`);
const stored = response.status === 200 ? await response.json() : [];
const chat = new AbstractChat({
  id: chatId,
  state: new ArrayState(stored),
  transport: new RecordingTransport({ api }),
  onError: error => {
    result.error = String(error.message ?? error);
  },
  onToolCall: ({ toolCall }) => {
    result.toolCalls.push(toolCall.toolCallId);
  },
});
await chat.resumeStream();
await recorded;
result.messages = chat.messages.map(message => ({
  id: message.id,
  role: message.role,
  parts: message.parts
    .filter(part => part.type !== 'step-start')
    .map(part =>
      part.type === 'text'
        ? { type: 'text', text: part.text }
        : part.type.startsWith('tool-')
          ? { type: part.type, state: part.state, input: part.input, output: part.output }
          : { type: part.type },
    ),
}));
console.log(`RESULT ${JSON.stringify(result)}`);

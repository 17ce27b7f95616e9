// Resume a chat's answer with the Vercel AI SDK's own transport and stream reader, as
// useChat({ resume: true }) does on a page load. Usage: node aisdk-resume.mjs BASE CHAT_ID
// AI_PACKAGE names the package to use: `ai` (AI SDK 7, the default) or `ai6` (AI SDK 6).
//
// The last line printed is `RESULT {json}`: `resumed` (false for 204), the message read (id,
// text), every part's type, and the error the stream reported (useChat's `error`), if any.
const { DefaultChatTransport, readUIMessageStream } = await import(
  process.env.AI_PACKAGE ?? 'ai'
);

const [base, chatId] = process.argv.slice(2);
if (!base || !chatId) throw new Error('usage: node aisdk-resume.mjs BASE CHAT_ID');

const transport = new DefaultChatTransport({ api: `${base}/api/chat` });
const stream = await transport.reconnectToStream({ chatId });
const result = { resumed: stream != null, types: [], error: null };
if (stream != null) {
  const [forReader, forTypes] = stream.tee();
  const types = (async () => {
    for await (const chunk of forTypes) result.types.push(chunk.type);
  })();
  const onError = error => {
    result.error = String(error.message ?? error);
  };
  for await (const message of readUIMessageStream({ stream: forReader, onError })) {
    result.id = message.id;
    result.text = message.parts
      .filter(part => part.type === 'text')
      .map(part => part.text)
      .join('');
  }
  await types;
}
console.log(`RESULT ${JSON.stringify(result)}`);

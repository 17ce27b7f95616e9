// The chat state the AI SDK's framework bindings keep, over a plain array: what a test's
// AbstractChat (the class useChat wraps) needs, with no framework. Shared by the e2e scripts.
export class ArrayState {
  constructor(messages = []) {
    this.messages = messages;
    this.status = 'ready';
    this.error = undefined;
  }
  pushMessage = message => {
    this.messages = [...this.messages, message];
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = this.messages.with(index, message);
  };
  snapshot = value => structuredClone(value);
}

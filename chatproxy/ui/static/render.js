// A stored message as the page shows it. Every string from a message reaches the DOM as text
// (directly, or through the Markdown renderer, which builds nodes the same way).

import { el } from "./dom.js";
import { codeBlock, renderMarkdown } from "./markdown.js";

const ROLES = {
  user: "User",
  assistant: "Assistant",
  system: "System",
  developer: "Developer",
  tool: "Tool",
  function: "Tool",
};

const STATUSES = {
  in_progress: ["generating", "The answer is being generated"],
  failed: ["failed", "The upstream failed: what was received is kept"],
  interrupted: ["interrupted", "The proxy stopped while answering: the last checkpoint is kept"],
  incomplete: ["incomplete", "Stopped at the proxy's maximum duration"],
  cancelled: ["cancelled", "The client left and the answer was cancelled"],
};

/** A status badge for a message that is not simply `completed` (else null). */
export function statusBadge(status) {
  const known = STATUSES[status];
  return known ? el("span", { class: `badge badge-${status}`, title: known[1] }, known[0]) : null;
}

/** The text of a message's `content` (a string, or a list of parts). */
export function textOf(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .filter((part) => typeof part?.text === "string")
    .map((part) => part.text)
    .join("\n\n");
}

function images(content) {
  if (!Array.isArray(content)) return [];
  return content
    .filter((part) => part?.type === "image_url")
    .map((part) => {
      const url = String(part.image_url?.url ?? "");
      // An inline image is shown (the page's policy allows data: images only); a remote one is
      // named, never loaded.
      return /^data:image\/(png|jpeg|gif|webp);/.test(url)
        ? el("img", { class: "image", src: url, alt: "image" })
        : el("div", { class: "image-ref" }, `🖼 ${url.slice(0, 200)}`);
    });
}

function pretty(json) {
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return String(json ?? "");
  }
}

function toolCall(call) {
  const fn = call?.function ?? {};
  return el(
    "div",
    { class: "tool-call" },
    el(
      "div",
      { class: "tool-call-head" },
      "Tool call ",
      el("code", { class: "tool-name" }, String(fn.name ?? "")),
      call?.id ? el("span", { class: "muted" }, ` ${call.id}`) : null,
    ),
    codeBlock(pretty(fn.arguments), "json"),
  );
}

/** The body of a message: reasoning (collapsed), content, refusal, tool calls, error. */
export function messageBody(m) {
  const text = textOf(m.content);
  const nodes = [];
  const reasoning = m.reasoning_content ?? m.reasoning;
  if (typeof reasoning === "string" && reasoning) {
    nodes.push(
      el(
        "details",
        { class: "reasoning" },
        el("summary", {}, "Reasoning"),
        el("div", { class: "md" }, renderMarkdown(reasoning)),
      ),
    );
  }
  if (m.role === "assistant") {
    if (text) nodes.push(el("div", { class: "content md" }, renderMarkdown(text)));
  } else if (m.role === "tool" || m.role === "function") {
    nodes.push(codeBlock(pretty(text), "output"));
  } else if (text) {
    nodes.push(el("div", { class: "content plain" }, text));
  }
  nodes.push(...images(m.content));
  if (typeof m.refusal === "string" && m.refusal) {
    nodes.push(el("div", { class: "refusal" }, el("strong", {}, "Refused: "), m.refusal));
  }
  if (Array.isArray(m.tool_calls)) nodes.push(...m.tool_calls.map(toolCall));
  if (m.error) {
    nodes.push(el("div", { class: "error-text" }, String(m.error.message ?? m.error)));
  }
  if (!nodes.length && m.status === "in_progress") {
    nodes.push(el("div", { class: "muted waiting" }, "…"));
  }
  return nodes;
}

/**
 * A message as an article; `position`/`count` place it among its siblings, and `onSwitch(step)`
 * moves to the previous (-1) or next (+1) of them.
 */
export function messageView(m, { position = 1, count = 1, onSwitch = null } = {}) {
  const role = ROLES[m.role] ? m.role : "other";
  const header = el(
    "header",
    {},
    el("span", { class: "role" }, ROLES[m.role] ?? String(m.role ?? "")),
    m.role === "tool" && m.tool_call_id
      ? el("code", { class: "muted" }, String(m.tool_call_id))
      : null,
    statusBadge(m.status),
    count > 1 ? branchNav(position, count, onSwitch) : null,
  );
  return el(
    "article",
    { class: `msg msg-${role}`, dataset: { id: m.id, status: m.status } },
    header,
    el("div", { class: "body" }, messageBody(m)),
  );
}

function branchNav(position, count, onSwitch) {
  const button = (step, label, text, disabled) =>
    el(
      "button",
      { type: "button", class: "branch-step", "aria-label": label, disabled, onclick: () => onSwitch(step) },
      text,
    );
  return el(
    "nav",
    { class: "branches", "aria-label": "Branches" },
    button(-1, "Previous branch", "‹", position <= 1),
    el("span", { class: "branch-position" }, `${position} / ${count}`),
    button(1, "Next branch", "›", position >= count),
  );
}

/** Add one streamed chat-completion chunk to `message` (content, reasoning, calls...). */
export function accumulate(message, chunk) {
  const delta = chunk?.choices?.[0]?.delta;
  if (!delta) return;
  const add = (field, piece) => {
    if (typeof piece === "string" && piece) message[field] = (message[field] ?? "") + piece;
  };
  add("content", delta.content);
  add("reasoning_content", delta.reasoning_content || delta.reasoning);
  add("refusal", delta.refusal);
  for (const call of Array.isArray(delta.tool_calls) ? delta.tool_calls : []) {
    message.tool_calls ??= [];
    const slot = (message.tool_calls[call.index ?? 0] ??= { id: "", function: {} });
    if (call.id) slot.id = call.id;
    for (const field of ["name", "arguments"]) {
      const piece = call.function?.[field];
      if (typeof piece === "string") slot.function[field] = (slot.function[field] ?? "") + piece;
    }
  }
}

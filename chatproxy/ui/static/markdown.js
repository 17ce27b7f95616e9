// A small Markdown renderer that builds DOM nodes. Message text only ever becomes text nodes,
// so markup in a message (<script>, <img onerror>, ...) shows as the characters it is made of.
// Links are kept only for http(s) and mailto URLs. Covers what models write: paragraphs,
// headings, fenced code, inline code, emphasis, links, lists, quotes, tables, rules.

import { el } from "./dom.js";

const MAX_DEPTH = 16; // nesting (quotes, lists, emphasis) deeper than this stays plain text
const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.+?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:\s+(.*))?$/;
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const PUNCTUATION = /[!-/:-@[-`{-~]/;
const AUTOLINK = /<((?:https?:\/\/|mailto:)[^\s<>]+)>/y;
const BARE_URL = /https?:\/\/[^\s<>]+/y;

/** `text` as Markdown: a DocumentFragment of safely built nodes. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  fragment.append(...blocks(String(text ?? "").split(/\r\n?|\n/), 0));
  return fragment;
}

/** A code block with its language and a copy button. */
export function codeBlock(code, language = "") {
  const copy = el("button", { type: "button", class: "copy", "aria-label": "Copy code" }, "Copy");
  copy.addEventListener("click", async () => {
    await navigator.clipboard?.writeText(code);
    copy.textContent = "Copied";
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  return el(
    "div",
    { class: "code" },
    el("div", { class: "code-head" }, el("span", {}, language || "text"), copy),
    el("pre", {}, el("code", { class: language ? `language-${language}` : null }, code)),
  );
}

/** A URL that is safe to link to (http, https, mailto), normalised; otherwise null. */
export function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return ["http:", "https:", "mailto:"].includes(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

// -- blocks -----------------------------------------------------------------------------------

function blocks(lines, depth) {
  if (depth > MAX_DEPTH) return [el("p", {}, lines.join("\n"))];
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      const body = [];
      for (i++; i < lines.length && !closesFence(lines[i], m[1]); i++) body.push(lines[i]);
      i++; // past the closing fence (an unclosed one, while an answer streams, runs to the end)
      out.push(codeBlock(body.join("\n"), m[2]));
    } else if ((m = HEADING.exec(line))) {
      out.push(el(`h${Math.min(6, m[1].length + 2)}`, {}, inline(m[2], depth)));
      i++;
    } else if (RULE.test(line)) {
      out.push(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) body.push(m[1]);
      out.push(el("blockquote", {}, blocks(body, depth + 1)));
    } else if (ITEM.test(line)) {
      i = list(lines, i, out, depth);
    } else if (tableStarts(lines, i)) {
      i = table(lines, i, out, depth);
    } else {
      const para = [line.trim()];
      for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines, i); i++) {
        para.push(lines[i].trim());
      }
      out.push(el("p", {}, para.map((text, k) => [k ? el("br") : null, inline(text, depth)])));
    }
  }
  return out;
}

function closesFence(line, fence) {
  const trimmed = line.trim();
  return trimmed.startsWith(fence) && [...trimmed].every((c) => c === fence[0]);
}

function startsBlock(lines, i) {
  const line = lines[i];
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    QUOTE.test(line) ||
    ITEM.test(line) ||
    tableStarts(lines, i)
  );
}

const indentOf = (line) => line.length - line.trimStart().length;

function list(lines, start, out, depth) {
  const first = ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul");
  const number = parseInt(first[2], 10);
  if (ordered && number !== 1) node.setAttribute("start", String(number));
  let item = null;
  let width = 0; // where an item's text starts: its continuation lines are cut there
  let i = start;
  for (; i < lines.length; i++) {
    const line = lines[i];
    const m = ITEM.exec(line);
    if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) {
      if (item) node.append(listItem(item, depth));
      item = [m[3] ?? ""];
      width = indent + m[2].length + 1;
    } else if (!line.trim()) {
      const next = lines[i + 1];
      if (next === undefined || !(indentOf(next) > indent || sameList(next, indent, ordered))) {
        break;
      }
      item.push("");
    } else if (indentOf(line) > indent) {
      item.push(line.slice(Math.min(indentOf(line), width)));
    } else if (!startsBlock(lines, i) && item.at(-1) !== "") {
      item.push(line.trim()); // a lazy continuation of the item's paragraph
    } else {
      break;
    }
  }
  if (item) node.append(listItem(item, depth));
  out.push(node);
  return i;
}

function sameList(line, indent, ordered) {
  const m = ITEM.exec(line);
  return m !== null && m[1].length === indent && /\d/.test(m[2]) === ordered;
}

function listItem(lines, depth) {
  const content = blocks(lines, depth + 1);
  // A tight item ("- text") holds its text directly, not in a paragraph.
  if (content[0]?.tagName === "P" && !content.slice(1).some((n) => n.tagName === "P")) {
    return el("li", {}, [...content[0].childNodes], content.slice(1));
  }
  return el("li", {}, content);
}

function tableStarts(lines, i) {
  const next = lines[i + 1];
  if (!lines[i].includes("|") || next === undefined || !TABLE_RULE.test(next)) return false;
  return next.includes("-") && cells(lines[i]).length === cells(next).length;
}

function cells(line) {
  let text = line.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  return text.split(/(?<!\\)\|/).map((cell) => cell.trim().replaceAll("\\|", "|"));
}

function table(lines, start, out, depth) {
  const align = cells(lines[start + 1]).map((rule) => {
    if (rule.startsWith(":") && rule.endsWith(":")) return "center";
    return rule.endsWith(":") ? "right" : rule.startsWith(":") ? "left" : null;
  });
  const row = (line, tag) =>
    el(
      "tr",
      {},
      cells(line).map((cell, k) =>
        el(tag, { class: align[k] ? `align-${align[k]}` : null }, inline(cell, depth)),
      ),
    );
  const body = el("tbody");
  let i = start + 2;
  for (; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) {
    body.append(row(lines[i], "td"));
  }
  const head = el("thead", {}, row(lines[start], "th"));
  out.push(el("div", { class: "table" }, el("table", {}, head, body)));
  return i;
}

// -- inline -----------------------------------------------------------------------------------

const EMPHASIS = [
  ["**", "strong"],
  ["__", "strong"],
  ["~~", "del"],
  ["*", "em"],
  ["_", "em"],
];

/** Inline Markdown of one line: text (as strings, appended as text nodes) and elements. */
function inline(text, depth) {
  const out = [];
  let plain = "";
  const push = (...nodes) => {
    if (plain) out.push(plain);
    plain = "";
    out.push(...nodes);
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const span = c === "`" ? codeSpan(text, i) : depth < MAX_DEPTH ? markup(text, i, depth) : null;
    if (span) {
      push(span.node);
      i = span.end;
    } else if (c === "\\" && PUNCTUATION.test(text[i + 1] ?? "")) {
      plain += text[i + 1];
      i += 2;
    } else if (c === "`") {
      const run = /`+/y;
      run.lastIndex = i;
      const ticks = run.exec(text)[0];
      plain += ticks; // an unclosed run is text, all of it (not a code span opening later)
      i += ticks.length;
    } else {
      plain += c;
      i++;
    }
  }
  if (plain) out.push(plain);
  return out;
}

function codeSpan(text, start) {
  const run = /`+/y;
  run.lastIndex = start;
  const ticks = run.exec(text)[0];
  for (let j = text.indexOf(ticks, start + ticks.length); j >= 0; j = text.indexOf(ticks, j + 1)) {
    if (text[j + ticks.length] !== "`" && text[j - 1] !== "`") {
      let code = text.slice(start + ticks.length, j);
      if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
      return { node: el("code", {}, code), end: j + ticks.length };
    }
  }
  return null;
}

function markup(text, i, depth) {
  const c = text[i];
  if (c === "[" || (c === "!" && text[i + 1] === "[")) return link(text, i, depth);
  if (c === "<") return autolink(text, i);
  if (c === "h" && !/\w/.test(text[i - 1] ?? "")) return bareUrl(text, i);
  if (c === "*" || c === "_" || c === "~") return emphasis(text, i, depth);
  return null;
}

function anchor(href, children) {
  return el("a", { href, target: "_blank", rel: "noopener noreferrer nofollow" }, children);
}

/** `[label](url)` and `![alt](url)` (an image becomes a link to it: none is loaded). */
function link(text, start, depth) {
  const image = text[start] === "!";
  const open = image ? start + 1 : start;
  const close = matching(text, open, "[", "]");
  if (close < 0 || text[close + 1] !== "(") return null;
  const end = matching(text, close + 1, "(", ")");
  if (end < 0) return null;
  const label = text.slice(open + 1, close);
  const target = text.slice(close + 2, end).trim().split(/\s+/)[0] ?? "";
  const href = safeUrl(target.replace(/^<(.*)>$/, "$1"));
  const shown = image ? [`🖼 ${label || target}`] : inline(label, depth + 1);
  const node = href ? anchor(href, shown) : el("span", {}, shown);
  return { node, end: end + 1 };
}

function matching(text, start, open, close) {
  let level = 0;
  for (let i = start; i < text.length; i++) {
    if (text[i] === "\\") i++;
    else if (text[i] === open) level++;
    else if (text[i] === close && --level === 0) return i;
  }
  return -1;
}

function autolink(text, start) {
  AUTOLINK.lastIndex = start;
  const m = AUTOLINK.exec(text);
  const href = m && safeUrl(m[1]);
  return href ? { node: anchor(href, [m[1]]), end: start + m[0].length } : null;
}

function bareUrl(text, start) {
  BARE_URL.lastIndex = start;
  const m = BARE_URL.exec(text);
  if (!m) return null;
  const url = m[0].replace(/[.,;:!?'")\]]+$/, "");
  const href = safeUrl(url);
  return href ? { node: anchor(href, [url]), end: start + url.length } : null;
}

function emphasis(text, start, depth) {
  const found = EMPHASIS.find(([mark]) => text.startsWith(mark, start));
  if (!found) return null;
  const [mark, tag] = found;
  const from = start + mark.length;
  const word = /[\p{L}\p{N}]/u;
  if (!text[from] || /\s/.test(text[from])) return null;
  if (mark[0] === "_" && word.test(text[start - 1] ?? "")) return null; // snake_case
  for (let j = text.indexOf(mark, from + 1); j >= 0; j = text.indexOf(mark, j + 1)) {
    if (/\s/.test(text[j - 1])) continue;
    if (mark.length === 1 && (text[j + 1] === mark || text[j - 1] === mark)) continue;
    if (mark[0] === "_" && word.test(text[j + mark.length] ?? "")) continue;
    return { node: el(tag, {}, inline(text.slice(from, j), depth + 1)), end: j + mark.length };
  }
  return null;
}

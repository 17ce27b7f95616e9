// Building DOM nodes. Text only ever goes in as text nodes: nothing here parses HTML.

/**
 * A new element: `props` are attributes (`class`, `dataset`, and `on<event>` for listeners,
 * which only code passes, never data); `children` are nodes or strings (as text).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  return append(node, children);
}

/** Append nodes and strings (as text) to `node`, skipping null, undefined and false. */
export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replace every child of `node`. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** `$("#id")`: the one element the page cannot work without. */
export function $(selector) {
  const node = document.querySelector(selector);
  if (node === null) throw new Error(`missing element ${selector}`);
  return node;
}

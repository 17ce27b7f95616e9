// The history browser: sign in, list and search chats, read one (every branch), rename, share,
// export, delete, and follow an answer that is still being generated.

import { chatPath, events, json, request, session } from "./api.js";
import { $, el, replace } from "./dom.js";
import { accumulate, messageBody, messageView } from "./render.js";
import { Tree } from "./tree.js";

const PAGE_SIZE = 20;
const CHAT_ID = /^[A-Za-z0-9_-]{1,128}$/;

const list = { q: "", after: null, hasMore: false, loading: false, generation: 0 };
let current = null; // {chat, tree, path} of the open chat
let opening = 0; // the latest openChat call: an older one that answers late is dropped
let live = null; // the AbortController of the followed generation

// -- small helpers ----------------------------------------------------------------------------

const titleOf = (chat) => chat.title || "Untitled chat";

function when(seconds) {
  const date = new Date(seconds * 1000);
  const today = date.toDateString() === new Date().toDateString();
  return today
    ? date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

let toastTimer = null;
function toast(message, kind = "info") {
  const node = $("#toast");
  node.textContent = message;
  node.className = `toast toast-${kind}`;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (node.hidden = true), 5000);
}

/** Report an API failure; a key that stopped working sends the user back to sign in. */
function failed(error) {
  if (error.name === "AbortError") return;
  if (error.status === 401) {
    session.signOut();
    showSignIn("Your key was not accepted. Sign in again.");
  } else {
    toast(error.message, "error");
  }
}

function show(view) {
  for (const id of ["#loading", "#signin", "#app"]) $(id).hidden = id !== view;
}

function showSignIn(message = null) {
  show("#signin");
  $("#signin-error").hidden = !message;
  $("#signin-error").textContent = message ?? "";
  $("#key").focus();
}

// -- the list ---------------------------------------------------------------------------------

function chatItem(chat) {
  return el(
    "li",
    {},
    el(
      "button",
      {
        type: "button",
        class: "chat-item",
        dataset: { id: chat.id },
        "aria-current": current?.chat.id === chat.id ? "true" : null,
        onclick: () => openChat(chat.id),
      },
      el("span", { class: "chat-item-title" }, titleOf(chat)),
      el(
        "span",
        { class: "chat-item-meta" },
        chat.visibility === "public" ? el("span", { class: "pill" }, "public") : null,
        `${when(chat.updated_at)} · ${chat.message_count} messages`,
      ),
    ),
  );
}

const listItem = (id) => $("#chat-list").querySelector(`[data-id="${CSS.escape(id)}"]`);

function sentinelVisible() {
  const wrap = $("#chat-list-wrap").getBoundingClientRect();
  // A hidden list (before sign-in completes) has no size: the observer takes over once shown.
  return wrap.height > 0 && $("#list-end").getBoundingClientRect().top <= wrap.bottom + 200;
}

/** The next page of chats, and the one after while the end of the list is in view. */
async function loadMore() {
  if (list.loading || !list.hasMore) return;
  const generation = list.generation;
  list.loading = true;
  $("#list-end").textContent = "Loading…";
  try {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (list.q) query.set("q", list.q);
    if (list.after) query.set("after", list.after);
    const page = await json(`/conversations?${query}`);
    if (generation !== list.generation) return;
    $("#chat-list").append(...page.data.map(chatItem));
    list.after = page.last_id ?? list.after;
    list.hasMore = page.has_more;
  } finally {
    if (generation === list.generation) list.loading = false;
  }
  const count = $("#chat-list").childElementCount;
  const none = list.q ? "No chat matches." : "No chats yet.";
  $("#list-end").textContent = list.hasMore ? "" : count ? "" : none;
  if (list.hasMore && sentinelVisible()) await loadMore();
}

/** Start the list over (a new search, a reload); throws what the first page throws. */
async function resetList(q = list.q) {
  Object.assign(list, { q, after: null, hasMore: true, loading: false });
  list.generation++;
  $("#chat-list").replaceChildren();
  await loadMore();
}

function updateListItem(chat) {
  listItem(chat.id)?.parentElement.replaceWith(chatItem(chat));
}

function removeListItem(id) {
  const item = listItem(id)?.parentElement;
  if (!item) return;
  // The cursor names the last chat loaded: if that one goes, the one before it takes its place.
  if (list.after === id) list.after = item.previousElementSibling?.firstChild.dataset.id ?? null;
  item.remove();
}

// -- one chat ---------------------------------------------------------------------------------

/** Show chat `id`; `followLive`: attach to its generation when one is in progress. */
async function openChat(id, { followLive = true } = {}) {
  stopFollowing();
  const token = ++opening;
  let chat;
  let messages;
  try {
    [chat, messages] = await Promise.all([
      json(chatPath(id)),
      json(`${chatPath(id)}/messages?all=true`),
    ]);
  } catch (error) {
    if (token !== opening) return;
    if (error.status === 404) {
      removeListItem(id);
      closeChat();
    }
    failed(error);
    return;
  }
  if (token !== opening) return;
  const tree = new Tree(messages.data, messages.head_id);
  current = { chat, tree, path: tree.activePath() };
  history.replaceState(null, "", `#${id}`);
  renderChat();
  for (const node of $("#chat-list").querySelectorAll(".chat-item")) {
    node.setAttribute("aria-current", String(node.dataset.id === id));
  }
  if (followLive && messages.data.some((m) => m.status === "in_progress")) follow(id, token);
}

function closeChat() {
  stopFollowing();
  current = null;
  opening++;
  history.replaceState(null, "", location.pathname);
  document.title = "chatproxy · chats";
  $("#chat").hidden = true;
  $("#empty").hidden = false;
}

function renderChat() {
  const { chat, tree, path } = current;
  document.title = `${titleOf(chat)} · chatproxy`;
  $("#empty").hidden = true;
  $("#chat").hidden = false;
  $("#rename-form").hidden = true;
  $("#chat-title").hidden = false;
  replace($("#chat-title"), titleOf(chat));
  replace(
    $("#chat-meta"),
    el("span", { class: `pill pill-${chat.visibility}` }, chat.visibility),
    ` ${chat.message_count} messages · updated ${when(chat.updated_at)} · `,
    el("code", {}, chat.id),
  );
  $("#visibility").textContent = chat.visibility === "public" ? "Make private" : "Make public";
  $("#branch-note").hidden = !tree.headId || path.at(-1) === tree.headId;
  const views = path.map((id) => {
    const siblings = tree.siblings(id);
    return messageView(tree.get(id), {
      position: siblings.indexOf(id) + 1,
      count: siblings.length,
      onSwitch: (step) => switchBranch(id, step),
    });
  });
  replace($("#messages"), views.length ? views : el("p", { class: "muted" }, "No messages."));
}

function switchBranch(id, step) {
  const siblings = current.tree.siblings(id);
  const target = siblings[siblings.indexOf(id) + step];
  if (target === undefined) return;
  current.path = current.tree.branchThrough(target);
  renderChat();
}

// -- a generation in progress -----------------------------------------------------------------

function stopFollowing() {
  live?.abort();
  live = null;
}

/** Show the chat's running generation live (the resume endpoint replays it from the start),
 *  then reload the chat as stored. */
async function follow(id, token) {
  const controller = new AbortController();
  live = controller;
  let streamed = false;
  try {
    const response = await request(`${chatPath(id)}/stream`, { signal: controller.signal });
    streamed = response.status === 200;
    if (streamed) {
      const message = { id: response.headers.get("X-Message-Id"), role: "assistant" };
      const selector = `.msg[data-id="${CSS.escape(message.id)}"] .body`;
      let frame = 0;
      for await (const event of events(response)) {
        if (event.data === "[DONE]") break;
        let chunk;
        try {
          chunk = JSON.parse(event.data);
        } catch {
          continue;
        }
        if (chunk.error) break;
        accumulate(message, chunk);
        frame ||= requestAnimationFrame(() => {
          frame = 0;
          // Looked up each time: the chat may have been drawn again (renamed, another branch).
          const body = $("#messages").querySelector(selector);
          if (body) replace(body, messageBody({ ...message, status: "in_progress" }));
        });
      }
    }
  } catch (error) {
    failed(error);
    return;
  }
  if (live !== controller || token !== opening) return;
  live = null;
  // The answer is stored a moment after its stream ends: give the store that moment. Nothing
  // to follow (204: it runs on an instance this one cannot see): show what is stored, once.
  await new Promise((resolve) => setTimeout(resolve, 200));
  if (token === opening) await openChat(id, { followLive: streamed });
}

// -- actions ----------------------------------------------------------------------------------

async function update(changes) {
  const chat = await json(chatPath(current.chat.id), { method: "POST", body: changes });
  current.chat = chat;
  renderChat();
  updateListItem(chat);
  return chat;
}

function startRename() {
  $("#rename-input").value = current.chat.title ?? "";
  $("#chat-title").hidden = true;
  $("#rename-form").hidden = false;
  $("#rename-input").select();
}

async function rename(event) {
  event.preventDefault();
  const title = $("#rename-input").value.trim();
  try {
    await update({ title: title || null });
    toast("Renamed.");
  } catch (error) {
    failed(error);
  }
}

async function toggleVisibility() {
  const visibility = current.chat.visibility === "public" ? "private" : "public";
  try {
    await update({ visibility });
    toast(visibility === "public" ? "Every user can now read this chat." : "Only you can read this chat.");
  } catch (error) {
    failed(error);
  }
}

async function exportChat(format) {
  const id = current.chat.id;
  try {
    const response = await request(`${chatPath(id)}/export?format=${format}`);
    const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") ?? "");
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: named ? named[1] : `${id}.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    failed(error);
  }
}

function confirmDelete() {
  replace($("#confirm-title"), titleOf(current.chat));
  $("#confirm-delete").showModal();
  $("#confirm-cancel").focus();
}

async function deleteChat() {
  $("#confirm-delete").close();
  const id = current.chat.id;
  try {
    await json(chatPath(id), { method: "DELETE" });
  } catch (error) {
    failed(error);
    return;
  }
  removeListItem(id);
  closeChat();
  toast("Chat deleted.");
}

// -- start ------------------------------------------------------------------------------------

async function enter() {
  $("#search").value = "";
  try {
    await resetList("");
  } catch (error) {
    if (error.status === 401) {
      const hadKey = Boolean(session.key);
      session.signOut();
      showSignIn(hadKey ? "That key was not accepted." : null);
    } else {
      show("#app");
      failed(error);
    }
    return;
  }
  show("#app");
  $("#signout").hidden = !session.key;
  const id = decodeURIComponent(location.hash.slice(1));
  if (CHAT_ID.test(id)) await openChat(id);
}

function wire() {
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    session.signIn($("#key").value.trim());
    $("#key").value = "";
    enter();
  });
  $("#signout").addEventListener("click", () => {
    session.signOut();
    closeChat();
    list.generation++; // a page still on its way is dropped
    $("#chat-list").replaceChildren();
    showSignIn();
  });
  $("#refresh").addEventListener("click", () => resetList().catch(failed));
  let searchTimer = null;
  $("#search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => resetList($("#search").value.trim()).catch(failed), 250);
  });
  new IntersectionObserver(
    (entries) => {
      if (entries.some((entry) => entry.isIntersecting)) loadMore().catch(failed);
    },
    { root: $("#chat-list-wrap"), rootMargin: "200px" },
  ).observe($("#list-end"));
  $("#rename").addEventListener("click", startRename);
  $("#rename-form").addEventListener("submit", rename);
  $("#rename-cancel").addEventListener("click", renderChat);
  $("#visibility").addEventListener("click", toggleVisibility);
  $("#export-json").addEventListener("click", () => exportChat("json"));
  $("#export-markdown").addEventListener("click", () => exportChat("markdown"));
  $("#delete").addEventListener("click", confirmDelete);
  $("#confirm-cancel").addEventListener("click", () => $("#confirm-delete").close());
  $("#confirm-yes").addEventListener("click", deleteChat);
  $("#branch-back").addEventListener("click", () => {
    current.path = current.tree.activePath();
    renderChat();
  });
  window.addEventListener("hashchange", () => {
    const id = decodeURIComponent(location.hash.slice(1));
    if (CHAT_ID.test(id) && id !== current?.chat.id) openChat(id);
  });
}

wire();
enter();

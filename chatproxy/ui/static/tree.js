// A chat's messages as a tree (every branch, from `/messages?all=true`), and which path of it
// is shown. Switching branches is a view: the chat's own head does not move.

export class Tree {
  /** `messages` oldest first, each with `id` and `parent_id`; `headId` ends the active branch. */
  constructor(messages, headId) {
    this.byId = new Map();
    this.children = new Map(); // parent id ("" for the roots) -> child ids, oldest first
    messages.forEach((m, order) => {
      this.byId.set(m.id, { ...m, order });
      const key = m.parent_id ?? "";
      if (!this.children.has(key)) this.children.set(key, []);
      this.children.get(key).push(m.id);
    });
    this.headId = this.byId.has(headId) ? headId : null;
  }

  get(id) {
    return this.byId.get(id);
  }

  /** The ids from the root down to `id`. */
  pathTo(id) {
    const path = [];
    const seen = new Set();
    for (let m = this.byId.get(id); m && !seen.has(m.id); m = this.byId.get(m.parent_id)) {
      seen.add(m.id);
      path.push(m.id);
    }
    return path.reverse();
  }

  /** The chat's active branch (to its head), or to its newest message when it has none. */
  activePath() {
    const roots = this.children.get("") ?? [];
    if (this.headId) return this.pathTo(this.headId);
    return roots.length ? this.pathTo(this.newestLeaf(roots)) : [];
  }

  /** The ids of `id` and its siblings (the messages with the same parent), oldest first. */
  siblings(id) {
    return this.children.get(this.byId.get(id)?.parent_id ?? "") ?? [id];
  }

  /** The path through `id` down to the newest message below it. */
  branchThrough(id) {
    return this.pathTo(this.newestLeaf([id]));
  }

  /** The newest message without children below any of `ids`. */
  newestLeaf(ids) {
    let newest = null;
    const stack = [...ids];
    const seen = new Set();
    while (stack.length) {
      const id = stack.pop();
      if (seen.has(id)) continue;
      seen.add(id);
      const below = this.children.get(id) ?? [];
      if (!below.length && (newest === null || this.get(id).order > this.get(newest).order)) {
        newest = id;
      }
      stack.push(...below);
    }
    return newest;
  }
}

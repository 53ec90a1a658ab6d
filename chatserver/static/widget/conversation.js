// One thread as the widget knows it: its items in order, the last event applied (`seq`),
// and whether a run is answering. Events change it the way ChatKit defines them: item
// events upsert by item id (so replaying one is harmless), deltas grow the item in progress.

const DONE = new Set(["completed", "incomplete"]);

export class Conversation {
  constructor(threadId = null) {
    this.threadId = threadId;
    this.title = null;
    this.items = new Map();
    this.order = []; // item ids, oldest first (ids sort by creation time)
    this.seq = 0;
    this.runId = null;
    this.sending = 0; // our requests that start a run here and have not ended yet
    this.hasOlder = false;
    this.olderCursor = null;
  }

  /** A snapshot: the newest items, oldest first, and the seq they reflect. */
  load(items, { seq, hasOlder = false, olderCursor = null }) {
    this.items.clear();
    this.order = [];
    for (const item of items) this.upsert(item);
    this.seq = seq;
    this.hasOlder = hasOlder;
    this.olderCursor = olderCursor;
  }

  /** An older page (oldest first) above what is loaded. */
  prepend(items, { hasOlder, olderCursor }) {
    for (const item of items) {
      if (!this.items.has(item.id)) this.upsert(item);
    }
    this.hasOlder = hasOlder;
    this.olderCursor = olderCursor;
  }

  /** The visible items, oldest first. */
  visible() {
    return this.order.map((id) => this.items.get(id)).filter(isShown);
  }

  lastUserItem() {
    for (let i = this.order.length - 1; i >= 0; i--) {
      const item = this.items.get(this.order[i]);
      if (item.type === "user_message") return item;
    }
    return null;
  }

  /**
   * Apply one event of the thread's log. Returns what changed, for the view:
   * {items: Set of item ids, removed: Set, thread: bool, run: bool}.
   */
  apply(event) {
    const change = { items: new Set(), removed: new Set(), thread: false, run: false };
    switch (event.type) {
      case "thread.created":
      case "thread.updated":
        this.threadId = event.thread.id;
        this.title = event.thread.title ?? null;
        change.thread = true;
        break;
      case "thread.item.added":
      case "thread.item.done":
      case "thread.item.replaced":
        this.upsert(event.item);
        change.items.add(event.item.id);
        break;
      case "thread.item.removed":
        if (this.remove(event.item_id)) change.removed.add(event.item_id);
        break;
      case "thread.item.updated":
        if (this.update(event.item_id, event.update)) change.items.add(event.item_id);
        break;
      case "run.started":
        this.runId = event.run_id;
        change.run = true;
        break;
      case "run.completed":
      case "run.cancelled":
      case "run.failed":
        if (this.runId === event.run_id) this.runId = null;
        change.run = true;
        break;
      default:
        break; // stream_options, progress, notices, errors: the widget shows them itself
    }
    return change;
  }

  upsert(item) {
    if (!this.items.has(item.id)) insertSorted(this.order, item.id);
    // A copy: deltas change it in place, never the event that carried it.
    this.items.set(item.id, structuredClone(item));
  }

  remove(itemId) {
    if (!this.items.delete(itemId)) return false;
    this.order.splice(this.order.indexOf(itemId), 1);
    return true;
  }

  /** Drop everything after an item (a retry answers that item anew). */
  truncateAfter(itemId) {
    const index = this.order.indexOf(itemId);
    if (index === -1) return [];
    const removed = this.order.splice(index + 1);
    for (const id of removed) this.items.delete(id);
    return removed;
  }

  update(itemId, update) {
    const item = this.items.get(itemId);
    // A finished item takes no more deltas: a late replay of its stream must not add text.
    if (!item || item.type !== "assistant_message" || DONE.has(item.status)) return false;
    const content = item.content;
    const index = update.content_index;
    switch (update.type) {
      case "assistant_message.content_part.added":
        content.splice(index, 0, structuredClone(update.content));
        return true;
      case "assistant_message.content_part.text_delta":
        if (!content[index]) return false;
        content[index].text += update.delta;
        return true;
      case "assistant_message.content_part.done":
        content[index] = structuredClone(update.content);
        return true;
      case "assistant_message.content_part.annotation_added":
        if (!content[index]) return false;
        content[index].annotations ??= [];
        content[index].annotations.splice(update.annotation_index, 0, update.annotation);
        return true;
      default:
        return false;
    }
  }
}

function isShown(item) {
  return (
    item.type === "user_message" ||
    item.type === "assistant_message" ||
    item.type === "client_tool_call"
  );
}

export function userText(item) {
  return (item.content ?? [])
    .map((part) => part.text ?? "")
    .filter((text) => text !== "")
    .join(" ");
}

export function assistantText(item) {
  return (item.content ?? []).map((part) => part.text ?? "").join("\n\n");
}

function insertSorted(order, id) {
  let low = 0;
  let high = order.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (order[mid] < id) low = mid + 1;
    else high = mid;
  }
  order.splice(low, 0, id);
}

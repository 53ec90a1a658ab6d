// The messages of the open thread. User text is shown as text; assistant answers as
// sanitised markdown. Rendering reconciles by item id, so a frame re-renders only what
// changed, and the list follows the newest message unless the reader scrolled up.

import { assistantText, userText } from "./conversation.js";
import { h, icon } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

// Within this many pixels of the bottom, the reader is "at the bottom" and new text follows.
const STICKY_PX = 48;

export class MessageList {
  constructor({ onLoadOlder, onRetryPending }) {
    this.onRetryPending = onRetryPending;
    this.rendered = new Map(); // key -> {element, signature}
    this.older = h(
      "button",
      { type: "button", class: "cs-older", hidden: true, onclick: () => onLoadOlder() },
      "Load earlier messages",
    );
    this.log = h("div", { class: "cs-messages", role: "log", "aria-label": "Messages" });
    this.empty = h(
      "div",
      { class: "cs-empty", hidden: true },
      h("p", { class: "cs-empty-title" }, "How can I help?"),
      h("p", { class: "cs-empty-hint" }, "Write a message below to start a conversation."),
    );
    this.loading = h("div", { class: "cs-loading", hidden: true, role: "status" }, "Loading…");
    this.scroller = h(
      "div",
      { class: "cs-scroll", tabindex: "0", "aria-label": "Conversation" },
      this.older,
      this.loading,
      this.empty,
      this.log,
    );
    this.jump = h(
      "button",
      { type: "button", class: "cs-jump", hidden: true, onclick: () => this.scrollToBottom(true) },
      icon("down"),
      h("span", {}, "Latest"),
    );
    this.element = h("div", { class: "cs-thread-view" }, this.scroller, this.jump);
    this.stuck = true;
    this.scroller.addEventListener("scroll", () => {
      this.stuck = this.atBottom();
      if (this.stuck) this.jump.hidden = true;
    });
    // Reaching the top loads the page above; the button stays for keyboards and screen readers.
    this.observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((entry) => entry.isIntersecting) && !this.older.hidden) onLoadOlder();
      },
      { root: this.scroller },
    );
    this.observer.observe(this.older);
  }

  /** Whether "Load earlier messages" is on screen (the observer reports changes only). */
  olderInView() {
    if (this.older.hidden) return false;
    const button = this.older.getBoundingClientRect();
    const view = this.scroller.getBoundingClientRect();
    return button.bottom > view.top && button.top < view.bottom;
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICKY_PX;
  }

  scrollToBottom(smooth = false) {
    this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: smooth ? "smooth" : "instant" });
    this.stuck = true;
    this.jump.hidden = true;
  }

  /** Show `conversation` plus the messages still being sent (`pending`). */
  render(conversation, pending, { loading = false, olderLoading = false } = {}) {
    const stuck = this.stuck;
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    const firstBefore = this.log.firstElementChild;
    const entries = conversation.visible().map((item) => [item.id, item, messageSignature(item)]);
    for (const message of pending) {
      entries.push(["pending:" + message.key, message, `pending:${message.state}`]);
    }
    const keep = new Set(entries.map(([key]) => key));
    for (const [key, { element }] of this.rendered) {
      if (!keep.has(key)) {
        element.remove();
        this.rendered.delete(key);
      }
    }
    let previous = null;
    let grew = false;
    for (const [key, value, signature] of entries) {
      let entry = this.rendered.get(key);
      if (!entry || entry.signature !== signature) {
        const element = key.startsWith("pending:")
          ? this.pendingElement(value)
          : itemElement(value);
        if (entry) entry.element.replaceWith(element);
        entry = { element, signature };
        this.rendered.set(key, entry);
        grew = true;
      }
      const expected = previous ? previous.nextElementSibling : this.log.firstElementChild;
      if (expected !== entry.element) {
        if (previous) previous.after(entry.element);
        else this.log.prepend(entry.element);
      }
      previous = entry.element;
    }
    this.loading.hidden = !loading;
    this.empty.hidden = loading || entries.length > 0 || conversation.threadId !== null;
    this.older.hidden = !conversation.hasOlder;
    this.older.disabled = olderLoading;
    this.older.textContent = olderLoading ? "Loading earlier messages…" : "Load earlier messages";
    if (firstBefore && this.log.firstElementChild !== firstBefore && !stuck) {
      // Older messages went in above: keep what the reader looks at where it was.
      this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    } else if (stuck) {
      this.scrollToBottom();
    } else if (grew) {
      this.jump.hidden = false;
    }
  }

  reset() {
    this.rendered.clear();
    this.log.replaceChildren();
    this.stuck = true;
    this.jump.hidden = true;
  }

  pendingElement(message) {
    const failed = message.state === "failed";
    const element = h(
      "article",
      {
        class: "cs-msg",
        "data-role": "user",
        "data-pending": message.state,
        "aria-label": "You",
      },
      h("div", { class: "cs-bubble" }, message.text),
    );
    const meta = h("div", { class: "cs-meta" });
    if (failed) {
      meta.append(
        h("span", {}, "Not sent. "),
        h(
          "button",
          { type: "button", class: "cs-link-button", onclick: () => this.onRetryPending(message) },
          "Retry",
        ),
      );
    } else {
      meta.append("Sending…");
    }
    element.append(meta);
    return element;
  }
}

function messageSignature(item) {
  switch (item.type) {
    case "user_message":
      return "u:" + userText(item);
    case "assistant_message":
      return `a:${item.status}:${assistantText(item)}`;
    default:
      return `${item.type}:${item.status}:${item.name ?? ""}`;
  }
}

function itemElement(item) {
  if (item.type === "user_message") {
    return h(
      "article",
      { class: "cs-msg", "data-role": "user", "data-item-id": item.id, "aria-label": "You" },
      h("div", { class: "cs-bubble" }, userText(item)),
    );
  }
  if (item.type === "assistant_message") {
    const status = item.status ?? "completed";
    const body = h("div", { class: "cs-markdown" });
    body.append(renderMarkdown(assistantText(item)));
    const element = h(
      "article",
      {
        class: "cs-msg",
        "data-role": "assistant",
        "data-item-id": item.id,
        "data-status": status,
        "aria-label": "Assistant",
        "aria-busy": status === "in_progress" ? "true" : false,
      },
      body,
    );
    if (status === "incomplete") {
      element.append(h("div", { class: "cs-meta" }, "Stopped before the end"));
    }
    return element;
  }
  return h(
    "article",
    { class: "cs-msg", "data-role": "tool", "data-item-id": item.id },
    h("div", { class: "cs-tool" }, `Tool: ${item.name ?? item.type}`),
  );
}

// The list of conversations: open one, start a new one, rename (inline: Enter saves, Escape
// cancels) and delete (asks first, inline). Every control is a real button or input, so the
// keyboard reaches all of it.

import { h, icon } from "./dom.js";

export class ThreadList {
  constructor({ onNew, onOpen, onRename, onDelete, onMore, onClose }) {
    this.handlers = { onOpen, onRename, onDelete };
    this.editing = null;
    this.confirming = null;
    this.list = h("ul", { class: "cs-threads", role: "list" });
    this.more = h(
      "button",
      { type: "button", class: "cs-more-threads", hidden: true, onclick: () => onMore() },
      "Show more",
    );
    this.closeButton = h(
      "button",
      { type: "button", class: "cs-icon-button cs-close-drawer", "aria-label": "Close conversations", onclick: () => onClose() },
      icon("close"),
    );
    this.element = h(
      "nav",
      { class: "cs-sidebar", id: "cs-sidebar", "aria-label": "Conversations" },
      h(
        "div",
        { class: "cs-sidebar-head" },
        h(
          "button",
          { type: "button", class: "cs-new", onclick: () => onNew() },
          icon("plus"),
          h("span", {}, "New chat"),
        ),
        this.closeButton,
      ),
      this.list,
      this.more,
    );
  }

  /** threads: [{id, title}] newest first. */
  render(threads, currentId, hasMore) {
    // Called on every frame of a streaming answer: rebuilding the rows then would lose a
    // title being typed and the keyboard focus.
    const signature = JSON.stringify([threads, currentId, hasMore]);
    if (signature === this.signature) return;
    this.signature = signature;
    this.threads = threads;
    this.currentId = currentId;
    const focused = this.element.getRootNode().activeElement;
    const refocus = focused && this.list.contains(focused) ? focusKey(focused) : null;
    const draft = this.list.querySelector(".cs-thread-title-input")?.value;
    this.list.replaceChildren(...threads.map((thread) => this.row(thread)));
    const input = this.list.querySelector(".cs-thread-title-input");
    if (input && draft !== undefined) input.value = draft;
    this.more.hidden = !hasMore;
    if (refocus) this.list.querySelector(refocus)?.focus();
  }

  row(thread) {
    const title = thread.title || "Untitled conversation";
    const current = thread.id === this.currentId;
    const row = h("li", { class: "cs-thread", "data-thread-id": thread.id });
    if (this.editing === thread.id) {
      const input = h("input", {
        class: "cs-thread-title-input",
        type: "text",
        value: thread.title ?? "",
        maxlength: 500,
        "aria-label": "Conversation title",
      });
      let finished = false;
      const finish = (save) => {
        if (finished) return;
        finished = true;
        this.editing = null;
        const value = input.value.trim();
        if (save && value !== "" && value !== thread.title) this.handlers.onRename(thread.id, value);
        this.rerender(`[data-thread-id="${thread.id}"] .cs-thread-open`);
      };
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter") {
          event.preventDefault();
          finish(true);
        } else if (event.key === "Escape") {
          event.preventDefault();
          event.stopPropagation();
          finish(false);
        }
      });
      input.addEventListener("blur", () => finish(true));
      row.append(input);
      queueMicrotask(() => {
        input.focus();
        input.select();
      });
      return row;
    }
    if (this.confirming === thread.id) {
      row.classList.add("cs-confirming");
      row.append(
        h("span", { class: "cs-confirm-text" }, `Delete “${title}”?`),
        h(
          "button",
          {
            type: "button",
            class: "cs-confirm-delete",
            onclick: () => {
              this.confirming = null;
              this.handlers.onDelete(thread.id);
            },
          },
          "Delete",
        ),
        h(
          "button",
          {
            type: "button",
            class: "cs-confirm-cancel",
            onclick: () => {
              this.confirming = null;
              this.rerender(`[data-thread-id="${thread.id}"] .cs-thread-delete`);
            },
          },
          "Cancel",
        ),
      );
      queueMicrotask(() => row.querySelector(".cs-confirm-cancel")?.focus());
      return row;
    }
    row.append(
      h(
        "button",
        {
          type: "button",
          class: "cs-thread-open",
          "aria-current": current ? "page" : false,
          title,
          onclick: () => this.handlers.onOpen(thread.id),
        },
        title,
      ),
      h(
        "button",
        {
          type: "button",
          class: "cs-icon-button cs-thread-rename",
          "aria-label": `Rename “${title}”`,
          onclick: () => {
            this.editing = thread.id;
            this.confirming = null;
            this.rerender();
          },
        },
        icon("pencil"),
      ),
      h(
        "button",
        {
          type: "button",
          class: "cs-icon-button cs-thread-delete",
          "aria-label": `Delete “${title}”`,
          onclick: () => {
            this.confirming = thread.id;
            this.editing = null;
            this.rerender();
          },
        },
        icon("trash"),
      ),
    );
    return row;
  }

  rerender(focusSelector = null) {
    this.list.replaceChildren(...this.threads.map((thread) => this.row(thread)));
    if (focusSelector) this.list.querySelector(focusSelector)?.focus();
  }
}

function focusKey(element) {
  const row = element.closest("[data-thread-id]");
  if (!row) return null;
  const control = [...element.classList].find((name) => name.startsWith("cs-thread-"));
  return control
    ? `[data-thread-id="${row.dataset.threadId}"] .${control}`
    : `[data-thread-id="${row.dataset.threadId}"]`;
}

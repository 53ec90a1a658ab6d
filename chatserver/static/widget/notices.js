// Notices above the messages: errors (with Retry where trying again can help), and small
// information such as "continued in a new session". One notice per key: a newer one
// replaces it.

import { h, icon } from "./dom.js";

export class Notices {
  constructor() {
    this.element = h("div", { class: "cs-notices", role: "region", "aria-label": "Notices" });
    this.byKey = new Map();
  }

  /**
   * level: info | warning | error. actions: [{label, run}], each run once, then the notice
   * goes. `timeout` (ms) hides an info notice by itself.
   */
  show(key, { level = "info", text, actions = [], timeout = 0 }) {
    this.dismiss(key);
    const notice = h("div", {
      class: "cs-notice",
      "data-level": level,
      "data-key": key,
      role: level === "error" ? "alert" : "status",
    });
    notice.append(h("span", { class: "cs-notice-text" }, text));
    for (const action of actions) {
      notice.append(
        h(
          "button",
          {
            type: "button",
            class: "cs-notice-action",
            onclick: () => {
              this.dismiss(key);
              action.run();
            },
          },
          action.label,
        ),
      );
    }
    const close = h(
      "button",
      { type: "button", class: "cs-notice-close", "aria-label": "Dismiss", onclick: () => this.dismiss(key) },
      icon("close"),
    );
    notice.append(close);
    this.element.append(notice);
    const timer = timeout ? setTimeout(() => this.dismiss(key), timeout) : null;
    this.byKey.set(key, { notice, timer });
  }

  dismiss(key) {
    const entry = this.byKey.get(key);
    if (!entry) return;
    clearTimeout(entry.timer);
    entry.notice.remove();
    this.byKey.delete(key);
  }
}

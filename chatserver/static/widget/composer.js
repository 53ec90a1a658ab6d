// Where the user writes. Enter sends, Shift+Enter starts a new line (and so does Enter while
// an input method is composing). While sending is not allowed the text can still be written,
// the Send button and Enter just wait.

import { h, icon } from "./dom.js";

const MAX_HEIGHT_PX = 200;

export class Composer {
  constructor({ onSend, onStop }) {
    this.onSend = onSend;
    this.canSend = true;
    this.textarea = h("textarea", {
      class: "cs-input",
      rows: 1,
      "aria-label": "Message",
      placeholder: "Message",
      enterkeyhint: "send",
    });
    this.hint = h(
      "p",
      { class: "cs-hint", id: "cs-composer-hint" },
      "Enter to send, Shift+Enter for a new line",
    );
    this.textarea.setAttribute("aria-describedby", "cs-composer-hint");
    this.stopButton = h(
      "button",
      { type: "button", class: "cs-stop", hidden: true, onclick: () => onStop() },
      icon("stop"),
      h("span", {}, "Stop"),
    );
    this.sendButton = h(
      "button",
      { type: "submit", class: "cs-send", "aria-label": "Send" },
      icon("send"),
    );
    this.element = h(
      "form",
      { class: "cs-composer", "aria-label": "Write a message", onsubmit: (e) => this.submit(e) },
      h("div", { class: "cs-composer-box" }, this.textarea, this.stopButton, this.sendButton),
      this.hint,
    );
    this.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        this.submit(event);
      }
    });
    this.textarea.addEventListener("input", () => this.fit());
  }

  submit(event) {
    event.preventDefault();
    const text = this.textarea.value;
    if (!this.canSend || text.trim() === "") return;
    this.textarea.value = "";
    this.fit();
    this.onSend(text);
  }

  /** canSend: Send works; running: a turn answers (Stop shown); stopping: Stop was asked. */
  setState({ canSend, running, stopping }) {
    this.canSend = canSend;
    this.sendButton.disabled = !canSend;
    this.stopButton.hidden = !running;
    this.stopButton.disabled = stopping;
    this.stopButton.lastChild.textContent = stopping ? "Stopping" : "Stop";
    this.element.dataset.state = running ? "running" : canSend ? "ready" : "busy";
  }

  fit() {
    this.textarea.style.height = "auto";
    this.textarea.style.height = Math.min(this.textarea.scrollHeight, MAX_HEIGHT_PX) + "px";
  }

  focus() {
    this.textarea.focus();
  }
}

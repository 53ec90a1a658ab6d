// Who this browser and this tab are to the server. The session id is chosen here and kept
// in localStorage, so every tab of the browser and every reload uses the same session; the
// tab id lives in sessionStorage, one per tab. An ended session is replaced by a new one
// (the conversation, which belongs to the user, carries on in it).

import { randomId } from "./dom.js";

const SESSION_ID = /^ses_[A-Za-z0-9_-]{8,64}$/;

/** localStorage / sessionStorage that degrades to memory where storage is refused. */
export class Store {
  constructor(storage, prefix) {
    this.prefix = prefix;
    this.memory = new Map();
    try {
      this.storage = storage();
      this.storage.getItem(prefix);
    } catch {
      this.storage = null;
    }
  }

  get(name) {
    const key = this.prefix + name;
    try {
      if (this.storage) return this.storage.getItem(key);
    } catch {
      // fall through to memory
    }
    return this.memory.get(key) ?? null;
  }

  set(name, value) {
    const key = this.prefix + name;
    this.memory.set(key, value);
    try {
      if (value === null) this.storage?.removeItem(key);
      else this.storage?.setItem(key, value);
    } catch {
      // memory only: this tab still works
    }
  }
}

export class Session {
  /**
   * `metadata`: what the session should carry (timeout policy, tab strategy), applied with
   * PATCH /sessions/{id} once the session exists. `onRenewed(code)` is called when an ended
   * session was replaced.
   */
  constructor({ local, tab, metadata, onRenewed }) {
    this.local = local;
    this.tab = tab;
    this.metadata = metadata;
    this.onRenewed = onRenewed;
    this.renewing = null;
    this.api = null;
  }

  get id() {
    let id = this.local.get("session");
    if (!id || !SESSION_ID.test(id)) {
      id = newSessionId();
      this.local.set("session", id);
    }
    return id;
  }

  get tabId() {
    let id = this.tab.get("tab");
    if (!id) {
      id = "tab_" + randomId(12);
      this.tab.set("tab", id);
    }
    return id;
  }

  /** Give the session its metadata. Needs the session to exist: call after a request. */
  async configure() {
    if (Object.keys(this.metadata).length === 0) return;
    await this.api.updateSession(this.id, this.metadata);
  }

  /** Replace the session `failedId` (ended on the server) with a new one, once. */
  renew(failedId, code) {
    if (this.id !== failedId) return Promise.resolve(); // another request or tab did it
    if (!this.renewing) {
      this.renewing = (async () => {
        this.local.set("session", newSessionId());
        if (Object.keys(this.metadata).length > 0) {
          // A client-chosen id comes to exist on its first request; then it gets its metadata.
          await this.api.chatkit("threads.list", { limit: 1 }, { renewSession: false });
          await this.configure();
        }
        this.onRenewed(code);
      })().finally(() => {
        this.renewing = null;
      });
    }
    return this.renewing;
  }
}

function newSessionId() {
  return "ses_" + randomId(16);
}

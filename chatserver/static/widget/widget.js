// The chat widget: thread list, messages, composer, wired to the server.
//
// Attaching to a thread: `threads.get_by_id` answers the items and, in `X-Event-Seq`, the
// seq that snapshot reflects; the tab then follows GET /threads/{id}/events?after=<seq>.
// Every event applied moves the thread's cursor (`conversation.seq`), so a reconnect asks
// for exactly what is missing. The answer to our own POST is read too, for speed, but an
// event from it is applied only if it is the very next one (that stream carries only its
// own run's events; a gap there is filled by the follower, in order).

import { Api, ApiError, NetworkError } from "./api.js";
import { Composer } from "./composer.js";
import { Conversation } from "./conversation.js";
import { h, icon, randomId } from "./dom.js";
import { Follower } from "./follower.js";
import { MessageList } from "./message-list.js";
import { Notices } from "./notices.js";
import { Session, Store } from "./session.js";
import { readEvents } from "./sse.js";
import { Tabs } from "./tabs.js";
import { ThreadList } from "./thread-list.js";

const THREAD_PAGE = 30;
const NARROW_PX = 720;

const CONNECTION_TEXT = {
  idle: "Ready",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  superseded: "In another tab",
  error: "Disconnected",
};

export class ChatWidget {
  /**
   * options: server (base URL), policy (timeout policy), timeoutSeconds, tabStrategy,
   * doubleTexting (queue | reject | interrupt), theme (light | dark | auto), pageSize.
   */
  constructor(host, options) {
    this.host = host;
    this.options = options;
    const prefix = `chatserver:${options.server}:`;
    this.local = new Store(() => window.localStorage, prefix);
    const metadata = {};
    if (options.policy) metadata.timeout_policy = options.policy;
    if (options.timeoutSeconds) metadata.timeout_seconds = options.timeoutSeconds;
    if (options.tabStrategy) metadata.tab_strategy = options.tabStrategy;
    this.session = new Session({
      local: this.local,
      tab: new Store(() => window.sessionStorage, prefix),
      metadata,
      onRenewed: (code) => this.sessionRenewed(code),
    });
    this.api = new Api(options.server, this.session);
    this.session.api = this.api;
    this.tabs = new Tabs(prefix + "tabs", (message) => this.fromOtherTab(message));

    this.threads = new Map();
    this.threadOrder = [];
    this.threadsCursor = null;
    this.threadsHasMore = false;
    this.conversation = new Conversation();
    this.pending = [];
    this.stopping = false;
    this.follower = null;
    this.openToken = 0;
    this.loading = false;
    this.olderLoading = false;
    this.connection = "idle";
    this.frame = 0;
    this.build();
  }

  // -- building ----------------------------------------------------------------------------

  build() {
    const root = this.host.shadowRoot ?? this.host.attachShadow({ mode: "open" });
    const stylesheet = h("link", { rel: "stylesheet", href: new URL("./chatserver.css", import.meta.url) });
    this.notices = new Notices();
    this.threadList = new ThreadList({
      onNew: () => this.startNew(),
      onOpen: (id) => {
        this.closeDrawer();
        if (id !== this.conversation.threadId) this.open(id);
      },
      onRename: (id, title) => this.rename(id, title),
      onDelete: (id) => this.remove(id),
      onMore: () => this.loadThreads({ more: true }),
      onClose: () => this.closeDrawer(true),
    });
    this.messages = new MessageList({
      onLoadOlder: () => this.loadOlder(),
      onRetryPending: (message) => this.deliver(message),
    });
    this.composer = new Composer({ onSend: (text) => this.send(text), onStop: () => this.stop() });
    this.menuButton = h(
      "button",
      {
        type: "button",
        class: "cs-icon-button cs-menu",
        "aria-label": "Conversations",
        "aria-controls": "cs-sidebar",
        "aria-expanded": "false",
        onclick: () => this.toggleDrawer(),
      },
      icon("menu"),
    );
    this.title = h("h2", { class: "cs-title" }, "New conversation");
    this.connectionText = h("span", { class: "cs-connection-text" });
    this.connectionBadge = h(
      "span",
      { class: "cs-connection", role: "status", "aria-live": "polite" },
      h("span", { class: "cs-dot", "aria-hidden": "true" }),
      this.connectionText,
    );
    this.scrim = h("div", { class: "cs-scrim", onclick: () => this.closeDrawer() });
    this.root = h(
      "div",
      { class: "cs-root", "data-theme": this.options.theme, "data-layout": "wide" },
      this.threadList.element,
      this.scrim,
      h(
        "section",
        { class: "cs-main", "aria-label": "Chat" },
        h("header", { class: "cs-header" }, this.menuButton, this.title, this.connectionBadge),
        this.notices.element,
        this.messages.element,
        this.composer.element,
      ),
    );
    this.root.style.visibility = "hidden";
    stylesheet.addEventListener("load", () => (this.root.style.visibility = ""));
    stylesheet.addEventListener("error", () => (this.root.style.visibility = ""));
    root.replaceChildren(stylesheet, this.root);
    this.root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.root.dataset.drawer === "open") this.closeDrawer(true);
    });
    this.resizeObserver = new ResizeObserver(([entry]) => {
      const narrow = entry.contentRect.width < NARROW_PX;
      this.root.dataset.layout = narrow ? "narrow" : "wide";
      if (!narrow) this.closeDrawer();
    });
    this.resizeObserver.observe(this.host);
    this.setConnection("connecting");
    this.updateComposer();
  }

  async start() {
    try {
      // The first request alone: it gets the browser its identity cookie, which every
      // later (possibly parallel) request must carry, and creates the session.
      await this.loadThreads();
    } catch (error) {
      this.setConnection("error");
      this.report("start", "Cannot reach the chat server", error, () => this.start());
      return;
    }
    try {
      await this.session.configure();
    } catch (error) {
      this.report("configure", "The session settings were refused", error);
    }
    const saved = this.local.get("thread");
    if (saved) await this.open(saved, { announce: false });
    else this.startNew({ announce: false });
  }

  destroy() {
    this.follower?.stop();
    this.tabs.close();
    this.resizeObserver.disconnect();
    this.messages.observer.disconnect();
  }

  // -- threads -----------------------------------------------------------------------------

  async loadThreads({ more = false } = {}) {
    const params = { limit: THREAD_PAGE, order: "desc" };
    if (more && this.threadsCursor) params.after = this.threadsCursor;
    const { body } = await this.api.chatkit("threads.list", params);
    if (!more) {
      this.threads.clear();
      this.threadOrder = [];
    }
    for (const thread of body.data) this.rememberThread(thread);
    this.threadsCursor = body.after ?? null;
    this.threadsHasMore = body.has_more;
    this.renderThreads();
  }

  rememberThread(thread) {
    const known = this.threads.get(thread.id);
    this.threads.set(thread.id, { id: thread.id, title: thread.title ?? known?.title ?? null });
    if (!known) {
      this.threadOrder.push(thread.id);
      this.threadOrder.sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
    }
  }

  forgetThread(threadId) {
    this.threads.delete(threadId);
    this.threadOrder = this.threadOrder.filter((id) => id !== threadId);
  }

  renderThreads() {
    this.threadList.render(
      this.threadOrder.map((id) => this.threads.get(id)),
      this.conversation.threadId,
      this.threadsHasMore,
    );
    const current = this.conversation;
    const title = current.title ?? this.threads.get(current.threadId)?.title;
    this.title.textContent = title || (current.threadId ? "Untitled conversation" : "New conversation");
  }

  /** Open a thread: its snapshot, then its live events from the seq the snapshot reflects. */
  async open(threadId, { announce = true } = {}) {
    this.leave();
    this.conversation = new Conversation(threadId);
    this.remember(threadId, announce);
    const token = ++this.openToken;
    this.loading = true;
    this.render();
    try {
      const { body: thread, response } = await this.api.chatkit("threads.get_by_id", { thread_id: threadId });
      if (token !== this.openToken) return;
      // Unreadable (an embed whose CORS setup does not expose it): following from 0 is
      // still right, item events being upserts, only slower.
      const seq = Number.parseInt(response.headers.get("X-Event-Seq") ?? "0", 10) || 0;
      let items = thread.items.data;
      let page = { hasOlder: false, olderCursor: null };
      if (thread.items.has_more || items.length > this.options.pageSize) {
        // The snapshot holds the oldest items; show the newest page and page up from it.
        const { body: latest } = await this.api.chatkit("items.list", {
          thread_id: threadId,
          order: "desc",
          limit: this.options.pageSize,
        });
        if (token !== this.openToken) return;
        items = latest.data.slice().reverse();
        page = { hasOlder: latest.has_more, olderCursor: latest.after ?? null };
      }
      this.conversation.load(items, { seq, ...page });
      this.conversation.title = thread.title ?? null;
      this.rememberThread(thread);
      this.loading = false;
      this.render();
      this.follow();
    } catch (error) {
      if (token !== this.openToken) return;
      this.loading = false;
      if (error instanceof ApiError && error.code === "thread_not_found") {
        this.forgetThread(threadId);
        this.startNew();
        // After startNew(), which clears the notices of the thread it leaves.
        this.notices.show("gone", {
          level: "warning",
          text: "That conversation no longer exists.",
          timeout: 8000,
        });
        return;
      }
      this.render();
      this.report("open", "The conversation could not be loaded", error, () => this.open(threadId, { announce: false }));
    }
  }

  startNew({ announce = true } = {}) {
    this.leave();
    this.conversation = new Conversation();
    this.remember(null, announce);
    this.setConnection("idle");
    this.render();
    this.composer.focus();
  }

  /** Stop showing the current thread (its streams stay open on the server side only). */
  leave() {
    this.follower?.stop();
    this.follower = null;
    this.openToken++;
    this.pending = [];
    this.stopping = false;
    this.messages.reset();
    for (const key of ["superseded", "run", "open", "older", "follow", "stop"]) this.notices.dismiss(key);
  }

  remember(threadId, announce) {
    this.local.set("thread", threadId);
    if (announce) this.tabs.post({ type: "thread", id: threadId });
  }

  async rename(threadId, title) {
    try {
      const { body } = await this.api.chatkit("threads.update", { thread_id: threadId, title });
      this.threadChanged(body);
    } catch (error) {
      this.report("rename", "The conversation could not be renamed", error, () => this.rename(threadId, title));
    }
  }

  async remove(threadId) {
    try {
      await this.api.chatkit("threads.delete", { thread_id: threadId });
    } catch (error) {
      if (!(error instanceof ApiError && error.code === "thread_not_found")) {
        this.report("delete", "The conversation could not be deleted", error, () => this.remove(threadId));
        return;
      }
    }
    this.tabs.post({ type: "thread-deleted", id: threadId });
    this.threadDeleted(threadId);
  }

  threadDeleted(threadId) {
    this.forgetThread(threadId);
    if (this.conversation.threadId === threadId) this.startNew({ announce: false });
    else this.renderThreads();
  }

  /** A thread's title or existence changed here: show it, and tell the other tabs. */
  threadChanged(thread) {
    this.rememberThread(thread);
    if (thread.id === this.conversation.threadId) this.conversation.title = thread.title ?? null;
    this.tabs.post({ type: "thread-changed", thread: { id: thread.id, title: thread.title ?? null } });
    this.renderThreads();
  }

  async loadOlder() {
    const conversation = this.conversation;
    if (this.olderLoading || !conversation.hasOlder || !conversation.threadId) return;
    this.olderLoading = true;
    this.render();
    let page;
    try {
      ({ body: page } = await this.api.chatkit("items.list", {
        thread_id: conversation.threadId,
        order: "desc",
        after: conversation.olderCursor,
        limit: this.options.pageSize,
      }));
    } catch (error) {
      if (conversation === this.conversation) {
        this.report("older", "Earlier messages could not be loaded", error, () => this.loadOlder());
      }
    } finally {
      this.olderLoading = false;
    }
    if (conversation !== this.conversation) return;
    if (page) {
      conversation.prepend(page.data.slice().reverse(), {
        hasOlder: page.has_more,
        olderCursor: page.after ?? null,
      });
    }
    this.render();
    // Still on screen (the page was short): the observer reports changes only, so go on.
    if (page && this.messages.olderInView()) this.loadOlder();
  }

  // -- live events -------------------------------------------------------------------------

  follow() {
    const conversation = this.conversation;
    this.follower?.stop();
    this.notices.dismiss("superseded");
    this.follower = new Follower(this.api, conversation.threadId, {
      seq: () => conversation.seq,
      onEvent: (seq, event) => this.accept(conversation, seq, event, "follow"),
      onSignal: (event) => this.signal(conversation, event),
      onState: (state, detail) => {
        if (conversation === this.conversation) this.setConnection(state, detail);
      },
      onFatal: (error) => {
        if (conversation !== this.conversation) return;
        this.setConnection("error");
        if (error.code === "thread_not_found") {
          this.threadDeleted(conversation.threadId);
          return;
        }
        this.report("follow", "Live updates stopped", error, () => this.follow());
      },
    }).start();
  }

  /** One numbered event of `conversation`'s log, from the follower or from our POST. */
  accept(conversation, seq, event, source) {
    if (conversation !== this.conversation) {
      // The user moved on while our answer was still coming: the list still learns of the
      // thread it made (and its title).
      if (event.type === "thread.created" || event.type === "thread.updated") {
        this.threadChanged(event.thread);
      }
      return;
    }
    if (source === "follow" ? seq <= conversation.seq : seq !== conversation.seq + 1) return;
    conversation.seq = seq;
    if (event.type === "resync") {
      // Events we lack were trimmed from the log: start again from a fresh snapshot.
      this.open(conversation.threadId, { announce: false });
      return;
    }
    const change = conversation.apply(event);
    if (change.thread) {
      const isNew = event.type === "thread.created";
      this.threadChanged(event.thread);
      if (isNew) {
        this.remember(event.thread.id, true);
        if (!this.follower) this.follow();
      }
    }
    if (event.type === "thread.item.done" && event.item.type === "user_message") {
      this.confirmPending(event.item);
    }
    if (change.run) {
      if (!conversation.runId) this.stopping = false;
      if (event.type === "run.started") this.notices.dismiss("run");
    }
    if (event.type === "error") {
      const retry = event.allow_retry && conversation.lastUserItem();
      this.notices.show("run", {
        level: "error",
        text: event.message || "Something went wrong while answering.",
        actions: retry ? [{ label: "Retry", run: () => this.retryAnswer(retry.id) }] : [],
      });
    } else if (event.type === "notice") {
      this.notices.show("notice:" + seq, {
        level: event.level === "danger" ? "error" : event.level,
        text: event.title ? `${event.title}: ${event.message}` : event.message,
      });
    }
    this.scheduleRender();
  }

  /** Unnumbered events: not part of the thread's log. */
  signal(conversation, event) {
    if (conversation !== this.conversation) return;
    if (event.type === "session.superseded") {
      this.follower?.stop();
      this.follower = null;
      this.setConnection("superseded");
      this.notices.show("superseded", {
        level: "info",
        text: "This conversation continued in another tab.",
        actions: [{ label: "Continue here", run: () => this.follow() }],
      });
      this.updateComposer();
    }
    // A stream error ends the stream; the follower reconnects from its cursor.
  }

  // -- sending -----------------------------------------------------------------------------

  send(text) {
    const message = { key: randomId(), text, state: "sending" };
    this.pending.push(message);
    this.messages.stuck = true;
    this.deliver(message);
  }

  /** Send (or send again: the same Idempotency-Key re-attaches to a run already made). */
  async deliver(message) {
    const conversation = this.conversation;
    if (!this.pending.includes(message)) return;
    message.state = "sending";
    this.notices.dismiss("send");
    const input = {
      content: [{ type: "input_text", text: message.text }],
      attachments: [],
      inference_options: {},
    };
    const threadId = conversation.threadId;
    await this.stream(
      conversation,
      () =>
        threadId
          ? this.api.chatkitStream(
              "threads.add_user_message",
              { thread_id: threadId, input },
              { metadata: this.runMetadata(), idempotencyKey: message.key },
            )
          : this.api.chatkitStream(
              "threads.create",
              { input },
              { metadata: this.runMetadata(), idempotencyKey: message.key },
            ),
      (error) => {
        message.state = "failed";
        this.report("send", "Your message was not sent", error, () => this.deliver(message));
      },
      () => (message.state = "sent"),
    );
  }

  /** Answer the user's message `itemId` again (after a failed answer). */
  async retryAnswer(itemId) {
    const conversation = this.conversation;
    if (!conversation.threadId) return;
    await this.stream(
      conversation,
      () =>
        this.api.chatkitStream(
          "threads.retry_after_item",
          { thread_id: conversation.threadId, item_id: itemId },
          { metadata: this.runMetadata(), idempotencyKey: randomId() },
        ),
      (error) => this.report("run", "The answer could not be retried", error, () => this.retryAnswer(itemId)),
      () => {
        conversation.truncateAfter(itemId);
        this.render();
      },
    );
  }

  async stream(conversation, start, failed, accepted) {
    conversation.sending++;
    this.updateComposer();
    this.render();
    let response = null;
    try {
      response = await start();
      accepted();
      for await (const { id, data } of readEvents(response.body)) {
        if (id === null) continue;
        const event = JSON.parse(data);
        if (event.type === "thread.item.done" && event.item.type === "user_message") {
          // Final, so safe to show at once even out of order: it replaces the bubble.
          if (conversation === this.conversation) conversation.upsert(event.item);
          this.confirmPending(event.item);
        }
        this.accept(conversation, Number(id), event, "post");
      }
    } catch (error) {
      // Accepted and then cut off: the run goes on and the follower shows it, unless the
      // thread is new and we never learnt its id; a retry (same key) re-attaches to it.
      if (!response || !conversation.threadId) failed(error);
    } finally {
      conversation.sending--;
      if (conversation === this.conversation) {
        this.updateComposer();
        this.scheduleRender();
      }
    }
  }

  confirmPending(item) {
    const text = item.content.map((part) => part.text ?? "").join(" ");
    const index = this.pending.findIndex((message) => message.text === text && message.state !== "failed");
    if (index !== -1) this.pending.splice(index, 1);
  }

  runMetadata() {
    return { double_texting: this.options.doubleTexting };
  }

  async stop() {
    const threadId = this.conversation.threadId;
    if (!threadId || this.stopping) return;
    this.stopping = true;
    this.updateComposer();
    try {
      await this.api.stop(threadId);
    } catch (error) {
      this.stopping = false;
      this.updateComposer();
      this.report("stop", "The answer could not be stopped", error, () => this.stop());
    }
  }

  // -- tabs and sessions -------------------------------------------------------------------

  fromOtherTab(message) {
    switch (message.type) {
      case "thread":
        if (message.id === this.conversation.threadId) return;
        if (message.id) this.open(message.id, { announce: false });
        else this.startNew({ announce: false });
        break;
      case "thread-changed":
        this.rememberThread(message.thread);
        if (message.thread.id === this.conversation.threadId) this.conversation.title = message.thread.title;
        this.renderThreads();
        break;
      case "thread-deleted":
        this.threadDeleted(message.id);
        break;
      default:
        break;
    }
  }

  sessionRenewed(code) {
    const text =
      code === "session_expired"
        ? "Your session expired, so a new one was started. The conversation continues."
        : "A new session was started. The conversation continues.";
    this.notices.show("session", { level: "info", text, timeout: 15000 });
    // The live stream belongs to the old session: reattach it to the new one.
    if (this.follower) this.follow();
  }

  // -- state shown -------------------------------------------------------------------------

  setConnection(state, detail = {}) {
    this.connection = state;
    this.connectionBadge.dataset.state = state;
    let text = CONNECTION_TEXT[state] ?? state;
    if ((state === "reconnecting" || state === "offline") && detail.delay) {
      text += ` (retrying in ${Math.ceil(detail.delay / 1000)} s)`;
    }
    this.connectionText.textContent = text;
    this.updateComposer();
  }

  updateComposer() {
    const running = Boolean(this.conversation.runId);
    const rejecting = this.options.doubleTexting === "reject";
    // A new thread cannot take a second message before it exists, whatever the policy.
    const { sending, threadId } = this.conversation;
    const creating = sending > 0 && !threadId;
    const busy = rejecting && (running || sending > 0);
    const canSend = !busy && !creating && this.connection !== "superseded";
    this.composer.setState({ canSend, running, stopping: this.stopping });
  }

  scheduleRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  render() {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
    }
    this.messages.render(this.conversation, this.pending, {
      loading: this.loading,
      olderLoading: this.olderLoading,
    });
    this.renderThreads();
    this.updateComposer();
  }

  report(key, what, error, retry) {
    let detail;
    if (error instanceof NetworkError) detail = "the server cannot be reached";
    else if (error instanceof ApiError && error.code === "thread_busy") detail = "the assistant is still answering";
    else detail = error?.message ?? String(error);
    this.notices.show(key, {
      level: "error",
      text: `${what}: ${detail}.`.replace(/\.\.$/, "."),
      actions: retry ? [{ label: "Retry", run: retry }] : [],
    });
  }

  // -- narrow layout -----------------------------------------------------------------------

  toggleDrawer() {
    if (this.root.dataset.drawer === "open") this.closeDrawer(true);
    else {
      this.root.dataset.drawer = "open";
      this.menuButton.setAttribute("aria-expanded", "true");
      this.threadList.element.querySelector("button")?.focus();
    }
  }

  closeDrawer(restoreFocus = false) {
    if (this.root.dataset.drawer !== "open") return;
    delete this.root.dataset.drawer;
    this.menuButton.setAttribute("aria-expanded", "false");
    if (restoreFocus) this.menuButton.focus();
  }
}

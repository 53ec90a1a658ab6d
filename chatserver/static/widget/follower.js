// A tab's live view of one thread: GET /threads/{id}/events from the last seq it applied,
// reconnecting with exponential backoff (and jitter, so tabs do not reconnect in step) after
// any break. The server replays what was missed, so a reconnect loses and repeats nothing.

import { ApiError } from "./api.js";
import { readEvents } from "./sse.js";
import { sleep } from "./dom.js";

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 30_000;
// The server sends a heartbeat every 15 s by default; this much silence means a dead link.
const SILENCE_MS = 45_000;
// A connection that lasted this long was healthy: the next break starts the backoff anew.
const HEALTHY_MS = 5_000;

export class Follower {
  /**
   * `seq()` is the last seq applied (the cursor); `onEvent(seq, event)` gets numbered
   * events, `onSignal(event)` the unnumbered ones (session.superseded, stream errors);
   * `onState(state, detail)` reports connecting | live | reconnecting | offline;
   * `onFatal(error)` an error a retry cannot fix (the thread is gone, access refused).
   */
  constructor(api, threadId, { seq, onEvent, onSignal, onState, onFatal }) {
    this.api = api;
    this.threadId = threadId;
    this.seq = seq;
    this.onEvent = onEvent;
    this.onSignal = onSignal;
    this.onState = onState;
    this.onFatal = onFatal;
    this.stopped = new AbortController();
    this.wake = null;
    this.onOnline = () => this.wake?.abort();
    this.onVisible = () => {
      if (document.visibilityState === "visible") this.wake?.abort();
    };
  }

  start() {
    window.addEventListener("online", this.onOnline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.run();
    return this;
  }

  stop() {
    this.stopped.abort();
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  async run() {
    let failures = 0;
    while (!this.stopped.signal.aborted) {
      this.onState(failures === 0 ? "connecting" : "reconnecting");
      const opened = Date.now();
      try {
        await this.connect();
      } catch (error) {
        if (this.stopped.signal.aborted) return;
        if (error instanceof ApiError && error.status !== 503 && error.status < 500) {
          this.stop();
          this.onFatal(error);
          return;
        }
      }
      if (this.stopped.signal.aborted) return;
      failures = Date.now() - opened > HEALTHY_MS ? 1 : failures + 1;
      const delay = backoff(failures);
      this.onState(navigator.onLine === false ? "offline" : "reconnecting", { delay });
      this.wake = new AbortController();
      const wake = AbortSignal.any([this.wake.signal, this.stopped.signal]);
      await sleep(delay, wake);
    }
  }

  async connect() {
    const connection = new AbortController();
    const signal = AbortSignal.any([connection.signal, this.stopped.signal]);
    let silence = null;
    const heard = () => {
      clearTimeout(silence);
      silence = setTimeout(() => connection.abort(), SILENCE_MS);
    };
    try {
      heard();
      const response = await this.api.events(this.threadId, this.seq(), signal);
      this.onState("live");
      for await (const { id, data } of readEvents(response.body, { onComment: heard })) {
        heard();
        const event = JSON.parse(data);
        if (id === null) this.onSignal(event);
        else this.onEvent(Number(id), event);
        if (this.stopped.signal.aborted) return;
      }
    } finally {
      clearTimeout(silence);
    }
  }
}

function backoff(failures) {
  const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (failures - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

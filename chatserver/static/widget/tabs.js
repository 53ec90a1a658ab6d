// Tabs of one browser tell each other what changed, so the thread list and the open thread
// stay the same in all of them (each tab still follows the thread's events itself).

export class Tabs {
  constructor(name, onMessage) {
    this.channel = "BroadcastChannel" in globalThis ? new BroadcastChannel(name) : null;
    if (this.channel) this.channel.onmessage = (event) => onMessage(event.data);
  }

  /** Tell the other tabs; this tab does not hear its own messages. */
  post(message) {
    this.channel?.postMessage(message);
  }

  close() {
    this.channel?.close();
  }
}

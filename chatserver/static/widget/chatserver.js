// The chatserver widget. Put it on any page with a container and one module script:
//
//   <div data-chatserver data-theme="auto" style="height: 600px"></div>
//   <script type="module" src="https://chat.example.com/widget/chatserver.js"></script>
//
// Every element with `data-chatserver` becomes a chat. Data attributes configure it:
//   data-server         the server's URL (default: where this script came from)
//   data-policy         session timeout policy: aggressive | standard | lenient | persistent
//   data-timeout-seconds  a custom session timeout instead of a policy
//   data-tab-strategy   shared | per_tab | active_tab_wins
//   data-double-texting reject (default: one answer at a time) | queue | interrupt
//   data-theme          auto (default, follows the system) | light | dark
//   data-page-size      messages loaded per page (default 30)
// Or from a script: `mount(element, {server, policy, ...})`.

import { ChatWidget } from "./widget.js";

const DEFAULT_SERVER = new URL("../", import.meta.url).toString();
const mounted = new WeakMap();

export function mount(element, options = {}) {
  if (mounted.has(element)) return mounted.get(element);
  const widget = new ChatWidget(element, normalise({ ...optionsOf(element), ...options }));
  mounted.set(element, widget);
  widget.start();
  return widget;
}

export function unmount(element) {
  mounted.get(element)?.destroy();
  mounted.delete(element);
}

function optionsOf(element) {
  const data = element.dataset;
  return {
    server: data.server,
    policy: data.policy,
    timeoutSeconds: data.timeoutSeconds,
    tabStrategy: data.tabStrategy,
    doubleTexting: data.doubleTexting,
    theme: data.theme,
    pageSize: data.pageSize,
  };
}

function normalise(options) {
  const server = new URL(options.server || DEFAULT_SERVER, document.baseURI).toString();
  const pageSize = Number.parseInt(options.pageSize, 10);
  const timeoutSeconds = Number.parseInt(options.timeoutSeconds, 10);
  return {
    server: server.endsWith("/") ? server : server + "/",
    policy: options.policy || null,
    timeoutSeconds: timeoutSeconds > 0 ? timeoutSeconds : null,
    tabStrategy: options.tabStrategy || null,
    doubleTexting: ["queue", "reject", "interrupt"].includes(options.doubleTexting)
      ? options.doubleTexting
      : "reject",
    theme: ["light", "dark"].includes(options.theme) ? options.theme : "auto",
    pageSize: pageSize > 0 ? Math.min(pageSize, 200) : 30,
  };
}

for (const element of document.querySelectorAll("[data-chatserver]")) mount(element);

export { ChatWidget };

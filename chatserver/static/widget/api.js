// The server's HTTP API as the widget uses it: ChatKit requests on POST /chatkit, the
// thread's event stream, stop, and session metadata. Every request names the session and
// the tab, and sends the identity cookie even when the widget is embedded on another origin.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }

  static async of(response) {
    let code = "http_" + response.status;
    let message = `The server answered ${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body?.error?.code) code = body.error.code;
      if (body?.error?.message) message = body.error.message;
    } catch {
      // Not our JSON error shape (a proxy's page, say): keep the status line.
    }
    return new ApiError(response.status, code, message);
  }
}

export class NetworkError extends Error {
  constructor(cause) {
    super("The server cannot be reached.");
    this.name = "NetworkError";
    this.cause = cause;
  }
}

// A request with one of these codes was refused because of its session, not its content:
// it is retried once in a new session.
export const SESSION_GONE = new Set(["session_expired", "session_closed", "session_not_found"]);

export class Api {
  /** `session` gives the current session id and tab id, and renews an ended session. */
  constructor(baseUrl, session) {
    this.baseUrl = baseUrl.endsWith("/") ? baseUrl : baseUrl + "/";
    this.session = session;
  }

  url(path) {
    return new URL(path.replace(/^\//, ""), this.baseUrl).toString();
  }

  async fetch(path, { method = "GET", body, headers = {}, signal, renewSession = true } = {}) {
    for (let attempt = 0; ; attempt++) {
      const sessionId = this.session.id;
      const allHeaders = { "X-Session-Id": sessionId, "X-Tab-Id": this.session.tabId, ...headers };
      if (body !== undefined) allHeaders["Content-Type"] = "application/json";
      let response;
      try {
        response = await fetch(this.url(path), {
          method,
          headers: allHeaders,
          body: body === undefined ? undefined : JSON.stringify(body),
          credentials: "include",
          cache: "no-store",
          signal,
        });
      } catch (error) {
        if (signal?.aborted) throw error;
        throw new NetworkError(error);
      }
      if (response.ok) return response;
      const error = await ApiError.of(response);
      if (renewSession && attempt === 0 && error.status === 404 && SESSION_GONE.has(error.code)) {
        await this.session.renew(sessionId, error.code);
        continue;
      }
      throw error;
    }
  }

  async json(path, options) {
    const response = await this.fetch(path, options);
    return { body: await response.json(), response };
  }

  chatkit(type, params, options = {}) {
    return this.json("/chatkit", {
      method: "POST",
      body: { type, params, metadata: options.metadata ?? {} },
      ...options,
    });
  }

  /** A streaming ChatKit request: resolves once the server accepted it (the 200). */
  chatkitStream(type, params, { metadata = {}, idempotencyKey, signal } = {}) {
    return this.fetch("/chatkit", {
      method: "POST",
      body: { type, params, metadata },
      headers: { Accept: "text/event-stream", "Idempotency-Key": idempotencyKey },
      signal,
    });
  }

  /** The thread's events after `after`: stored ones, then live, until aborted. */
  events(threadId, after, signal) {
    const path = `/threads/${encodeURIComponent(threadId)}/events?after=${after}`;
    return this.fetch(path, { headers: { Accept: "text/event-stream" }, signal });
  }

  async stop(threadId) {
    const { body } = await this.json(`/threads/${encodeURIComponent(threadId)}/stop`, {
      method: "POST",
    });
    return body.stopped;
  }

  async updateSession(sessionId, metadata) {
    const { body } = await this.json(`/sessions/${encodeURIComponent(sessionId)}`, {
      method: "PATCH",
      body: { metadata },
      renewSession: false,
    });
    return body;
  }
}

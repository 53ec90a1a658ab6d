// Server-sent events read from a fetch() body. EventSource cannot send our headers
// (session, tab, Last-Event-ID on the first connect) nor show an HTTP error's JSON body,
// so the widget parses the stream itself, as the SSE specification describes.

const LINE = /\r\n|\r|\n/;

/**
 * Yields {id, data} for each event of `body` (a ReadableStream of bytes). `id` is what the
 * event itself carried (null without an `id:` line); comments (heartbeats) call `onComment`.
 */
export async function* readEvents(body, { onComment } = {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = null;
  let data = [];
  let skipLineFeed = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let text = value;
      // A chunk that ended in "\r" may have split a "\r\n": its "\n" ends no second line.
      if (skipLineFeed && text.startsWith("\n")) text = text.slice(1);
      skipLineFeed = text.endsWith("\r");
      buffer += text;
      const lines = buffer.split(LINE);
      buffer = lines.pop(); // a partial line, completed by a later chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length > 0) yield { id, data: data.join("\n") };
          id = null;
          data = [];
        } else if (line.startsWith(":")) {
          onComment?.(line.slice(1).trim());
        } else {
          const colon = line.indexOf(":");
          const field = colon === -1 ? line : line.slice(0, colon);
          let fieldValue = colon === -1 ? "" : line.slice(colon + 1);
          if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
          if (field === "id") id = fieldValue;
          else if (field === "data") data.push(fieldValue);
        }
      }
    }
    if (data.length > 0) yield { id, data: data.join("\n") };
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** One Server-Sent Event as sent: its `id:`, `event:` and joined `data:` lines. */
export interface SseMessage {
  id: string | null;
  event: string;
  data: string;
}

/**
 * Parses a Server-Sent Events byte stream (the WHATWG rules: lines end with CRLF, LF or
 * CR; `:` starts a comment; a blank line dispatches; `data:` lines join with `\n`; one
 * leading space after the colon is dropped). Yields each dispatched message; a message
 * cut off by the end of the stream is not yielded.
 */
export async function* parseSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  const reader = body.getReader();
  let buf = "";
  let id: string | null = null;
  let event = "";
  let data: string[] = [];
  let pendingCr = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      // A CR that ended the previous chunk and an LF that starts this one are one line end.
      if (pendingCr && buf.startsWith("\n")) buf = buf.slice(1);
      pendingCr = false;
      for (;;) {
        const m = /\r\n|\n|\r/.exec(buf);
        if (!m) break;
        if (m[0] === "\r" && m.index === buf.length - 1) {
          pendingCr = true; // may be the first half of CRLF split across chunks
        }
        const line = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        if (line === "") {
          if (data.length > 0) yield { id, event: event || "message", data: data.join("\n") };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") event = value;
        else if (field === "id" && !value.includes("\0")) id = value;
      }
    }
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => {});
  }
}

// A scripted HTTP server in the test process, for what a real server cannot be made to
// do on cue (drop a stream mid-way, forget a session).

import { type IncomingMessage, type ServerResponse, createServer } from "node:http";

export interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

export type Handler = (req: Seen, res: ServerResponse) => void | Promise<void>;

export interface Fake {
  url: string;
  seen: Seen[];
  close(): Promise<void>;
}

export function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

export function refuse(res: ServerResponse, status: number, code: string, message = code): void {
  json(res, status, { error: { code, message, field: null } });
}

/** Starts a server on a free loopback port that hands each request to `handler`. */
export async function fakeServer(handler: Handler): Promise<Fake> {
  const seen: Seen[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (c) => (text += c));
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://x");
      let body: unknown = null;
      try {
        body = text ? JSON.parse(text) : null;
      } catch {
        body = text;
      }
      const s: Seen = { method: req.method ?? "GET", path: url.pathname, query: url.searchParams, headers: req.headers, body };
      seen.push(s);
      Promise.resolve(handler(s, res)).catch((err) => {
        try {
          refuse(res, 500, "fake_failed", String(err));
        } catch {
          // already answered
        }
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

import { FerryError } from "./errors.js";

/** Where the server is and how to authenticate: what `Client` and `Worker` take. */
export interface ConnectionOptions {
  /**
   * The server's base URL. Default: `FERRY_SERVER` from the environment, else
   * `http://127.0.0.1:7700`. The scheme may be left out (`127.0.0.1:7899`), as with the CLI.
   */
  url?: string;
  /**
   * A bearer token. Default: `FERRY_TOKEN` from the environment, else none (a server on
   * loopback that has never had a token needs none).
   */
  token?: string | null;
  /** How long an ordinary call may take before it fails with `FerryError` code `network` (ms, default 60,000). A waiting call gets its wait on top. */
  timeoutMs?: number;
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Overrides the transport's timeout for this call. */
  timeoutMs?: number;
}

export interface Answer<T> {
  status: number;
  body: T;
  headers: Headers;
}

function env(name: string): string | undefined {
  const p = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const v = p?.env?.[name];
  return v === undefined || v === "" ? undefined : v;
}

/** Normalises a base URL: adds `http://` when no scheme is given, drops trailing slashes. */
export function baseUrl(url: string | undefined): string {
  let u = (url ?? env("FERRY_SERVER") ?? "http://127.0.0.1:7700").trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(u)) u = `http://${u}`;
  return u.replace(/\/+$/, "");
}

/** Parses a `Retry-After` header (seconds, or an HTTP date) into milliseconds. */
function retryAfter(headers: Headers): number | null {
  const v = headers.get("retry-after");
  if (v === null) return null;
  const secs = Number(v);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

/** Builds the `FerryError` of a non-2xx answer whose body was read as text. */
export function errorOf(status: number, text: string, headers: Headers): FerryError {
  const opts = { retryAfterMs: retryAfter(headers) };
  try {
    const parsed = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; field?: unknown } };
    const e = parsed?.error;
    if (e && typeof e.code === "string") {
      return new FerryError(
        status,
        e.code,
        typeof e.message === "string" ? e.message : e.code,
        typeof e.field === "string" ? e.field : null,
        opts,
      );
    }
  } catch {
    // not JSON: fall through
  }
  const snippet = text.length > 200 ? `${text.slice(0, 200)}…` : text;
  return new FerryError(status, "unexpected_response", `HTTP ${status}: ${snippet || "(no body)"}`, null, opts);
}

/** The one place requests are made: base URL, token, timeouts, the error shape. @internal */
export class Transport {
  readonly url: string;
  readonly token: string | null;
  readonly timeoutMs: number;

  constructor(opts: ConnectionOptions = {}) {
    this.url = baseUrl(opts.url);
    this.token = opts.token === undefined ? env("FERRY_TOKEN") ?? null : opts.token;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { accept: "application/json", ...extra };
    if (this.token) h.authorization = `Bearer ${this.token}`;
    return h;
  }

  target(path: string, query?: RequestOptions["query"]): string {
    let u = `${this.url}${path}`;
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
      const s = q.toString();
      if (s) u += `?${s}`;
    }
    return u;
  }

  /**
   * Sends a request and returns the raw `Response` once its head arrived (2xx only; any
   * other status is read and thrown as a `FerryError`). The caller reads the body.
   */
  async open(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const timeout = AbortSignal.timeout(opts.timeoutMs ?? this.timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    const headers = this.headers(opts.headers);
    let body: string | undefined;
    if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers["content-type"] = "application/json";
    }
    let res: Response;
    try {
      res = await fetch(this.target(path, opts.query), { method, headers, body, signal });
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      const what = timeout.aborted ? "timed out" : `failed: ${(err as Error)?.message ?? String(err)}`;
      const cause = (err as { cause?: { message?: string } })?.cause?.message;
      throw new FerryError(0, "network", `${method} ${path} ${what}${cause ? ` (${cause})` : ""}`, null, { cause: err });
    }
    if (res.status >= 200 && res.status < 300) return res;
    let text = "";
    try {
      text = await res.text();
    } catch {
      // the body broke off: the status says enough
    }
    throw errorOf(res.status, text, res.headers);
  }

  /** Sends a request and reads a JSON answer (`null` for an empty body, as for 204). */
  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<Answer<T>> {
    const res = await this.open(method, path, opts);
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      throw new FerryError(0, "network", `${method} ${path}: the answer broke off`, null, { cause: err });
    }
    let body: unknown = null;
    if (text !== "") {
      try {
        body = JSON.parse(text);
      } catch (err) {
        throw new FerryError(res.status, "unexpected_response", `${method} ${path}: the answer is not JSON`, null, {
          cause: err,
        });
      }
    }
    return { status: res.status, body: body as T, headers: res.headers };
  }
}

/** Formats milliseconds as a wait the server accepts (`30s`, `500ms`), capped at its 60 s. */
export function waitParam(ms: number): string {
  const n = Math.max(0, Math.min(60_000, Math.round(ms)));
  return n % 1000 === 0 ? `${n / 1000}s` : `${n}ms`;
}

/** Sleeps `ms`, or less if `signal` aborts first (then it rejects with the signal's reason). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

// Helpers of the worker that hold no state of it: a wake-up bell, the protocol's limits,
// and how a task's output and errors become what the protocol sends.

import { FerryError, NonRetryableError, RetryableError } from "./errors.js";

/** Wakes whoever waits on it; checking a condition and then waiting cannot miss a wake-up (one thread). */
export class Bell {
  private waiters: Array<() => void> = [];
  ring(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  wait(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.waiters.push(done);
      if (ms !== undefined) {
        timer = setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== done);
          resolve();
        }, ms);
      }
    });
  }
}

export const keyOf = (id: string, attempt: number) => `${id}#${attempt}`;

export const MAX_MESSAGE = 4000;
/** Protocol limits (§4): a log line's bytes, a progress value's JSON bytes, events per attempt. */
export const MAX_LOG_BYTES = 4096;
export const MAX_PROGRESS_BYTES = 4096;
export const MAX_EVENTS = 1000;
/** Results or events in one call (§4, §5). */
export const MAX_BATCH = 100;

const encoder = new TextEncoder();

export function utf8Length(s: string): number {
  return encoder.encode(s).length;
}

/** `s` cut to at most `max` UTF-8 bytes, on a character boundary, with `…` when cut. */
export function truncateUtf8(s: string, max: number): string {
  if (s.length * 3 <= max || utf8Length(s) <= max) return s;
  let lo = 0;
  let hi = s.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (utf8Length(s.slice(0, mid)) + 3 <= max) lo = mid;
    else hi = mid - 1;
  }
  // Do not split a surrogate pair.
  const code = s.charCodeAt(lo - 1);
  if (lo > 0 && code >= 0xd800 && code <= 0xdbff) lo -= 1;
  return `${s.slice(0, lo)}…`;
}


/** The index `i` of a 400 that names `<list>[i]` (or a field in it), else `null`. */
export function refusedItem(err: unknown, list: string): number | null {
  if (!(err instanceof FerryError) || err.status !== 400 || err.field === null) return null;
  const m = err.field.match(new RegExp(`^${list}\\[(\\d+)\\]`));
  return m ? Number(m[1]) : null;
}

/** The output as JSON (`undefined` is `null`); throws a `TypeError` for what JSON cannot hold. */
export function jsonOrThrow(output: unknown): unknown {
  if (output === undefined) return null;
  let text: string | undefined;
  try {
    text = JSON.stringify(output);
  } catch (err) {
    throw new NonRetryableError(`the task's output is not JSON: ${(err as Error).message}`, { type: "TypeError" });
  }
  if (text === undefined) return null;
  return JSON.parse(text);
}

/** How an error a task threw is reported. */
export function errorBody(
  err: unknown,
  retryableByDefault: boolean,
): { type: string; message: string; retryable: boolean; retry_after_ms?: number } {
  const message = (e: unknown) => {
    const m = e instanceof Error ? e.message : typeof e === "string" ? e : safeString(e);
    return m.length > MAX_MESSAGE ? `${m.slice(0, MAX_MESSAGE)}…` : m;
  };
  if (err instanceof NonRetryableError) {
    return { type: err.type ?? err.name, message: message(err), retryable: false };
  }
  if (err instanceof RetryableError) {
    const body: { type: string; message: string; retryable: boolean; retry_after_ms?: number } = {
      type: err.type ?? err.name,
      message: message(err),
      retryable: true,
    };
    if (typeof err.retryAfterMs === "number") body.retry_after_ms = Math.max(0, Math.round(err.retryAfterMs));
    return body;
  }
  const name = err instanceof Error && err.name ? err.name : "Error";
  return { type: name.slice(0, 64), message: message(err), retryable: retryableByDefault };
}

export function safeString(v: unknown): string {
  try {
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  } catch {
    return String(v);
  }
}

export function describe(err: unknown): string {
  if (err instanceof FerryError) return `${err.status} ${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

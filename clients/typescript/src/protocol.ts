// What the worker's parts share: the protocol's shapes (`docs/worker-protocol.md`) and
// the worker's state as its pump and outbox see it. Internal to the package.

import type { Bell } from "./support.js";
import type { Logger } from "./task.js";

/** A job as a lease hands it over. */
export interface LeasedJob {
  id: string;
  attempt: number;
  kind: string;
  queue: string;
  workspace: string;
  run: string | null;
  input: unknown;
  timeout_ms: number | null;
  soft_timeout_ms: number | null;
}

/** An open session, as `POST /v1/workers/sessions` answered it. */
export interface Session {
  id: string;
  heartbeatMs: number;
  sessionTimeoutMs: number;
  maxWaitMs: number;
  /** Increases with each session this worker opens: what belongs to an older one is dropped. */
  generation: number;
}

/** An attempt this worker holds: from its lease until its result is acknowledged (or dropped). */
export interface Held {
  job: LeasedJob;
  generation: number;
  controller: AbortController;
  /** Its result must not be sent (cancelled, timed out, lost, handed back already). */
  settled: boolean;
  /** The task function is still running. */
  running: boolean;
  /** A result of it is queued or on its way (not yet acknowledged or dropped). */
  reported?: boolean;
  timer?: ReturnType<typeof setTimeout>;
  /** Events the task wrote. */
  events?: number;
}

export type ResultBody =
  | { id: string; attempt: number; output: unknown }
  | { id: string; attempt: number; error: { type: string; message: string; retryable: boolean; retry_after_ms?: number } }
  | { id: string; attempt: number; release: true };

export type EventBody = { id: string; attempt: number; progress: unknown } | { id: string; attempt: number; log: string };

/** A result or an event waiting to be sent, with the attempt's key and session generation. */
export interface Outgoing<T> {
  key: string;
  generation: number;
  body: T;
}

/** The answer of `lease`, and of `complete` (with `jobs` when it leased too). */
export interface LeaseAnswer {
  jobs?: LeasedJob[];
  results?: Array<{ id: string; accepted: boolean }>;
}

/** What the worker reports about its calls to Ferry (`Worker.stats`). */
export interface WorkerStats {
  /** Jobs leased (by `lease` and `complete` calls together). */
  jobs: number;
  /**
   * Calls made, by the last segment of their path: `lease`, `complete`, `events`,
   * `heartbeat`, `sessions` (opening a session) and `close` (closing it).
   */
  calls: Record<string, number>;
}

/** Options of one call about the current session. */
export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** The worker as its pump and outbox see it. @internal */
export interface WorkerCore {
  readonly concurrency: number;
  readonly logger: Logger;
  /** Rung whenever something the loops wait on changes. */
  readonly bell: Bell;
  /** Aborted once the worker is done: ends sleeps and calls. */
  readonly life: AbortSignal;
  readonly stats: WorkerStats;
  /** The current session, or `null` (not open yet, or lost while stopping). */
  session(): Session | null;
  /** The current session's generation. */
  generation(): number;
  /** A re-registration under way, if any. */
  reopening(): Promise<void> | null;
  /** A call about the current session; `unknown_session` starts a re-registration and is rethrown. */
  call<T>(path: string, body: unknown, opts?: CallOptions): Promise<T>;
  /** Attempts held (running, or finished and not yet acknowledged). */
  held(): number;
  /** Task functions running now. */
  running(): number;
  /** `stop()` was called: no more leasing. */
  stopping(): boolean;
  /** Everything was reported (or given up on): the loops end. */
  closing(): boolean;
  /** Takes a leased job: runs it, or hands it back at once when stopping. */
  accept(job: LeasedJob, generation: number): void;
  /** An attempt's result was acknowledged (or dropped): its slot is free once its task returned. */
  done(key: string): void;
}

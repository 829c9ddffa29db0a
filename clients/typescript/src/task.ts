import type { ConnectionOptions } from "./http.js";

// The task's side of a worker: what a task function gets and how it is registered.

/** What a task function gets besides its input. */
export interface TaskContext {
  /** The job's id. */
  readonly jobId: string;
  /** The attempt's number (1 for the first): Ferry's fencing token for this attempt. */
  readonly attempt: number;
  /** The job's kind. */
  readonly kind: string;
  /** The job's queue. */
  readonly queue: string;
  /** The job's workspace. */
  readonly workspace: string;
  /** The workflow run the job belongs to, if any. */
  readonly run: string | null;
  /** The attempt's hard timeout (ms): Ferry fails the attempt at that point whatever the task does. */
  readonly timeoutMs: number | null;
  /** The job's soft timeout (ms), if it set one: a hint to wrap up. */
  readonly softTimeoutMs: number | null;
  /**
   * Aborted when the task must stop: Ferry stopped the attempt (`reason.code`
   * `"cancelled"`: the job or its run was cancelled, or the node lost the job's lease or
   * is stopping), the attempt ran past its timeout (`"timeout"`), the worker's session
   * ended (`"lost"`), or the worker is shutting down and its grace is over (`"shutdown"`:
   * the job is handed back). Pass it to `fetch` and the like; a
   * task that ignores it keeps its slot until it returns. Whatever the task answers after
   * it aborted is not recorded (a shutdown hands the job back instead).
   */
  readonly signal: AbortSignal;
  /** Reports progress (any JSON, at most 4 KiB): the job's `progress` event. Sent in the background, in order. */
  progress(value: unknown): void;
  /** Writes a line (at most 4,096 bytes) to the job's log: its `log` event. Sent in the background, in order. */
  log(line: string): void;
}

/** Why a task's `ctx.signal` aborted: its `reason`. */
export class TaskAbortedError extends Error {
  /** `cancelled`, `timeout`, `lost` or `shutdown`. */
  readonly code: "cancelled" | "timeout" | "lost" | "shutdown";

  constructor(code: "cancelled" | "timeout" | "lost" | "shutdown", message: string) {
    super(message);
    this.name = "AbortError";
    this.code = code;
  }
}

/** A task function: the job's input and its context in, the job's output (any JSON) out. */
export type TaskFunction<I = any, O = unknown> = (input: I, ctx: TaskContext) => O | Promise<O>;

/** How a kind is served. */
export interface TaskOptions {
  /** The queue the kind's jobs go to (Ferry's default for a remote kind: `remote`). */
  queue?: string;
  /**
   * Whether an ordinary error the task throws is retried (default `true`). A
   * `NonRetryableError` is never retried and a `RetryableError` always is, whatever this says.
   */
  retryable?: boolean;
}

/** Where the worker says what happens to it. Default: warnings and errors to stderr. */
export interface Logger {
  /** Each protocol call the worker is about to make, when given (chatty). */
  debug?(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** The worker's settings; the connection's as for `Client`. */
export interface WorkerOptions extends ConnectionOptions {
  /** Jobs run at once (1 to 1,000; default 10). */
  concurrency?: number;
  /** A label for `GET /v1/workers` (default `<host>:<pid>`). */
  name?: string;
  /**
   * On a graceful stop, how long running tasks may take to finish (ms, default 30,000);
   * those still running then are aborted (`shutdown`) and handed back (`release`).
   */
  shutdownGraceMs?: number;
  /** How long one lease call waits for work (ms; default and most: the server's `max_wait_ms`). */
  leaseWaitMs?: number;
  /**
   * While work is waiting (the last lease brought all it asked for), how long a freed
   * slot waits for others to free up before the worker leases again, so that their
   * results ride in one call (ms, 0 to 1,000; default 2; 0: never wait). It waits no
   * longer once every slot is free.
   */
  batchWindowMs?: number;
  /** Default: warnings and errors on stderr. `null`: silence. */
  logger?: Logger | null;
}

/** Options of `Worker.run`. */
export interface RunWorkerOptions {
  /**
   * Stop gracefully on SIGTERM and SIGINT (a second signal stops at once, handing every
   * running job back). Default `false`: call `stop()` yourself.
   */
  handleSignals?: boolean;
}


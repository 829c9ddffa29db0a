/**
 * A refusal from the Ferry server (`{"error": {"code", "message", "field"}}` with a 4xx
 * or 5xx status), or a request that got no answer (`status` 0, `code` `"network"`), or an
 * answer that was not Ferry's (`code` `"unexpected_response"`).
 */
export class FerryError extends Error {
  /** The HTTP status; 0 when no answer came (the connection failed or timed out). */
  readonly status: number;
  /** Ferry's stable error code (`invalid_field`, `not_found`, `unknown_session`, …). */
  readonly code: string;
  /** The offending field as a path into the request (`jobs[3].priority`), when one is named. */
  readonly field: string | null;
  /** The answer's `Retry-After`, in milliseconds (429 and 503 answers carry one). */
  readonly retryAfterMs: number | null;

  constructor(
    status: number,
    code: string,
    message: string,
    field: string | null = null,
    options: { retryAfterMs?: number | null; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "FerryError";
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfterMs = options.retryAfterMs ?? null;
  }
}

/** Thrown by the waiting calls (`submitAndWait`, `wait`, `runAndWait`, …) when their `timeoutMs` passed first. */
export class WaitTimeoutError extends Error {
  /** What the last look found: the job or run, not yet ended. */
  readonly last: unknown;

  constructor(message: string, last: unknown) {
    super(message);
    this.name = "WaitTimeoutError";
    this.last = last;
  }
}

/** Options of the errors a task throws to say how its failure is recorded. */
export interface TaskErrorOptions {
  /**
   * The error type Ferry records: one of its catalogue (`validation`, `network`,
   * `timeout`, `rate_limited`, …) or any other name, recorded as type `task` with the
   * name at the head of the message. Default: the error's `name`.
   */
  type?: string;
  /** The error that caused this one (standard `Error` option). */
  cause?: unknown;
}

/**
 * Thrown by a task to fail its attempt for good: the job goes to the dead-letter queue at
 * once, whatever attempts it has left.
 *
 * ```ts
 * if (input.width <= 0) throw new NonRetryableError("width must be positive", {type: "validation"});
 * ```
 */
export class NonRetryableError extends Error {
  /** The type sent to Ferry (see {@link TaskErrorOptions.type}); `undefined`: the error's name. */
  readonly type: string | undefined;

  constructor(message: string, options: TaskErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "NonRetryableError";
    this.type = options.type;
  }
}

/**
 * Thrown by a task to fail its attempt and have it retried (while the job has attempts
 * and budget left), even for a task registered with `retryable: false`. `retryAfterMs`
 * replaces the job's backoff delay for this retry.
 *
 * ```ts
 * if (res.status === 429) throw new RetryableError("rate limited", {retryAfterMs: 5000, type: "rate_limited"});
 * ```
 */
export class RetryableError extends Error {
  /** The type sent to Ferry (see {@link TaskErrorOptions.type}); `undefined`: the error's name. */
  readonly type: string | undefined;
  /** Replaces the backoff delay before the next attempt, when set. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, options: TaskErrorOptions & { retryAfterMs?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "RetryableError";
    this.type = options.type;
    this.retryAfterMs = options.retryAfterMs;
  }
}

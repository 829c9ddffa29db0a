import { hostname } from "node:os";
import { FerryError } from "./errors.js";
import { Transport, sleep } from "./http.js";
import { Outbox } from "./outbox.js";
import type { CallOptions, EventBody, Held, LeasedJob, ResultBody, Session, WorkerCore, WorkerStats } from "./protocol.js";
import { Pump } from "./pump.js";
import {
  Bell,
  MAX_EVENTS,
  MAX_LOG_BYTES,
  MAX_PROGRESS_BYTES,
  describe,
  errorBody,
  jsonOrThrow,
  keyOf,
  truncateUtf8,
  utf8Length,
} from "./support.js";
import {
  type Logger,
  type RunWorkerOptions,
  TaskAbortedError,
  type TaskContext,
  type TaskFunction,
  type TaskOptions,
  type WorkerOptions,
} from "./task.js";

/** The protocol version this worker speaks (`docs/worker-protocol.md`). */
export const PROTOCOL = 1;

const stderrLogger: Logger = {
  info: () => {},
  warn: (m) => console.error(`ferry worker: ${m}`),
  error: (m) => console.error(`ferry worker: ${m}`),
};

/**
 * A remote worker: registers the kinds it serves with Ferry, leases their jobs (as many
 * as it has free slots), runs each with its task function, and reports each outcome
 * (`docs/worker-protocol.md`). One pump (`pump.ts`) leases and sends results, the
 * results riding in the next lease call (`complete` with `lease`) when work is waiting;
 * progress and log events have a sender of their own (`outbox.ts`); `stats` counts the
 * calls.
 *
 * ```ts
 * const worker = new Worker({url: "http://127.0.0.1:7700", concurrency: 8});
 * worker.task("resize", {queue: "images"}, async (input, ctx) => {
 *   ctx.log(`resizing ${input.url}`);
 *   const res = await fetch(input.url, {signal: ctx.signal});
 *   if (res.status === 404) throw new NonRetryableError("no such image", {type: "not_found"});
 *   return {size: (await res.arrayBuffer()).byteLength};
 * });
 * await worker.run({handleSignals: true});   // resolves after a graceful stop (SIGTERM)
 * ```
 *
 * Errors: a task that throws fails its attempt. `NonRetryableError` sends the job to the
 * dead-letter queue at once; `RetryableError` is retried (with `retryAfterMs` instead of
 * the backoff, when given); any other error is retried unless the kind was registered
 * with `retryable: false`, and is recorded with the error's `name` as its type
 * (`TypeError: …`).
 */
export class Worker {
  private readonly transport: Transport;
  private readonly concurrency: number;
  private readonly name: string;
  private readonly graceMs: number;
  private readonly logger: Logger;
  private readonly tasks = new Map<string, { fn: TaskFunction; queue?: string; retryable: boolean }>();

  private session: Session | null = null;
  private generation = 0;
  private reopening: Promise<void> | null = null;
  private readonly held = new Map<string, Held>();
  /** Task functions running now. */
  private runningTasks = 0;
  private readonly bell = new Bell();
  private readonly counters: WorkerStats = { jobs: 0, calls: {} };
  /** What the pump and the outbox see of this worker. */
  private readonly core: WorkerCore;
  private readonly outbox: Outbox;
  private readonly pump: Pump;
  private started = false;
  private stopping = false;
  private stopNow = false;
  private closing = false;
  private stopRequested!: () => void;
  private readonly stopPromise: Promise<void>;
  /** Ends the background loops' sleeps and the lease call once the worker closes. */
  private readonly life = new AbortController();

  constructor(opts: WorkerOptions = {}) {
    this.transport = new Transport(opts);
    this.concurrency = opts.concurrency ?? 10;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1 || this.concurrency > 1000) {
      throw new RangeError(`concurrency must be a whole number from 1 to 1000, not ${opts.concurrency}`);
    }
    const batchWindowMs = opts.batchWindowMs ?? 2;
    if (typeof batchWindowMs !== "number" || !(batchWindowMs >= 0 && batchWindowMs <= 1000)) {
      throw new RangeError(`batchWindowMs must be from 0 to 1000, not ${opts.batchWindowMs}`);
    }
    this.name = (opts.name ?? `${hostname()}:${process.pid}`).slice(0, 128);
    this.graceMs = opts.shutdownGraceMs ?? 30_000;
    this.logger = opts.logger === null ? { info() {}, warn() {}, error() {} } : opts.logger ?? stderrLogger;
    this.stopPromise = new Promise((resolve) => (this.stopRequested = resolve));
    this.core = {
      concurrency: this.concurrency,
      logger: this.logger,
      bell: this.bell,
      life: this.life.signal,
      stats: this.counters,
      session: () => this.session,
      generation: () => this.generation,
      reopening: () => this.reopening,
      call: (path, body, callOpts) => this.call(path, body, callOpts),
      held: () => this.held.size,
      running: () => this.runningTasks,
      stopping: () => this.stopping,
      closing: () => this.closing,
      accept: (job, generation) => this.accept(job, generation),
      done: (key) => this.done(key),
    };
    this.outbox = new Outbox(this.core);
    this.pump = new Pump(this.core, this.outbox, {
      leaseWaitMs: opts.leaseWaitMs,
      batchWindowMs,
      callTimeoutMs: this.transport.timeoutMs,
    });
  }

  /**
   * Serves `kind` with `fn`. Register every kind before `run()`. A kind's name is 1 to 64
   * characters of `a-z`, `0-9`, `_`, `-`, `.`, starting with a letter, and not a built-in
   * kind's.
   */
  task<I = any, O = unknown>(kind: string, fn: TaskFunction<I, O>): this;
  task<I = any, O = unknown>(kind: string, options: TaskOptions, fn: TaskFunction<I, O>): this;
  task<I = any, O = unknown>(kind: string, a: TaskOptions | TaskFunction<I, O>, b?: TaskFunction<I, O>): this {
    const [options, fn] = typeof a === "function" ? [{}, a] : [a, b];
    if (typeof fn !== "function") throw new TypeError(`task ${kind}: a task function is required`);
    if (this.started) throw new Error(`task ${kind}: register tasks before run()`);
    if (this.tasks.has(kind)) throw new Error(`task ${kind} is registered twice`);
    this.tasks.set(kind, { fn: fn as TaskFunction, queue: options.queue, retryable: options.retryable ?? true });
    return this;
  }

  /** Attempts held right now (running, or finished and not yet reported). */
  get inFlight(): number {
    return this.held.size;
  }

  /** The current session's id, once `run()` opened one. */
  get sessionId(): string | null {
    return this.session?.id ?? null;
  }

  /**
   * What the worker has done so far, as a snapshot: `jobs` leased, and `calls` made to
   * Ferry by the last segment of their path (`lease`, `complete`, `events`, `heartbeat`,
   * `sessions` for opening a session, `close` for closing it).
   */
  get stats(): { readonly jobs: number; readonly calls: Readonly<Record<string, number>> } {
    return { jobs: this.counters.jobs, calls: { ...this.counters.calls } };
  }

  /**
   * Opens a session and serves jobs until `stop()` (or, with `handleSignals`, SIGTERM or
   * SIGINT); then stops leasing, lets running tasks finish within `shutdownGraceMs`,
   * hands back the rest, reports every outcome, closes the session and resolves.
   * Rejects only when the session cannot be opened for a reason that waiting won't fix
   * (a refused registration: `FerryError` with `kind_conflict`, `queue_conflict`,
   * `forbidden`, …).
   */
  async run(opts: RunWorkerOptions = {}): Promise<void> {
    if (this.started) throw new Error("a Worker runs once");
    if (this.tasks.size === 0) throw new Error("no task registered: call worker.task(kind, fn) first");
    this.started = true;
    const result = this.serve(opts);
    this.finished = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  private async serve(opts: RunWorkerOptions): Promise<void> {
    let signals = 0;
    const onSignal = (sig: string) => {
      signals += 1;
      if (signals === 1) {
        this.logger.info(`${sig}: stopping (running jobs get ${this.graceMs} ms; again to hand them back now)`);
        void this.stop();
      } else {
        this.logger.info(`${sig} again: handing every running job back`);
        void this.stop({ graceMs: 0 });
      }
    };
    if (opts.handleSignals) {
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
    }
    try {
      await this.open(true);
      if (this.stopping) {
        await this.close();
        return;
      }
      const heartbeat = this.heartbeatLoop();
      const events = this.outbox.loop();
      const pump = this.pump.run();
      await this.stopPromise;
      await this.pump.end();
      await this.drain();
      this.closing = true;
      this.bell.ring();
      await Promise.all([pump, events]);
      this.life.abort();
      await heartbeat;
      await this.close();
    } finally {
      this.life.abort();
      if (opts.handleSignals) {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
      }
    }
  }

  /**
   * Stops gracefully: no new job is leased, running tasks get `graceMs` (default the
   * worker's `shutdownGraceMs`) to finish, then are aborted and handed back. Resolves
   * when the worker is done (when `run()` resolves; at once if it never ran). Calling it
   * again with a shorter grace shortens the wait; `graceMs: 0` hands every running job
   * back now.
   */
  stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (opts.graceMs === 0) this.stopNow = true;
    if (opts.graceMs !== undefined) this.graceOverride = Math.min(this.graceOverride ?? Infinity, opts.graceMs);
    this.stopping = true;
    this.stopRequested();
    this.bell.ring();
    return this.finished ?? Promise.resolve();
  }

  /** Settles when `run()` has finished (whichever way). */
  private finished: Promise<void> | null = null;

  private graceOverride: number | undefined;

  // ---- the session ------------------------------------------------------------------

  /**
   * Opens a session, trying again while the server cannot be reached. At start
   * (`first`) a refusal rejects; later (a re-registration) it is retried too, and this
   * never rejects. Returns without a new session when the worker is stopping.
   */
  private async open(first: boolean): Promise<void> {
    const kinds = [...this.tasks.entries()].map(([kind, t]) => (t.queue ? { kind, queue: t.queue } : { kind }));
    let pause = 250;
    for (;;) {
      try {
        this.count("sessions");
        const answer = await this.transport.request<{
          session: string;
          heartbeat_ms?: number;
          session_timeout_ms?: number;
          max_wait_ms?: number;
        }>("POST", "/v1/workers/sessions", {
          body: { protocol: PROTOCOL, name: this.name, concurrency: this.concurrency, kinds },
          signal: this.life.signal,
        });
        const s = answer.body;
        if (typeof s?.session !== "string") {
          throw new FerryError(answer.status, "unexpected_response", "the session answer has no `session`");
        }
        this.generation += 1;
        this.session = {
          id: s.session,
          heartbeatMs: s.heartbeat_ms ?? 5000,
          sessionTimeoutMs: s.session_timeout_ms ?? 30_000,
          maxWaitMs: s.max_wait_ms ?? 30_000,
          generation: this.generation,
        };
        this.logger.info(`session ${s.session} serves ${[...this.tasks.keys()].join(", ")}`);
        return;
      } catch (err) {
        // Stopping: give up quietly (run() sees `stopping`; a re-registration must never reject).
        if (this.life.signal.aborted || this.stopping) return;
        // A refusal is final at start; once running, keep trying (the server may be restarting).
        const transient = err instanceof FerryError && (err.status === 0 || err.status >= 500 || err.status === 429);
        if (first && !transient) throw err;
        this.logger.warn(`cannot open a session (${describe(err)}); trying again in ${pause} ms`);
        try {
          await sleep(pause, this.life.signal);
        } catch {
          return;
        }
        pause = Math.min(5000, pause * 2);
      }
    }
  }

  /**
   * The session is gone (`unknown_session`): drop what it held (its results would be
   * refused) and register again. Concurrent callers share one re-registration.
   */
  private reopen(generation: number): Promise<void> {
    if (generation !== this.generation) return Promise.resolve();
    if (this.reopening) return this.reopening;
    this.logger.warn(
      `session ${this.session?.id} is unknown to the server: dropping its jobs${this.stopping ? "" : " and registering again"}`,
    );
    for (const h of [...this.held.values()]) {
      if (h.generation !== generation) continue;
      h.reported = false; // its result, if any, is dropped
      if (!h.running) this.forget(h);
      else if (!h.settled) this.abandon(h, "lost", "the worker's session ended");
      else h.controller.abort(new TaskAbortedError("lost", "the worker's session ended"));
    }
    this.outbox.dropGeneration(generation);
    if (this.stopping) {
      this.session = null;
      this.bell.ring();
      return Promise.resolve();
    }
    this.reopening = this.open(false).finally(() => {
      this.reopening = null;
      this.bell.ring();
    });
    return this.reopening;
  }

  private async close(): Promise<void> {
    const s = this.session;
    if (!s) return;
    try {
      this.count("close");
      await this.transport.request("DELETE", `/v1/workers/sessions/${encodeURIComponent(s.id)}`, { timeoutMs: 10_000 });
    } catch (err) {
      if (!(err instanceof FerryError && err.code === "unknown_session")) {
        this.logger.warn(`closing session ${s.id} failed: ${describe(err)}`);
      }
    }
    this.session = null;
  }

  /** A call about the current session; `unknown_session` triggers a re-registration and rethrows. */
  private async call<T>(path: string, body: unknown, opts: CallOptions = {}): Promise<T> {
    const s = this.session;
    if (!s) throw new FerryError(404, "unknown_session", "no session");
    this.count(path.slice(path.lastIndexOf("/") + 1));
    try {
      const answer = await this.transport.request<T>("POST", `/v1/workers/sessions/${encodeURIComponent(s.id)}${path}`, {
        body,
        ...opts,
      });
      return answer.body;
    } catch (err) {
      if (err instanceof FerryError && err.code === "unknown_session" && !this.closing) {
        void this.reopen(s.generation);
      }
      throw err;
    }
  }

  private count(what: string): void {
    this.counters.calls[what] = (this.counters.calls[what] ?? 0) + 1;
  }

  // ---- leased jobs ------------------------------------------------------------------

  /** Takes a leased job: runs it, or hands it back at once when stopping. */
  private accept(job: LeasedJob, generation: number): void {
    const held: Held = { job, generation, controller: new AbortController(), settled: false, running: false };
    const key = keyOf(job.id, job.attempt);
    this.held.set(key, held);
    if (this.stopping) {
      held.settled = true;
      this.queueResult(held, { id: job.id, attempt: job.attempt, release: true });
      return;
    }
    void this.execute(held);
  }

  // ---- running a task ---------------------------------------------------------------

  private async execute(held: Held): Promise<void> {
    const { job } = held;
    const task = this.tasks.get(job.kind);
    if (!task) {
      held.settled = true;
      this.queueResult(held, {
        id: job.id,
        attempt: job.attempt,
        error: { type: "unknown_kind", message: `this worker has no task for kind ${job.kind}`, retryable: true },
      });
      return;
    }
    if (typeof job.timeout_ms === "number" && job.timeout_ms > 0) {
      // Ferry fails the attempt at its timeout and says so at the next heartbeat; the
      // task hears of it at once.
      held.timer = setTimeout(
        () => this.abandon(held, "timeout", `the attempt ran past its timeout (${job.timeout_ms} ms)`),
        job.timeout_ms,
      );
    }
    const ctx: TaskContext = {
      jobId: job.id,
      attempt: job.attempt,
      kind: job.kind,
      queue: job.queue,
      workspace: job.workspace,
      run: job.run ?? null,
      timeoutMs: job.timeout_ms ?? null,
      softTimeoutMs: job.soft_timeout_ms ?? null,
      signal: held.controller.signal,
      progress: (value: unknown) => this.queueEvent(held, { id: job.id, attempt: job.attempt, progress: value ?? null }),
      log: (line: string) => this.queueEvent(held, { id: job.id, attempt: job.attempt, log: String(line) }),
    };
    held.running = true;
    this.runningTasks += 1;
    let body: ResultBody;
    try {
      const output = await task.fn(job.input, ctx);
      body = { id: job.id, attempt: job.attempt, output: jsonOrThrow(output) };
    } catch (err) {
      body = { id: job.id, attempt: job.attempt, error: errorBody(err, task.retryable) };
    } finally {
      held.running = false;
      this.runningTasks -= 1;
      clearTimeout(held.timer);
    }
    if (held.settled) {
      // Its result is not wanted (cancelled, timed out, lost, or handed back already).
      if (!held.reported) this.forget(held);
      return;
    }
    held.settled = true;
    this.queueResult(held, body);
  }

  /** Stops an attempt whose result will not be sent (or is sent as a release). */
  private abandon(held: Held, code: TaskAbortedError["code"], message: string): void {
    if (held.settled) return;
    held.settled = true;
    clearTimeout(held.timer);
    held.controller.abort(new TaskAbortedError(code, message));
    if (code === "shutdown") {
      this.queueResult(held, { id: held.job.id, attempt: held.job.attempt, release: true });
    } else if (!held.running) {
      this.forget(held);
    }
  }

  /** Frees an attempt's slot. */
  private forget(held: Held): void {
    const key = keyOf(held.job.id, held.job.attempt);
    if (this.held.get(key) === held) this.held.delete(key);
    this.bell.ring();
  }

  private queueResult(held: Held, body: ResultBody): void {
    held.reported = true;
    this.outbox.pushResult({ key: keyOf(held.job.id, held.job.attempt), generation: held.generation, body });
  }

  /** An attempt's result was acknowledged (or dropped): its slot is free once its task returned. */
  private done(key: string): void {
    const held = this.held.get(key);
    if (held) {
      held.reported = false;
      if (!held.running) this.held.delete(key);
      else held.settled = true; // still running (a release at shutdown): freed when it returns
    }
    this.bell.ring();
  }

  private queueEvent(held: Held, body: EventBody): void {
    if (held.settled) return;
    if ((held.events ?? 0) >= MAX_EVENTS) {
      if (held.events === MAX_EVENTS) {
        this.logger.warn(`job ${held.job.id}: an attempt writes at most ${MAX_EVENTS} events; dropping the rest`);
        held.events += 1;
      }
      return;
    }
    if ("log" in body) {
      body.log = truncateUtf8(body.log, MAX_LOG_BYTES);
    } else {
      let size: number;
      try {
        size = utf8Length(JSON.stringify(body.progress) ?? "null");
      } catch (err) {
        this.logger.warn(`job ${held.job.id}: progress dropped: it is not JSON (${(err as Error).message})`);
        return;
      }
      if (size > MAX_PROGRESS_BYTES) {
        this.logger.warn(`job ${held.job.id}: progress dropped: ${size} bytes of JSON, over ${MAX_PROGRESS_BYTES}`);
        return;
      }
    }
    held.events = (held.events ?? 0) + 1;
    this.outbox.pushEvent({ key: keyOf(held.job.id, held.job.attempt), generation: held.generation, body });
  }

  // ---- heartbeats -------------------------------------------------------------------

  private async heartbeatLoop(): Promise<void> {
    while (!this.life.signal.aborted) {
      const s = this.session;
      try {
        await sleep(s?.heartbeatMs ?? 1000, this.life.signal);
      } catch {
        return;
      }
      if (this.reopening || !this.session) continue;
      try {
        const answer = await this.call<{ cancel?: Array<{ id: string; attempt: number; reason?: string }> }>(
          "/heartbeat",
          {},
          { signal: this.life.signal, timeoutMs: Math.max(2000, this.session.heartbeatMs * 2) },
        );
        for (const c of answer.cancel ?? []) {
          const held = this.held.get(keyOf(c.id, c.attempt));
          if (!held) continue;
          const reason = c.reason === "timeout" ? "timeout" : c.reason === "lost" ? "lost" : "cancelled";
          this.logger.info(`job ${c.id} attempt ${c.attempt}: stop (${c.reason})`);
          this.abandon(held, reason, `the attempt was stopped by Ferry: ${c.reason ?? "lost"}`);
        }
      } catch (err) {
        if (this.life.signal.aborted) return;
        if (!(err instanceof FerryError && err.code === "unknown_session")) {
          this.logger.warn(`heartbeat failed: ${describe(err)}`);
        }
      }
    }
  }

  // ---- stopping ---------------------------------------------------------------------

  /** Lets running tasks finish within the grace, then hands the rest back. */
  private async drain(): Promise<void> {
    const grace = this.stopNow ? 0 : this.graceOverride ?? this.graceMs;
    const deadline = Date.now() + grace;
    const running = () => [...this.held.values()].filter((h) => h.running && !h.settled);
    while (running().length > 0 && Date.now() < deadline && !this.stopNow) {
      await this.bell.wait(Math.max(1, Math.min(1000, deadline - Date.now())));
    }
    const left = running();
    if (left.length > 0) {
      this.logger.warn(`handing back ${left.length} running job(s) at shutdown`);
      for (const h of left) this.abandon(h, "shutdown", "the worker is shutting down");
    }
    // Wait (at most 10 s more) for every result, the hand-backs included, to be reported.
    const flushBy = Date.now() + 10_000;
    const unreported = () =>
      this.outbox.results.length > 0 ||
      this.outbox.events.length > 0 ||
      this.pump.busy ||
      [...this.held.values()].some((h) => !h.running);
    while (unreported() && Date.now() < flushBy) {
      await this.bell.wait(250);
    }
  }
}


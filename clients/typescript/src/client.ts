import { FerryError, WaitTimeoutError } from "./errors.js";
import { type ConnectionOptions, Transport, sleep, waitParam } from "./http.js";
import { parseSse } from "./sse.js";
import {
  FINAL_JOB_STATES,
  FINAL_RUN_STATES,
  type Job,
  type JobAccepted,
  type JobEvent,
  type JobOptions,
  type JobPage,
  type JobSpec,
  type JobState,
  type Run,
  type RunAccepted,
  type RunEvent,
  type RunOptions,
  type RunState,
  type WorkflowAccepted,
  type WorkflowDefinition,
} from "./types.js";

/** Options of a waiting call. */
export interface WaitOptions {
  /** Give up after this long (ms) with a `WaitTimeoutError`. Default: wait as long as it takes. */
  timeoutMs?: number;
  /** Abort the wait (it rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** Options of an event stream. */
export interface StreamOptions {
  /** Start after this event id (what a previous stream's last event had). Default: from the start. */
  after?: number;
  /** Stop streaming: the iteration ends without an error. */
  signal?: AbortSignal;
  /**
   * Reconnect when no byte (not even the server's keep-alive comment) came for this long
   * (ms, default 60,000; the server sends a keep-alive every `sse_keep_alive_ms`, 15 s).
   */
  idleTimeoutMs?: number;
  /** Give up after this many reconnections in a row that brought no event (default 10). */
  maxReconnects?: number;
}

/** One wait of the server at most (it caps a wait at 60 s). */
const SERVER_WAIT_MS = 30_000;

function isFinalJob(state: string | undefined): boolean {
  return FINAL_JOB_STATES.includes(state as JobState);
}

function isFinalRun(state: string | undefined): boolean {
  return FINAL_RUN_STATES.includes(state as RunState);
}

function enc(id: string): string {
  return encodeURIComponent(id);
}

/**
 * A client of Ferry's HTTP API: jobs, workflows, runs and their event streams. Every
 * method throws `FerryError` for a refusal (`status`, `code`, `message`, `field`).
 *
 * ```ts
 * const ferry = new Client({url: "http://127.0.0.1:7700", token: process.env.FERRY_TOKEN});
 * const {id} = await ferry.submit("resize", {url: "https://…/a.png", width: 200}, {queue: "images"});
 * const job = await ferry.wait(id);          // or: await ferry.submitAndWait("resize", {...})
 * for await (const ev of ferry.streamEvents(id)) console.log(ev.type, ev.data);
 * ```
 *
 * Field names are the API's (`max_attempts`, `timeout_ms`, `attempts_used`, …), in
 * requests and in answers alike.
 */
export class Client {
  /** @internal */
  readonly transport: Transport;

  constructor(opts: ConnectionOptions = {}) {
    this.transport = new Transport(opts);
  }

  /** The server's base URL. */
  get url(): string {
    return this.transport.url;
  }

  // ---- jobs -------------------------------------------------------------------------

  /**
   * Submits a job of `kind` with `input`: answers at once with its id and state
   * (`created: false` when `idempotency_key` matched an existing job).
   */
  async submit(kind: string, input?: unknown, options: JobOptions = {}): Promise<JobAccepted> {
    const spec: JobSpec = { ...options, kind, input: input === undefined ? null : input };
    return (await this.transport.request<JobAccepted>("POST", "/v1/jobs", { body: spec })).body;
  }

  /** Submits up to 1000 jobs at once, all or nothing; the answers are in the order given. */
  async submitBatch(jobs: JobSpec[]): Promise<JobAccepted[]> {
    const answer = await this.transport.request<{ jobs: JobAccepted[] }>("POST", "/v1/jobs/batch", { body: { jobs } });
    return answer.body.jobs;
  }

  /**
   * Submits a job and waits until it ends (succeeded, dead or cancelled): answers the
   * final job, as `get` would. A job that fails is not an error here: look at its
   * `state` and `error`. Uses the server's `?wait=` (no polling).
   */
  async submitAndWait(kind: string, input?: unknown, options: JobOptions & WaitOptions = {}): Promise<Job> {
    const { timeoutMs, signal, ...jobOptions } = options;
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    const spec: JobSpec = { ...jobOptions, kind, input: input === undefined ? null : input };
    const wait = Math.min(SERVER_WAIT_MS, deadline - Date.now());
    const answer = await this.transport.request<Job | JobAccepted>("POST", "/v1/jobs", {
      body: spec,
      query: { wait: waitParam(wait) },
      signal,
      timeoutMs: this.transport.timeoutMs + wait,
    });
    const body = answer.body;
    // 200 with the final job; 201/202 (or 200 for a matched idempotency key) with the submit answer.
    if ("kind" in body && isFinalJob(body.state)) return body as Job;
    return this.waitUntil(`job ${body.id}`, deadline, signal, (ms) => this.get(body.id, { waitMs: ms, signal }), isFinalJob);
  }

  /**
   * One job with its attempts, output and error. With `waitMs`, the server answers as
   * soon as the job has ended, or with its current state when the wait is over (at most
   * 60 s).
   */
  async get(id: string, opts: { waitMs?: number; signal?: AbortSignal } = {}): Promise<Job> {
    const wait = opts.waitMs;
    const answer = await this.transport.request<Job>("GET", `/v1/jobs/${enc(id)}`, {
      query: { wait: wait === undefined ? undefined : waitParam(wait) },
      signal: opts.signal,
      timeoutMs: this.transport.timeoutMs + (wait ?? 0),
    });
    return answer.body;
  }

  /** Waits until the job has ended and answers it (see `submitAndWait`). */
  async wait(id: string, opts: WaitOptions = {}): Promise<Job> {
    const deadline = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
    return this.waitUntil(`job ${id}`, deadline, opts.signal, (ms) => this.get(id, { waitMs: ms, signal: opts.signal }), isFinalJob);
  }

  /** Jobs, newest first (`state: "dead"` is the dead-letter queue); pass `next_cursor` as `cursor` for the next page. */
  async list(filter: { state?: JobState; queue?: string; kind?: string; limit?: number; cursor?: string } = {}): Promise<JobPage> {
    return (await this.transport.request<JobPage>("GET", "/v1/jobs", { query: { ...filter } })).body;
  }

  /** Cancels a job: a waiting one never runs, a running attempt is stopped (its task's `ctx.signal` aborts). */
  async cancel(id: string): Promise<{ id: string; state: JobState }> {
    return (await this.transport.request<{ id: string; state: JobState }>("POST", `/v1/jobs/${enc(id)}/cancel`)).body;
  }

  /** Runs a dead or cancelled job again, with fresh attempts. */
  async replay(id: string): Promise<{ id: string; state: JobState }> {
    return (await this.transport.request<{ id: string; state: JobState }>("POST", `/v1/jobs/${enc(id)}/replay`)).body;
  }

  /** Deletes a finished job and its events. */
  async delete(id: string): Promise<void> {
    await this.transport.request("DELETE", `/v1/jobs/${enc(id)}`);
  }

  /** A job's event log so far, oldest first (after event id `after`, when given). */
  async events(id: string, opts: { after?: number } = {}): Promise<JobEvent[]> {
    const answer = await this.transport.request<{ events: JobEvent[] }>("GET", `/v1/jobs/${enc(id)}/events`, {
      query: { after: opts.after },
    });
    return answer.body.events;
  }

  /**
   * A job's events, live, as an async iterable: the log so far, then each event as it is
   * written, ending after the job's final event (`succeeded`, `dead` or `cancelled`). A
   * dropped connection is resumed where it broke off (`Last-Event-ID`), so no event is
   * missed or seen twice. Resume a stream of your own later with `after` = the last id.
   */
  streamEvents(id: string, opts: StreamOptions = {}): AsyncIterable<JobEvent> {
    return this.stream<JobEvent>(`/v1/jobs/${enc(id)}/events`, opts, (e) => isFinalJob(e.type), async () =>
      isFinalJob((await this.get(id)).state),
    );
  }

  // ---- workflows and runs -----------------------------------------------------------

  /** Registers a workflow: a new version of its name. */
  async registerWorkflow(definition: WorkflowDefinition): Promise<WorkflowAccepted> {
    return (await this.transport.request<WorkflowAccepted>("POST", "/v1/workflows", { body: definition })).body;
  }

  /** Starts a run of a workflow (its latest version unless `version` is given). */
  async startRun(workflow: string, input?: unknown, options: RunOptions = {}): Promise<RunAccepted> {
    const body = { ...options, workflow, input: input === undefined ? null : input };
    return (await this.transport.request<RunAccepted>("POST", "/v1/runs", { body })).body;
  }

  /** Starts a run and waits until it ends; answers the final run (with its nodes). */
  async runAndWait(workflow: string, input?: unknown, options: RunOptions & WaitOptions = {}): Promise<Run> {
    const { timeoutMs, signal, ...runOptions } = options;
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    const wait = Math.min(SERVER_WAIT_MS, deadline - Date.now());
    const answer = await this.transport.request<Run | RunAccepted>("POST", "/v1/runs", {
      body: { ...runOptions, workflow, input: input === undefined ? null : input },
      query: { wait: waitParam(wait) },
      signal,
      timeoutMs: this.transport.timeoutMs + wait,
    });
    const body = answer.body;
    if ("nodes" in body && isFinalRun(body.state)) return body as Run;
    return this.waitUntil(`run ${body.id}`, deadline, signal, (ms) => this.getRun(body.id, { waitMs: ms, signal }), isFinalRun);
  }

  /** A run with every node's state, output, error and jobs; `waitMs` as for `get`. */
  async getRun(id: string, opts: { waitMs?: number; signal?: AbortSignal } = {}): Promise<Run> {
    const wait = opts.waitMs;
    const answer = await this.transport.request<Run>("GET", `/v1/runs/${enc(id)}`, {
      query: { wait: wait === undefined ? undefined : waitParam(wait) },
      signal: opts.signal,
      timeoutMs: this.transport.timeoutMs + (wait ?? 0),
    });
    return answer.body;
  }

  /** Waits until the run has ended and answers it. */
  async waitRun(id: string, opts: WaitOptions = {}): Promise<Run> {
    const deadline = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
    return this.waitUntil(`run ${id}`, deadline, opts.signal, (ms) => this.getRun(id, { waitMs: ms, signal: opts.signal }), isFinalRun);
  }

  /** Cancels a run: running nodes stop, waiting ones never start. */
  async cancelRun(id: string): Promise<unknown> {
    return (await this.transport.request<unknown>("POST", `/v1/runs/${enc(id)}/cancel`)).body;
  }

  /** A run's event log so far. */
  async runEvents(id: string, opts: { after?: number } = {}): Promise<RunEvent[]> {
    const answer = await this.transport.request<{ events: RunEvent[] }>("GET", `/v1/runs/${enc(id)}/events`, {
      query: { after: opts.after },
    });
    return answer.body.events;
  }

  /** A run's events, live, ending after `run_finished`; resumes like `streamEvents`. */
  streamRunEvents(id: string, opts: StreamOptions = {}): AsyncIterable<RunEvent> {
    return this.stream<RunEvent>(`/v1/runs/${enc(id)}/events`, opts, (e) => e.type === "run_finished", async () =>
      isFinalRun((await this.getRun(id)).state),
    );
  }

  // ---- the machinery ----------------------------------------------------------------

  /**
   * Asks `look(waitMs)` until `done(state)`, each look a server-side wait of at most 30 s.
   * A look the server answered early without the end (a server without `?wait=`) is
   * followed by a short pause, so this never spins. Network failures are retried while
   * they are fewer than five in a row.
   */
  private async waitUntil<T extends { state: string }>(
    what: string,
    deadline: number,
    signal: AbortSignal | undefined,
    look: (waitMs: number) => Promise<T>,
    done: (state: string) => boolean,
  ): Promise<T> {
    let pause = 50;
    let failures = 0;
    let last: T | undefined;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new WaitTimeoutError(`${what} has not ended in time (last state: ${last?.state ?? "unknown"})`, last);
      const wait = Math.min(SERVER_WAIT_MS, left);
      const started = Date.now();
      try {
        last = await look(wait);
        failures = 0;
      } catch (err) {
        if (!(err instanceof FerryError) || err.status !== 0 || ++failures >= 5) throw err;
        await sleep(Math.min(2000, 250 * 2 ** failures), signal);
        continue;
      }
      if (done(last.state)) return last;
      if (Date.now() - started < Math.min(wait, 1000) / 2) {
        await sleep(Math.min(pause, Math.max(0, deadline - Date.now())), signal);
        pause = Math.min(1000, pause * 2);
      } else {
        pause = 50;
      }
    }
  }

  /** An event stream with resumption; see `streamEvents`. */
  private async *stream<E extends { id: number; type: string }>(
    path: string,
    opts: StreamOptions,
    isLast: (e: E) => boolean,
    hasEnded: () => Promise<boolean>,
  ): AsyncGenerator<E> {
    let last = opts.after;
    let idleReconnects = 0;
    const maxReconnects = opts.maxReconnects ?? 10;
    const idleMs = opts.idleTimeoutMs ?? 60_000;
    for (;;) {
      if (opts.signal?.aborted) return;
      let progressed = false;
      let failure: unknown = null;
      const conn = new AbortController();
      const signal = opts.signal ? AbortSignal.any([opts.signal, conn.signal]) : conn.signal;
      let idle: ReturnType<typeof setTimeout> | undefined;
      const arm = () => {
        clearTimeout(idle);
        idle = setTimeout(() => conn.abort(new Error("the event stream was idle too long")), idleMs);
      };
      try {
        arm();
        const headers: Record<string, string> = { accept: "text/event-stream" };
        if (last !== undefined) headers["last-event-id"] = String(last);
        const res = await this.transport.open("GET", path, { headers, signal, timeoutMs: 2 ** 31 - 1 });
        if (!res.body) throw new FerryError(res.status, "unexpected_response", `GET ${path}: no body`);
        const body = res.body.pipeThrough(
          new TransformStream<Uint8Array, Uint8Array>({
            transform(chunk, ctl) {
              arm();
              ctl.enqueue(chunk);
            },
          }),
        );
        for await (const msg of parseSse(body)) {
          if (msg.event === "revoked") {
            throw new FerryError(401, "unauthenticated", "the stream's token was revoked");
          }
          let event: E;
          try {
            event = JSON.parse(msg.data) as E;
          } catch {
            continue; // not an event of ours
          }
          if (last !== undefined && event.id <= last) continue;
          last = event.id;
          progressed = true;
          yield event;
          if (isLast(event)) return;
        }
      } catch (err) {
        if (opts.signal?.aborted) return;
        if (err instanceof FerryError && err.status !== 0 && err.status !== 429 && err.status < 500) throw err;
        // A body that broke off (or went idle) fails with fetch's own error: a network failure.
        failure =
          err instanceof FerryError
            ? err
            : new FerryError(0, "network", `GET ${path}: the event stream broke off: ${(err as Error)?.message ?? String(err)}`, null, {
                cause: err,
              });
      } finally {
        clearTimeout(idle);
        conn.abort();
      }
      // The connection ended without the final event: resume after the last one.
      if (progressed) idleReconnects = 0;
      else if (++idleReconnects > maxReconnects) {
        throw failure ?? new FerryError(0, "network", `GET ${path}: the stream kept ending without its final event`);
      }
      if (failure === null && !progressed && (await hasEnded())) return;
      const retryAfter = failure instanceof FerryError ? failure.retryAfterMs : null;
      try {
        await sleep(retryAfter ?? Math.min(5000, 100 * 2 ** idleReconnects), opts.signal);
      } catch {
        return;
      }
    }
  }
}

// The worker against a scripted implementation of the worker protocol
// (docs/worker-protocol.md), in the test process: the requests it makes, byte for byte
// where it matters, and what it does with answers a real server gives rarely
// (`unknown_session`, a cancel in a heartbeat).

import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import test from "node:test";
import { NonRetryableError, RetryableError, type TaskContext, Worker } from "../src/index.js";
import { type Fake, type Seen, fakeServer, json, refuse } from "./fake.js";
import { until } from "./helpers.js";

interface Job {
  id: string;
  attempt: number;
  kind: string;
  queue: string;
  workspace: string;
  run: null;
  input: unknown;
  timeout_ms: number;
  soft_timeout_ms: null;
}

/** A protocol server with a queue of jobs to hand out and a record of what came back. */
class FakeFerry {
  fake!: Fake;
  sessions: string[] = [];
  closed: string[] = [];
  queue: Job[] = [];
  results: Array<Record<string, unknown>> = [];
  events: Array<Record<string, unknown>> = [];
  /** The sessions' `max_wait_ms`. */
  maxWaitMs = 1000;
  /** Refuses a result as invalid (400 naming it) when this answers a message. */
  invalid: (result: Record<string, unknown>) => string | null = () => null;
  /** What the next heartbeats answer, in order; then `{"cancel": []}`. */
  heartbeats: Array<(res: ServerResponse) => void> = [];
  private waiting: { res: ServerResponse; max: number; timer: ReturnType<typeof setTimeout> } | null = null;
  private n = 0;

  async start(): Promise<this> {
    this.fake = await fakeServer((req, res) => this.handle(req, res));
    return this;
  }

  get url(): string {
    return this.fake.url;
  }

  calls(suffix: string): Seen[] {
    return this.fake.seen.filter((s) => s.path.endsWith(suffix));
  }

  push(kind: string, input: unknown, attempt = 1): string {
    this.n += 1;
    const id = `0192c1d2-0000-4000-8000-${String(this.n).padStart(12, "0")}`;
    this.queue.push({ id, attempt, kind, queue: "q", workspace: "default", run: null, input, timeout_ms: 30_000, soft_timeout_ms: null });
    this.wake();
    return id;
  }

  /** Forgets the current session: every call about it is 404 `unknown_session` from now on. */
  forget(): void {
    this.sessions.push("fake:forgotten");
    const w = this.waiting;
    if (w) {
      this.waiting = null;
      clearTimeout(w.timer);
      refuse(w.res, 404, "unknown_session");
    }
  }

  private wake(): void {
    const w = this.waiting;
    if (w && this.queue.length > 0) {
      this.waiting = null;
      clearTimeout(w.timer);
      json(w.res, 200, { jobs: this.queue.splice(0, w.max) });
    }
  }

  private handle(req: Seen, res: ServerResponse): void {
    const p = req.path;
    if (req.method === "POST" && p === "/v1/workers/sessions") {
      const id = `fake:${this.sessions.length + 1}`;
      this.sessions.push(id);
      return json(res, 201, { session: id, protocol: 1, heartbeat_ms: 100, session_timeout_ms: 3000, max_wait_ms: this.maxWaitMs });
    }
    const m = p.match(/^\/v1\/workers\/sessions\/([^/]+)(\/[a-z]+)?$/);
    if (!m) return refuse(res, 404, "not_found");
    const session = decodeURIComponent(m[1]);
    if (session !== this.sessions.at(-1) || this.closed.includes(session)) return refuse(res, 404, "unknown_session");
    const body = (req.body ?? {}) as Record<string, any>;
    switch (m[2] ?? "") {
      case "":
        this.closed.push(session);
        res.writeHead(204);
        return res.end();
      case "/lease": {
        if (this.waiting) {
          const w = this.waiting;
          this.waiting = null;
          clearTimeout(w.timer);
          json(w.res, 200, { jobs: [] });
        }
        if (this.queue.length > 0 || body.wait_ms === 0) return json(res, 200, { jobs: this.queue.splice(0, body.max ?? 1) });
        const timer = setTimeout(() => {
          if (this.waiting?.res === res) this.waiting = null;
          json(res, 200, { jobs: [] });
        }, body.wait_ms ?? 1000);
        this.waiting = { res, max: body.max ?? 1, timer };
        return;
      }
      case "/heartbeat": {
        const next = this.heartbeats.shift();
        return next ? next(res) : json(res, 200, { cancel: [] });
      }
      case "/events":
        this.events.push(...body.events);
        return json(res, 200, { accepted: body.events.map(() => true) });
      case "/complete": {
        const bad = (body.results as Array<Record<string, unknown>>).findIndex((r) => this.invalid(r) !== null);
        if (bad >= 0) {
          return json(res, 400, {
            error: { code: "invalid_field", message: this.invalid(body.results[bad]), field: `results[${bad}]` },
          });
        }
        this.results.push(...body.results);
        return json(res, 200, { results: body.results.map((r: { id: string }) => ({ id: r.id, accepted: true })) });
      }
    }
    refuse(res, 404, "not_found");
  }

  result(id: string): Record<string, unknown> | undefined {
    return this.results.find((r) => r.id === id);
  }

  async close(): Promise<void> {
    if (this.waiting) clearTimeout(this.waiting.timer);
    await this.fake.close();
  }
}

const quiet = { info() {}, warn() {}, error() {} };

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
}

test("registers, leases up to its free slots, maps outcomes and errors, reports events before results", async () => {
  const ferry = await new FakeFerry().start();
  const worker = new Worker({ url: ferry.url, concurrency: 3, name: "fake-test", logger: quiet });
  worker.task("echo", { queue: "q" }, async (input: unknown, ctx: TaskContext) => {
    ctx.progress({ done: 1 });
    ctx.log("echoing");
    return { input, attempt: ctx.attempt, jobId: ctx.jobId };
  });
  worker.task("nothing", async () => undefined);
  worker.task("invalid", async () => {
    throw new NonRetryableError("width must be positive", { type: "validation" });
  });
  worker.task("typeerror", async () => {
    throw new TypeError("x is not a function");
  });
  worker.task("later", async () => {
    throw new RetryableError("slow down", { retryAfterMs: 1500 });
  });
  worker.task("strict", { retryable: false }, () => {
    throw new Error("plain, but this kind never retries");
  });
  worker.task("unjson", async () => ({ big: 1n }));
  const running = worker.run();
  try {
    const ids = {
      echo: ferry.push("echo", { a: 1 }, 2),
      nothing: ferry.push("nothing", null),
      invalid: ferry.push("invalid", null),
      typeerror: ferry.push("typeerror", null),
      later: ferry.push("later", null),
      strict: ferry.push("strict", null),
      unjson: ferry.push("unjson", null),
    };
    await until("every result", async () => ferry.results.length, (n) => n >= 7, 20_000);

    const [register] = ferry.calls("/v1/workers/sessions");
    assert.deepEqual(register.body, {
      protocol: 1,
      name: "fake-test",
      concurrency: 3,
      kinds: [{ kind: "echo", queue: "q" }, { kind: "nothing" }, { kind: "invalid" }, { kind: "typeerror" }, { kind: "later" }, { kind: "strict" }, { kind: "unjson" }],
    });
    for (const lease of ferry.calls("/lease")) {
      const b = lease.body as { max: number; wait_ms: number };
      assert.ok(b.max >= 1 && b.max <= 3, `max ${b.max} within the free slots`);
      assert.equal(b.wait_ms, 1000, "waits the server's max_wait_ms");
    }
    assert.equal((ferry.calls("/lease")[0].body as { max: number }).max, 3);

    assert.deepEqual(ferry.result(ids.echo), { id: ids.echo, attempt: 2, output: { input: { a: 1 }, attempt: 2, jobId: ids.echo } });
    assert.deepEqual(ferry.result(ids.nothing), { id: ids.nothing, attempt: 1, output: null });
    assert.deepEqual(ferry.result(ids.invalid), {
      id: ids.invalid,
      attempt: 1,
      error: { type: "validation", message: "width must be positive", retryable: false },
    });
    assert.deepEqual(ferry.result(ids.typeerror), {
      id: ids.typeerror,
      attempt: 1,
      error: { type: "TypeError", message: "x is not a function", retryable: true },
    });
    assert.deepEqual(ferry.result(ids.later), {
      id: ids.later,
      attempt: 1,
      error: { type: "RetryableError", message: "slow down", retryable: true, retry_after_ms: 1500 },
    });
    assert.deepEqual(ferry.result(ids.strict), {
      id: ids.strict,
      attempt: 1,
      error: { type: "Error", message: "plain, but this kind never retries", retryable: false },
    });
    const unjson = ferry.result(ids.unjson) as { error: { type: string; retryable: boolean } };
    assert.equal(unjson.error.type, "TypeError");
    assert.equal(unjson.error.retryable, false);

    assert.deepEqual(ferry.events, [
      { id: ids.echo, attempt: 2, progress: { done: 1 } },
      { id: ids.echo, attempt: 2, log: "echoing" },
    ]);
    // The events went out in a call before the one with the echo's result.
    const order = ferry.fake.seen.filter((s) => s.path.endsWith("/events") || s.path.endsWith("/complete"));
    const firstEvents = order.findIndex((s) => s.path.endsWith("/events"));
    const echoResult = order.findIndex(
      (s) => s.path.endsWith("/complete") && (s.body as { results: Array<{ id: string }> }).results.some((r) => r.id === ids.echo),
    );
    assert.ok(firstEvents >= 0 && firstEvents < echoResult, "events before the result");
    assert.ok(ferry.calls("/heartbeat").length >= 0);
  } finally {
    await worker.stop();
    await running;
    await ferry.close();
  }
  assert.deepEqual(ferry.closed, ["fake:1"], "the session is closed at stop");
});

test("a heartbeat's cancel aborts the task's signal, and no result is sent for it", async () => {
  const ferry = await new FakeFerry().start();
  const worker = new Worker({ url: ferry.url, concurrency: 2, logger: quiet });
  let reason: unknown = null;
  let started = false;
  worker.task("block", async (_input: unknown, ctx: TaskContext) => {
    started = true;
    try {
      await pause(60_000, ctx.signal);
    } catch (err) {
      reason = err;
      throw err;
    }
  });
  const running = worker.run();
  try {
    const id = ferry.push("block", null);
    await until("the task to start", async () => started, (s) => s, 10_000);
    ferry.heartbeats.push((res) => json(res, 200, { cancel: [{ id, attempt: 1, reason: "cancelled" }] }));
    await until("the abort", async () => reason, (r) => r !== null, 10_000);
    assert.equal((reason as { code: string }).code, "cancelled");
    assert.equal((reason as Error).name, "AbortError");
    await until("the slot to free", async () => worker.inFlight, (n) => n === 0, 10_000);
    assert.equal(ferry.result(id), undefined, "no result for a cancelled attempt");
  } finally {
    await worker.stop();
    await running;
    await ferry.close();
  }
});

test("unknown_session: the worker drops what it ran and registers again", async () => {
  const ferry = await new FakeFerry().start();
  const worker = new Worker({ url: ferry.url, concurrency: 2, logger: quiet });
  let aborted = 0;
  worker.task("block", async (_input: unknown, ctx: TaskContext) => {
    try {
      await pause(60_000, ctx.signal);
    } catch (err) {
      aborted += 1;
      throw err;
    }
  });
  worker.task("echo", async (input: unknown) => input);
  const running = worker.run();
  try {
    ferry.push("block", null);
    await until("the task to start", async () => worker.inFlight, (n) => n === 1, 10_000);
    ferry.forget();
    await until("a second registration", async () => ferry.calls("/v1/workers/sessions").length, (n) => n >= 2, 10_000);
    await until("the dropped task", async () => aborted, (n) => n === 1, 10_000);
    const id = ferry.push("echo", { after: "reopen" });
    await until("the echo on the new session", async () => ferry.result(id), (r) => r !== undefined, 10_000);
    assert.deepEqual(ferry.result(id), { id, attempt: 1, output: { after: "reopen" } });
    const last = ferry.calls("/complete").at(-1) as Seen;
    assert.equal(last.path, `/v1/workers/sessions/${encodeURIComponent(ferry.sessions.at(-1) as string)}/complete`);
  } finally {
    await worker.stop();
    await running;
    await ferry.close();
  }
});

test("stop: the waiting lease call is ended by a new one, running tasks finish within the grace, the rest are released", async () => {
  const ferry = await new FakeFerry().start();
  ferry.maxWaitMs = 20_000;
  const worker = new Worker({ url: ferry.url, concurrency: 3, shutdownGraceMs: 500, logger: quiet });
  const started = new Set<string>();
  worker.task("sleep", async (input: { ms: number }, ctx: TaskContext) => {
    started.add(ctx.jobId);
    await pause(input.ms, ctx.signal);
    return { slept: input.ms };
  });
  const running = worker.run();
  const quick = ferry.push("sleep", { ms: 200 });
  const slow = ferry.push("sleep", { ms: 60_000 });
  await until("both to start", async () => started.size, (n) => n === 2, 10_000);
  // One slot is free: a lease call is waiting for it (up to 20 s).
  await until("a waiting lease", async () => ferry.calls("/lease").length, (n) => n >= 2, 10_000);
  const t0 = Date.now();
  await worker.stop();
  await running;
  assert.ok(Date.now() - t0 < 10_000, "stopped promptly");
  assert.deepEqual(ferry.result(quick), { id: quick, attempt: 1, output: { slept: 200 } });
  assert.deepEqual(ferry.result(slow), { id: slow, attempt: 1, release: true });
  assert.ok(Date.now() - t0 < 2500, `stopped ${Date.now() - t0} ms after stop() (grace 500 ms), the lease call not waited for`);
  const lastLease = ferry.calls("/lease").at(-1) as Seen;
  assert.deepEqual(lastLease.body, { max: 1, wait_ms: 0 }, "a new lease call ends the waiting one");
  assert.deepEqual(ferry.closed, ["fake:1"]);
  await ferry.close();
});

test("log lines and progress are held to the protocol's limits", async () => {
  const ferry = await new FakeFerry().start();
  const worker = new Worker({ url: ferry.url, concurrency: 1, logger: quiet });
  worker.task("chatty", async (_input: unknown, ctx: TaskContext) => {
    ctx.log("é".repeat(3000)); // 6,000 bytes: cut to 4,096
    ctx.progress({ blob: "x".repeat(5000) }); // over 4 KiB: dropped
    ctx.progress({ ok: true });
    for (let i = 0; i < 1100; i++) ctx.log(`line ${i}`); // past 1,000 events: dropped
    return "done";
  });
  const running = worker.run();
  try {
    const id = ferry.push("chatty", null);
    await until("the result", async () => ferry.result(id), (r) => r !== undefined, 10_000);
    const log = ferry.events[0] as { log: string };
    assert.ok(new TextEncoder().encode(log.log).length <= 4096);
    assert.ok(log.log.endsWith("…") && log.log.startsWith("éé"));
    assert.deepEqual(ferry.events[1], { id, attempt: 1, progress: { ok: true } });
    assert.equal(ferry.events.length, 1000);
    assert.ok(ferry.calls("/events").every((c) => (c.body as { events: unknown[] }).events.length <= 100));
  } finally {
    await worker.stop();
    await running;
    await ferry.close();
  }
});

test("a result Ferry refuses as invalid fails its attempt with invalid_result; the rest of the call goes through", async () => {
  const ferry = await new FakeFerry().start();
  ferry.invalid = (r) => (Object.hasOwn(r, "output") && (r.output as { bad?: boolean })?.bad ? "not this one" : null);
  const worker = new Worker({ url: ferry.url, concurrency: 3, logger: quiet });
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  worker.task("t", async (input: { bad?: boolean; n: number }) => {
    await gate; // all three finish together: one complete call
    return input;
  });
  const running = worker.run();
  try {
    const good1 = ferry.push("t", { n: 1 });
    const bad = ferry.push("t", { n: 2, bad: true });
    const good2 = ferry.push("t", { n: 3 });
    await until("all three to run", async () => worker.inFlight, (n) => n === 3, 10_000);
    release();
    await until("three results", async () => ferry.results.length, (n) => n === 3, 10_000);
    assert.deepEqual(ferry.result(good1), { id: good1, attempt: 1, output: { n: 1 } });
    assert.deepEqual(ferry.result(good2), { id: good2, attempt: 1, output: { n: 3 } });
    assert.deepEqual(ferry.result(bad), {
      id: bad,
      attempt: 1,
      error: { type: "invalid_result", message: "Ferry refused the task's result (results[1]: not this one)", retryable: false },
    });
  } finally {
    await worker.stop();
    await running;
    await ferry.close();
  }
});

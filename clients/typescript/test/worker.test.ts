// The worker against a real `ferry server`: worker processes (`dist/test/fixtures/worker.js`)
// with task functions, jobs submitted from this process.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Client, FerryError, type Job, type TaskFunction, WaitTimeoutError, Worker } from "../src/index.js";
import { DEADLINE_MS, type Proc, type Server, createToken, ferryBin, startServer, startWorker, until } from "./helpers.js";

const bin = ferryBin();
const skip = bin === null ? "no ferry binary (FERRY_BIN)" : false;
/** Short leases, so that a killed worker's job is retried within seconds. */
const SERVER_ENV = { FERRY_LEASE_MS: "3000", FERRY_HEARTBEAT_MS: "1000" };
const T = { timeout: 2 * DEADLINE_MS };

function attemptsOf(job: Job): NonNullable<Job["attempts"]> {
  return job.attempts ?? [];
}

describe("worker: outcomes, errors, cancellation, workflows", { skip }, () => {
  let server: Server;
  let ferry: Client;
  let worker: Proc;

  before(async () => {
    server = await startServer(bin as string, SERVER_ENV);
    ferry = new Client({ url: server.url });
    worker = await startWorker(server.url, { CONCURRENCY: "4" });
  });

  after(async () => {
    await worker?.stop("SIGKILL").catch(() => {});
    await server?.close();
  });

  test("a task's output, progress and log lines", T, async () => {
    const job = await ferry.submitAndWait("ts_echo", { n: 1 }, { timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "succeeded", JSON.stringify(job));
    assert.equal(job.queue, "ts");
    assert.deepEqual(job.output, { input: { n: 1 }, attempt: 1, pid: worker.pid, queue: "ts", kind: "ts_echo" });
    const types = (await ferry.events(job.id)).map((e) => e.type);
    assert.ok(types.includes("progress"), `a progress event among ${types}`);
    assert.ok(types.includes("log"), `a log event among ${types}`);
    assert.ok(types.indexOf("log") < types.indexOf("succeeded"));
  });

  // Any JSON is an output, `null` included (`{"output": null}` in `complete`).
  test("a task that returns nothing succeeds with output null", T, async () => {
    const job = await ferry.submitAndWait("ts_nothing", null, { max_attempts: 1, timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "succeeded", JSON.stringify(job));
    assert.equal(job.output, null);
  });

  test("an output over the server's body limit fails the attempt with invalid_result", T, async () => {
    const job = await ferry.submitAndWait("ts_huge", { mib: 17 }, { max_attempts: 2, timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "dead", JSON.stringify(job).slice(0, 2000));
    assert.equal(job.attempts_used, 1);
    assert.match(job.error?.message ?? "", /^invalid_result: Ferry refused the task's result \(413/);
  });

  test("an exception is retried until the task succeeds", T, async () => {
    const job = await ferry.submitAndWait(
      "ts_flaky",
      { succeed_on: 3 },
      { max_attempts: 3, backoff: { initial_ms: 50, jitter: "none" }, timeoutMs: DEADLINE_MS },
    );
    assert.equal(job.state, "succeeded", JSON.stringify(job));
    assert.equal(job.attempts_used, 3);
    assert.deepEqual(job.output, { attempt: 3 });
    const first = attemptsOf(job)[0];
    assert.equal(first.error?.type, "task");
    assert.match(first.error?.message ?? "", /FlakyError/);
    assert.equal(first.error?.retryable, true);
  });

  test("RetryableError with retryAfterMs is retried", T, async () => {
    const job = await ferry.submitAndWait("ts_later", null, { max_attempts: 3, timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "succeeded", JSON.stringify(job));
    assert.equal(job.attempts_used, 2);
    assert.equal(attemptsOf(job)[0].error?.type, "rate_limited");
  });

  test("a non-retryable error sends the job to the dead-letter queue at once", T, async () => {
    const job = await ferry.submitAndWait("ts_invalid", null, { max_attempts: 5, timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "dead", JSON.stringify(job));
    assert.equal(job.attempts_used, 1);
    assert.equal(job.error?.type, "validation");
    assert.equal(job.error?.retryable, false);
    assert.match(job.error?.message ?? "", /width must be positive/);
    const dlq = await ferry.list({ state: "dead", kind: "ts_invalid" });
    assert.ok(dlq.items.some((j) => j.id === job.id));

    const strict = await ferry.submitAndWait("ts_strict", null, { max_attempts: 5, timeoutMs: DEADLINE_MS });
    assert.equal(strict.state, "dead", JSON.stringify(strict));
    assert.equal(strict.attempts_used, 1);
    assert.equal(strict.error?.type, "task");
    assert.match(strict.error?.message ?? "", /RangeError/);
  });

  test("a cancel reaches the running task through ctx.signal", T, async () => {
    const { id } = await ferry.submit("ts_sleep", { ms: 600_000 });
    await worker.out.waitFor(new RegExp(`^STARTED ${id} 1$`), "the task to start");
    const cancelled = await ferry.cancel(id);
    assert.equal(cancelled.state, "cancelled");
    await worker.out.waitFor(new RegExp(`^ABORTED ${id} 1 cancelled$`), "the task's signal to abort");
    const job = await ferry.get(id);
    assert.equal(job.state, "cancelled");
    // The worker's slot is free again: it still runs jobs.
    assert.equal((await ferry.submitAndWait("ts_echo", 2, { timeoutMs: DEADLINE_MS })).state, "succeeded");
  });

  test("an attempt past its timeout_ms: the task's signal aborts (timeout), the attempt fails with timeout", T, async () => {
    const { id } = await ferry.submit("ts_sleep", { ms: 600_000 }, { timeout_ms: 1500, max_attempts: 1 });
    await worker.out.waitFor(new RegExp(`^ABORTED ${id} 1 timeout$`), "the task's signal to abort");
    const job = await ferry.wait(id, { timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "dead", JSON.stringify(job));
    assert.equal(job.error?.type, "timeout");
  });

  test("a workflow mixing a remote kind with http", T, async () => {
    await ferry.registerWorkflow({
      name: "ts-mixed",
      nodes: [
        { id: "probe", kind: "http", input: { url: `${server.url}/healthz` } },
        { id: "echo", kind: "ts_echo", depends_on: ["probe"], input: { status: "{{ nodes.probe.output.status }}" } },
      ],
    });
    const run = await ferry.runAndWait("ts-mixed", {}, { timeoutMs: DEADLINE_MS });
    assert.equal(run.state, "succeeded", JSON.stringify(run));
    const echo = run.nodes?.find((n) => n.id === "echo");
    assert.deepEqual((echo?.output as { input: unknown }).input, { status: 200 });
    const types = new Set((await ferry.runEvents(run.id)).map((e) => e.type));
    assert.ok(types.has("run_finished"));
  });
});

describe("worker: one pump leases and reports in batches (in this process)", { skip }, () => {
  let server: Server;
  let ferry: Client;
  const workers: Worker[] = [];

  before(async () => {
    server = await startServer(bin as string, SERVER_ENV);
    ferry = new Client({ url: server.url });
  });

  after(async () => {
    for (const w of workers) await w.stop({ graceMs: 0 }).catch(() => {});
    await server?.close();
  });

  /** Starts a worker in this process serving `kind` with `fn`, and waits for its session. */
  async function serve(kind: string, concurrency: number, fn: TaskFunction): Promise<Worker> {
    const w = new Worker({ url: server.url, concurrency, logger: null, name: `in-process-${kind}` });
    w.task(kind, { queue: `q-${kind}` }, fn);
    workers.push(w);
    const running = w.run();
    running.catch(() => {});
    await until("the in-process worker's session", async () => w.sessionId, (id) => id !== null);
    return w;
  }

  /** Registers `kind` with a short-lived worker, which then stops: its jobs wait in the store. */
  async function register(kind: string): Promise<void> {
    const w = await serve(kind, 1, () => null);
    await w.stop();
  }

  test("400 jobs waiting, concurrency 10: each runs once, in at most a quarter of a lease/complete call per job", T, async () => {
    const kind = "ts_batch_noop";
    await register(kind);
    const specs = Array.from({ length: 400 }, (_, i) => ({ kind, input: { i } }));
    const accepted = await ferry.submitBatch(specs);
    assert.equal(accepted.length, 400);
    const runs = new Map<string, number>();
    const worker = await serve(kind, 10, (_input, ctx) => {
      runs.set(ctx.jobId, (runs.get(ctx.jobId) ?? 0) + 1);
      return null;
    });
    for (const { id } of accepted) {
      const job = await ferry.wait(id, { timeoutMs: DEADLINE_MS });
      assert.equal(job.state, "succeeded", JSON.stringify(job));
      assert.equal(job.attempts_used, 1, JSON.stringify(job));
    }
    const stats = worker.stats;
    await worker.stop();
    assert.equal(runs.size, 400);
    for (const [id, n] of runs) assert.equal(n, 1, `job ${id} ran ${n} times`);
    assert.ok(stats.jobs >= 400, JSON.stringify(stats));
    const calls = (stats.calls.lease ?? 0) + (stats.calls.complete ?? 0);
    assert.ok(calls <= 100, `${calls} lease and complete calls for 400 jobs: ${JSON.stringify(stats)}`);
  });

  // Ferry refuses an attempt's events once its result is in: every event reaching the
  // job's log, before its end, shows they went first even when results ride in leases.
  test("progress and log events reach Ferry before the results that follow them", T, async () => {
    const kind = "ts_batch_chatty";
    await register(kind);
    const accepted = await ferry.submitBatch(Array.from({ length: 60 }, (_, i) => ({ kind, input: { i } })));
    await serve(kind, 10, (input: { i: number }, ctx) => {
      ctx.log(`first line of ${input.i}`);
      ctx.progress({ done: 1, total: 2 });
      ctx.log(`second line of ${input.i}`);
      ctx.progress({ done: 2, total: 2 });
      return { i: input.i };
    });
    for (const [i, { id }] of accepted.entries()) {
      const job = await ferry.wait(id, { timeoutMs: DEADLINE_MS });
      assert.equal(job.state, "succeeded", JSON.stringify(job));
      const events = await ferry.events(id);
      const types = events.map((e) => e.type);
      const lines = events.filter((e) => e.type === "log").map((e) => (e.data as { line: string }).line);
      assert.deepEqual(lines, [`first line of ${i}`, `second line of ${i}`], JSON.stringify(events));
      assert.equal(types.filter((t) => t === "progress").length, 2, JSON.stringify(types));
      assert.ok(types.lastIndexOf("log") < types.indexOf("succeeded"), JSON.stringify(types));
      assert.ok(types.lastIndexOf("progress") < types.indexOf("succeeded"), JSON.stringify(types));
    }
  });
});

describe("the protocol, as the worker relies on it", { skip }, () => {
  let server: Server;

  before(async () => {
    server = await startServer(bin as string, SERVER_ENV);
  });

  after(async () => {
    await server?.close();
  });

  async function post(path: string, body: unknown): Promise<{ status: number; body: any }> {
    const res = await fetch(`${server.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }

  // docs/worker-protocol.md §2: "A session has at most one lease call waiting: a new one
  // ends the one before with {"jobs": []}" (how a stopping worker ends its long poll).
  test("a new lease call ends the waiting one", T, async () => {
    const opened = await post("/v1/workers/sessions", { protocol: 1, concurrency: 2, kinds: [{ kind: "ts_proto", queue: "ts-proto" }] });
    assert.equal(opened.status, 201, JSON.stringify(opened.body));
    const lease = `/v1/workers/sessions/${encodeURIComponent(opened.body.session)}/lease`;
    const started = Date.now();
    const first = post(lease, { max: 2, wait_ms: 8000 });
    // Nothing says when the server has the first call: a pause (not an assertion) lets it arrive.
    await new Promise((r) => setTimeout(r, 500));
    const second = await post(lease, { max: 1, wait_ms: 0 });
    assert.deepEqual(second, { status: 200, body: { jobs: [] } });
    const ended = await first;
    assert.deepEqual(ended, { status: 200, body: { jobs: [] } });
    assert.ok(Date.now() - started < 4000, `the first call ended ${Date.now() - started} ms after it began, not at once`);
  });
});

describe("worker: kill -9 mid-job", { skip }, () => {
  let server: Server;
  const workers: Proc[] = [];

  before(async () => {
    server = await startServer(bin as string, SERVER_ENV);
  });

  after(async () => {
    for (const w of workers) await w.stop("SIGKILL").catch(() => {});
    await server?.close();
  });

  test("the job is retried by another worker after the lease", T, async () => {
    const ferry = new Client({ url: server.url });
    const first = await startWorker(server.url, { CONCURRENCY: "1", NAME: "first" });
    workers.push(first);
    const { id } = await ferry.submit("ts_sleep", { first_ms: 600_000, ms: 100 }, { max_attempts: 3 });
    await first.out.waitFor(new RegExp(`^STARTED ${id} 1$`), "the first attempt to start");
    await first.stop("SIGKILL");
    const second = await startWorker(server.url, { CONCURRENCY: "1", NAME: "second" });
    workers.push(second);
    const job = await ferry.wait(id, { timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "succeeded", JSON.stringify(job));
    assert.deepEqual(job.output, { slept_ms: 100, pid: second.pid, attempt: 2 });
    const attempts = attemptsOf(job);
    assert.equal(attempts[0].error?.type, "worker_lost", JSON.stringify(attempts));
  });
});

describe("worker: kill -9 with a lease call waiting", { skip }, () => {
  let server: Server;
  const workers: Proc[] = [];

  before(async () => {
    server = await startServer(bin as string, SERVER_ENV);
  });

  after(async () => {
    for (const w of workers) await w.stop("SIGKILL").catch(() => {});
    await server?.close();
  });

  // A session with a lease call waiting is alive, but a call whose client hung up stops
  // counting: a worker killed while it long-polls (any worker with a free slot) loses its
  // session after the session timeout, and its attempts fail with `worker_lost`.
  test(
    "a worker killed while a lease call waits: its session expires, the job is retried (worker_lost)",
    T,
    async () => {
      const ferry = new Client({ url: server.url });
      const first = await startWorker(server.url, { CONCURRENCY: "2", NAME: "first-idle-slot" });
      workers.push(first);
      const { id } = await ferry.submit("ts_sleep", { first_ms: 600_000, ms: 100 }, { max_attempts: 3, timeout_ms: 10_000 });
      await first.out.waitFor(new RegExp(`^STARTED ${id} 1$`), "the first attempt to start");
      // The worker's other slot has a lease call waiting (its wait is far longer than the test).
      await first.out.waitFor(/^LEASING 1$/, "a lease call for the free slot");
      // The line is printed as the call goes out; nothing says when the server has it. A
      // pause (not an assertion) makes sure it is waiting there when the worker dies.
      await new Promise((r) => setTimeout(r, 500));
      await first.stop("SIGKILL");
      const second = await startWorker(server.url, { CONCURRENCY: "1", NAME: "second-after-idle" });
      workers.push(second);
      // What the job looks like after 45 s, ended or not .
      const job = (await ferry
        .wait(id, { timeoutMs: 45_000 })
        .catch((err) => (err instanceof WaitTimeoutError ? err.last : Promise.reject(err)))) as Job;
      const sessions = await fetch(`${server.url}/v1/workers/sessions`).then((r) => r.json());
      assert.equal(job.state, "succeeded", `${JSON.stringify(job)}\nsessions: ${JSON.stringify(sessions)}`);
      assert.equal(attemptsOf(job)[0].error?.type, "worker_lost", JSON.stringify(attemptsOf(job)));
    },
  );
});

describe("worker: SIGTERM drains", { skip }, () => {
  let server: Server;
  const workers: Proc[] = [];

  before(async () => {
    server = await startServer(bin as string, SERVER_ENV);
  });

  after(async () => {
    for (const w of workers) await w.stop("SIGKILL").catch(() => {});
    await server?.close();
  });

  test("running jobs finish within the grace, the rest are handed back and run elsewhere", T, async () => {
    const ferry = new Client({ url: server.url });
    // Three slots for two jobs: a lease call is waiting when the signal comes, and is abandoned.
    const draining = await startWorker(server.url, { CONCURRENCY: "3", GRACE_MS: "3000", NAME: "draining" });
    workers.push(draining);
    const quick = await ferry.submit("ts_sleep", { ms: 1000 });
    const slow = await ferry.submit("ts_sleep", { ms: 600_000 });
    await draining.out.waitFor(new RegExp(`^STARTED ${quick.id} 1$`), "the quick job to start");
    await draining.out.waitFor(new RegExp(`^STARTED ${slow.id} 1$`), "the slow job to start");
    const signalled = Date.now();
    const exit = await draining.stop("SIGTERM");
    assert.deepEqual(exit, { code: 0, signal: null }, draining.out.lines.join("\n"));
    const took = Date.now() - signalled;
    assert.ok(took < 15_000, `stopped ${took} ms after SIGTERM (grace 3 s)`);
    assert.ok(draining.out.lines.includes("EXIT"), "run() resolved");
    await draining.out.waitFor(new RegExp(`^ABORTED ${slow.id} 1 shutdown$`), "the slow job's abort");

    const q = await ferry.get(quick.id);
    assert.equal(q.state, "succeeded", JSON.stringify(q));
    assert.equal(q.attempts_used, 1);
    const s = await until(
      "the slow job to be handed back",
      () => ferry.get(slow.id),
      (j) => j.state === "queued",
    );
    assert.equal(s.attempts_used, 0, `a released attempt does not count: ${JSON.stringify(s)}`);

    const next = await startWorker(server.url, { CONCURRENCY: "1", NAME: "next", MAX_SLEEP_MS: "100" });
    workers.push(next);
    const done = await ferry.wait(slow.id, { timeoutMs: DEADLINE_MS });
    assert.equal(done.state, "succeeded", JSON.stringify(done));
    assert.equal((done.output as { pid: number }).pid, next.pid);
  });
});

describe("worker: the server restarts", { skip }, () => {
  let server: Server | null = null;
  let worker: Proc | null = null;
  let dataDir = "";

  after(async () => {
    await worker?.stop("SIGKILL").catch(() => {});
    await server?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test("the worker registers again (unknown_session) and goes on", T, async () => {
    dataDir = await mkdtemp(join(tmpdir(), "ferry-ts-restart-"));
    server = await startServer(bin as string, SERVER_ENV, { dataDir });
    const listen = new URL(server.url).host;
    worker = await startWorker(server.url, { CONCURRENCY: "2" });
    let ferry = new Client({ url: server.url });
    assert.equal((await ferry.submitAndWait("ts_echo", 1, { timeoutMs: DEADLINE_MS })).state, "succeeded");
    const sessions = () => worker?.out.lines.filter((l) => l.startsWith("SESSION ")).length ?? 0;
    assert.equal(sessions(), 1);

    await server.close();
    server = await startServer(bin as string, SERVER_ENV, { dataDir, listen });
    ferry = new Client({ url: server.url });
    await until("a second session", async () => sessions(), (n) => n >= 2);
    const job = await ferry.submitAndWait("ts_echo", 2, { timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "succeeded", JSON.stringify(job));
    assert.equal((job.output as { pid: number }).pid, worker.pid);
  });
});

describe("worker and client with tokens", { skip }, () => {
  let server: Server | null = null;
  let worker: Proc | null = null;
  let dataDir = "";

  after(async () => {
    await worker?.stop("SIGKILL").catch(() => {});
    await server?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test("a worker token serves jobs; a submitter token submits; no token is refused", T, async () => {
    dataDir = await mkdtemp(join(tmpdir(), "ferry-ts-tokens-"));
    const workerToken = await createToken(bin as string, dataDir, "ts-workers", "worker");
    const submitterToken = await createToken(bin as string, dataDir, "alice", "submitter");
    server = await startServer(bin as string, SERVER_ENV, { dataDir });
    worker = await startWorker(server.url, { FERRY_TOKEN: workerToken });

    const job = await new Client({ url: server.url, token: submitterToken }).submitAndWait("ts_echo", "hi", { timeoutMs: DEADLINE_MS });
    assert.equal(job.state, "succeeded", JSON.stringify(job));
    await assert.rejects(new Client({ url: server.url, token: null }).submit("ts_echo", 1), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.status, 401);
      return true;
    });
    await assert.rejects(new Client({ url: server.url, token: workerToken }).submit("ts_echo", 1), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.status, 403, `${err.code}: ${err.message}`);
      return true;
    });
  });
});

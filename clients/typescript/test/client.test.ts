// The client against a real `ferry server`, with Ferry's built-in kinds only.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, FerryError, type JobEvent, type RunEvent, WaitTimeoutError } from "../src/index.js";
import { type Server, ferryBin, startServer } from "./helpers.js";

const bin = ferryBin();

describe("client", { skip: bin === null ? "no ferry binary (FERRY_BIN)" : false }, () => {
  let server: Server;
  let ferry: Client;

  before(async () => {
    server = await startServer(bin as string);
    ferry = new Client({ url: server.url });
  });

  after(async () => {
    await server?.close();
  });

  test("submit, get, wait", async () => {
    const accepted = await ferry.submit("noop", { hello: "world" });
    assert.equal(accepted.created, true);
    assert.match(accepted.id, /^[0-9a-f-]{36}$/);
    const job = await ferry.wait(accepted.id, { timeoutMs: 60_000 });
    assert.equal(job.state, "succeeded");
    assert.deepEqual(job.output, { hello: "world" });
    const again = await ferry.get(accepted.id);
    assert.equal(again.id, accepted.id);
    assert.equal(again.kind, "noop");
    assert.equal(again.attempts?.length, 1);
  });

  test("submitAndWait answers the final job, failed ones included", async () => {
    const ok = await ferry.submitAndWait("sleep", { ms: 50 }, { timeoutMs: 60_000 });
    assert.equal(ok.state, "succeeded");
    assert.deepEqual(ok.output, { slept_ms: 50 });

    const retried = await ferry.submitAndWait(
      "fail",
      { type: "network", times: 1 },
      { backoff: { initial_ms: 10, jitter: "none" }, timeoutMs: 60_000 },
    );
    assert.equal(retried.state, "succeeded");
    assert.equal(retried.attempts_used, 2);

    const dead = await ferry.submitAndWait("fail", { retryable: false }, { timeoutMs: 60_000 });
    assert.equal(dead.state, "dead");
    assert.equal(dead.error?.retryable, false);
    const dlq = await ferry.list({ state: "dead" });
    assert.ok(dlq.items.some((j) => j.id === dead.id), "the dead job is in the dead-letter queue");
  });

  test("idempotency keys: the same job again", async () => {
    const a = await ferry.submit("noop", 1, { idempotency_key: "ts-idem-1" });
    const b = await ferry.submit("noop", 1, { idempotency_key: "ts-idem-1" });
    assert.equal(a.id, b.id);
    assert.equal(b.created, false);
    const done = await ferry.submitAndWait("noop", 1, { idempotency_key: "ts-idem-1", timeoutMs: 60_000 });
    assert.equal(done.id, a.id);
    assert.equal(done.state, "succeeded");
  });

  test("refusals are FerryErrors with status, code, message and field", async () => {
    await assert.rejects(ferry.submit("noop", null, { priority: "high" as unknown as number }), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.status, 400);
      assert.equal(err.field, "priority");
      assert.ok(err.code.length > 0 && err.message.length > 0);
      return true;
    });
    await assert.rejects(ferry.get("00000000-0000-4000-8000-000000000000"), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.status, 404);
      return true;
    });
    const unreachable = new Client({ url: "127.0.0.1:1", timeoutMs: 5000 });
    await assert.rejects(unreachable.get("00000000-0000-4000-8000-000000000000"), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.status, 0);
      assert.equal(err.code, "network");
      return true;
    });
  });

  test("cancel a waiting job; a wait that runs out", async () => {
    const { id } = await ferry.submit("sleep", { ms: 60_000 }, { delay_ms: 3_600_000 });
    await assert.rejects(ferry.wait(id, { timeoutMs: 300 }), (err: unknown) => err instanceof WaitTimeoutError);
    const cancelled = await ferry.cancel(id);
    assert.equal(cancelled.state, "cancelled");
    assert.equal((await ferry.wait(id, { timeoutMs: 60_000 })).state, "cancelled");
    await assert.rejects(ferry.cancel(id), (err: unknown) => err instanceof FerryError && err.status === 409);
    const replayed = await ferry.replay(id);
    assert.equal(replayed.state, "queued");
    await ferry.cancel(id); // a minute's sleep would hold the server's shutdown
  });

  test("streamEvents: the whole log live, then resumed after an id", async () => {
    const { id } = await ferry.submit("sleep", { ms: 300 });
    const seen: JobEvent[] = [];
    for await (const ev of ferry.streamEvents(id)) seen.push(ev);
    const types = seen.map((e) => e.type);
    assert.equal(types[0], "queued");
    assert.ok(types.includes("started"), `started among ${types}`);
    assert.equal(types.at(-1), "succeeded");
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i].id > seen[i - 1].id, "ids increase");
    assert.deepEqual(
      (await ferry.events(id)).map((e) => e.id),
      seen.map((e) => e.id),
    );

    const rest: JobEvent[] = [];
    for await (const ev of ferry.streamEvents(id, { after: seen[0].id })) rest.push(ev);
    assert.deepEqual(
      rest.map((e) => e.id),
      seen.slice(1).map((e) => e.id),
    );
  });

  test("streamEvents stops when its signal aborts", async () => {
    const { id } = await ferry.submit("sleep", { ms: 60_000 }, { delay_ms: 3_600_000 });
    const stop = new AbortController();
    const seen: string[] = [];
    for await (const ev of ferry.streamEvents(id, { signal: stop.signal })) {
      seen.push(ev.type);
      stop.abort();
    }
    assert.deepEqual(seen, ["scheduled"], "one event, then the loop ended");
    await ferry.cancel(id);
  });

  test("workflows and runs", async () => {
    const wf = await ferry.registerWorkflow({
      name: "ts-client",
      nodes: [
        { id: "a", kind: "noop", input: { n: "{{ input.n }}" } },
        { id: "b", kind: "noop", depends_on: ["a"], input: { from_a: "{{ nodes.a.output.n }}" } },
      ],
    });
    assert.equal(wf.name, "ts-client");
    const run = await ferry.runAndWait("ts-client", { n: 7 }, { timeoutMs: 60_000 });
    assert.equal(run.state, "succeeded");
    const b = run.nodes?.find((n) => n.id === "b");
    assert.deepEqual(b?.output, { from_a: 7 });

    const started = await ferry.startRun("ts-client", { n: 8 });
    const events: RunEvent[] = [];
    for await (const ev of ferry.streamRunEvents(started.id)) events.push(ev);
    assert.equal(events.at(-1)?.type, "run_finished");
    assert.equal((await ferry.getRun(started.id)).state, "succeeded");
    assert.ok((await ferry.runEvents(started.id)).length === events.length);
  });
});

// The client against a real `ferry server`, with Ferry's built-in kinds only.

import assert from "node:assert/strict";
import { type Server as NetServer, type Socket, connect, createServer } from "node:net";
import { after, before, describe, test } from "node:test";
import { Client, FerryError, type JobEvent, type RunEvent, WaitTimeoutError } from "../src/index.js";
import { type Server, ferryBin, startServer } from "./helpers.js";

const bin = ferryBin();

/** Bytes as a string of one character per byte (so string offsets are byte offsets). */
const bytes = new TextDecoder("latin1");

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/**
 * Where to cut a response whose first bytes are `seen`: after its head and `events` whole
 * events when it is an event stream (`null`: not that far yet), or `"pass"` when it is
 * some other answer (it passes untouched).
 */
function cutPoint(seen: Uint8Array, events: number): number | null | "pass" {
  const text = bytes.decode(seen);
  const headEnd = text.indexOf("\r\n\r\n");
  if (headEnd < 0) return null;
  if (!/^content-type:\s*text\/event-stream/im.test(text.slice(0, headEnd))) return "pass";
  let at = headEnd + 4;
  for (let passed = 0; passed < events; ) {
    const end = text.indexOf("\n\n", at);
    if (end < 0) return null;
    if (text.slice(at, end).includes("data:")) passed++; // an event, not a keep-alive comment
    at = end + 2;
  }
  return at;
}

/**
 * A loopback TCP proxy in front of the server that cuts each of its first `cuts`
 * connections once the event stream it carries has passed `events` whole events (0:
 * right after the response's head): a stream dropped mid-way, as a network would drop
 * it. Any other answer passes untouched.
 */
class CuttingProxy {
  /** Connections accepted so far. */
  connections = 0;
  /** Connections cut so far. */
  cut = 0;
  url = "";
  private readonly server: NetServer;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly upstreamPort: number,
    private readonly cuts: number,
    private readonly events = 1,
  ) {
    this.server = createServer((client) => this.serve(client));
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    const addr = this.server.address();
    assert.ok(addr !== null && typeof addr === "object");
    this.url = `http://127.0.0.1:${addr.port}`;
    return this;
  }

  private serve(client: Socket): void {
    let cutting = ++this.connections <= this.cuts;
    const upstream = connect(this.upstreamPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on("error", () => {}); // a reset is part of the game; "close" follows
      s.on("close", () => this.sockets.delete(s));
    }
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.end()); // what was written still goes out first
    client.on("data", (chunk) => upstream.write(chunk));
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    let seen: Uint8Array = new Uint8Array(0);
    upstream.on("data", (chunk) => {
      if (!cutting) {
        client.write(chunk);
        return;
      }
      const before = seen.length;
      seen = concat(seen, chunk);
      const at = cutPoint(seen, this.events);
      if (at === null) {
        client.write(chunk);
      } else if (at === "pass") {
        cutting = false;
        client.write(chunk);
      } else {
        cutting = false;
        this.cut++;
        client.end(chunk.subarray(0, at - before)); // the events whole, then the end
        upstream.destroy();
      }
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** The ids of every event `stream` yields, in order. */
async function idsOf(stream: AsyncIterable<{ id: number }>): Promise<number[]> {
  const ids: number[] = [];
  for await (const ev of stream) ids.push(ev.id);
  return ids;
}

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

  describe("event streams cut mid-way (a proxy drops the connection)", () => {
    let port: number;
    let jobId: string;
    let expected: number[];

    before(async () => {
      port = Number(new URL(server.url).port);
      // A job that has ended, with a few events (two failed attempts, then success):
      // its stream replays the log and ends at the final event, whatever the timing.
      const job = await ferry.submitAndWait(
        "fail",
        { type: "network", times: 2 },
        { backoff: { initial_ms: 10, jitter: "none" }, timeoutMs: 60_000 },
      );
      assert.equal(job.state, "succeeded");
      jobId = job.id;
      expected = await idsOf(ferry.streamEvents(jobId)); // uncut, straight to the server
      assert.deepEqual(
        expected,
        (await ferry.events(jobId)).map((e) => e.id),
      );
      assert.ok(expected.length >= 5, `enough events to cut between: ${expected}`);
    });

    async function through<T>(proxy: CuttingProxy, use: (c: Client) => Promise<T>): Promise<T> {
      await proxy.start();
      try {
        return await use(new Client({ url: proxy.url, timeoutMs: 30_000 }));
      } finally {
        await proxy.close();
      }
    }

    test("streamEvents resumes with Last-Event-ID: every event once, in order", async () => {
      const proxy = new CuttingProxy(port, 3);
      const got = await through(proxy, (c) => idsOf(c.streamEvents(jobId)));
      assert.deepEqual(got, expected);
      assert.equal(new Set(got).size, got.length, "no event twice");
      assert.equal(proxy.cut, 3, "the first three connections were cut");
      assert.ok(proxy.connections > 3, `reconnected after each cut (${proxy.connections} connections)`);
    });

    test("maxReconnects counts reconnections that brought no event: a stream cut after every event still ends", async () => {
      const proxy = new CuttingProxy(port, Infinity);
      const got = await through(proxy, (c) => idsOf(c.streamEvents(jobId, { maxReconnects: 0 })));
      assert.deepEqual(got, expected);
      assert.equal(proxy.connections, expected.length, "one connection per event");
    });

    test("a stream cut before any event, with no reconnection left, is a FerryError network", async () => {
      const isNetwork = (err: unknown) => {
        assert.ok(err instanceof FerryError, `a FerryError, not ${String(err)}`);
        assert.equal(err.status, 0);
        assert.equal(err.code, "network");
        return true;
      };
      const once = new CuttingProxy(port, Infinity, 0);
      await through(once, (c) => assert.rejects(idsOf(c.streamEvents(jobId, { maxReconnects: 0 })), isNetwork));
      assert.equal(once.connections, 1, "no reconnection");

      const thrice = new CuttingProxy(port, Infinity, 0);
      await through(thrice, (c) => assert.rejects(idsOf(c.streamEvents(jobId, { maxReconnects: 2 })), isNetwork));
      assert.equal(thrice.connections, 3, "the first connection and two reconnections");
    });

    test("streamRunEvents resumes the same way", async () => {
      await ferry.registerWorkflow({
        name: "ts-client-cut",
        nodes: [
          { id: "a", kind: "noop", input: { n: "{{ input.n }}" } },
          { id: "b", kind: "noop", depends_on: ["a"], input: { n: "{{ nodes.a.output.n }}" } },
        ],
      });
      const run = await ferry.runAndWait("ts-client-cut", { n: 1 }, { timeoutMs: 60_000 });
      assert.equal(run.state, "succeeded");
      const uncut = await idsOf(ferry.streamRunEvents(run.id));
      assert.ok(uncut.length >= 4, `enough events to cut between: ${uncut}`);
      const proxy = new CuttingProxy(port, 2);
      const got = await through(proxy, (c) => idsOf(c.streamRunEvents(run.id)));
      assert.deepEqual(got, uncut);
      assert.equal(proxy.cut, 2);
      assert.ok(proxy.connections > 2, `reconnected after each cut (${proxy.connections} connections)`);
    });
  });
});

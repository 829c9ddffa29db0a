// The client against a scripted server: what a real one cannot be made to do on cue.

import assert from "node:assert/strict";
import test from "node:test";
import { Client, FerryError, type JobEvent } from "../src/index.js";
import { fakeServer, json } from "./fake.js";

const JOB = "0192c1d2-0000-4000-8000-000000000001";

function sse(id: number, type: string): string {
  return `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify({ id, job_id: JOB, type, at: "2026-01-01T00:00:00Z", data: {} })}\n\n`;
}

test("streamEvents resumes a dropped stream after the last event it saw", async () => {
  let connections = 0;
  const fake = await fakeServer((req, res) => {
    connections += 1;
    res.writeHead(200, { "content-type": "text/event-stream" });
    if (connections === 1) {
      res.write(": hello\n\n");
      res.write(sse(1, "queued") + sse(2, "started"));
      res.end(); // dropped before the final event
    } else {
      res.write(sse(3, "progress") + sse(4, "succeeded"));
      res.end();
    }
  });
  try {
    const seen: JobEvent[] = [];
    for await (const ev of new Client({ url: fake.url }).streamEvents(JOB)) seen.push(ev);
    assert.deepEqual(
      seen.map((e) => [e.id, e.type]),
      [
        [1, "queued"],
        [2, "started"],
        [3, "progress"],
        [4, "succeeded"],
      ],
    );
    assert.equal(fake.seen.length, 2);
    assert.equal(fake.seen[0].headers["accept"], "text/event-stream");
    assert.equal(fake.seen[0].headers["last-event-id"], undefined);
    assert.equal(fake.seen[1].headers["last-event-id"], "2");
  } finally {
    await fake.close();
  }
});

test("a stream whose token was revoked ends with a FerryError", async () => {
  const fake = await fakeServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.end(sse(1, "queued") + `event: revoked\ndata: {"error":{"code":"unauthenticated","message":"revoked"}}\n\n`);
  });
  try {
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const ev of new Client({ url: fake.url }).streamEvents(JOB)) seen.push(ev.type);
      })(),
      (err: unknown) => err instanceof FerryError && err.status === 401 && err.code === "unauthenticated",
    );
    assert.deepEqual(seen, ["queued"]);
  } finally {
    await fake.close();
  }
});

test("submitAndWait: ?wait= on the submission, then on the job until it ends", async () => {
  let gets = 0;
  const fake = await fakeServer((req, res) => {
    if (req.method === "POST") return json(res, 202, { id: JOB, state: "queued", created: true });
    gets += 1;
    json(res, 200, { id: JOB, kind: "x", state: gets < 2 ? "running" : "succeeded", output: { ok: true } });
  });
  try {
    const job = await new Client({ url: fake.url, token: "secret" }).submitAndWait("x", { a: 1 }, { queue: "q" });
    assert.equal(job.state, "succeeded");
    assert.deepEqual(job.output, { ok: true });
    const [post, ...rest] = fake.seen;
    assert.equal(post.path, "/v1/jobs");
    assert.equal(post.query.get("wait"), "30s");
    assert.deepEqual(post.body, { queue: "q", kind: "x", input: { a: 1 } });
    assert.equal(post.headers["authorization"], "Bearer secret");
    assert.equal(rest.length, 2);
    for (const g of rest) {
      assert.equal(g.path, `/v1/jobs/${JOB}`);
      assert.equal(g.query.get("wait"), "30s");
    }
  } finally {
    await fake.close();
  }
});

test("submitAndWait: a 200 with the final job is the answer", async () => {
  const fake = await fakeServer((_req, res) => json(res, 200, { id: JOB, kind: "x", state: "dead", error: { type: "task" } }));
  try {
    const job = await new Client({ url: fake.url }).submitAndWait("x");
    assert.equal(job.state, "dead");
    assert.equal(fake.seen.length, 1);
  } finally {
    await fake.close();
  }
});

test("a refusal that is not Ferry's shape still makes a FerryError; Retry-After is read", async () => {
  const fake = await fakeServer((_req, res) => {
    res.writeHead(503, { "retry-after": "2", "content-type": "text/plain" });
    res.end("busy");
  });
  try {
    await assert.rejects(new Client({ url: fake.url }).get(JOB), (err: unknown) => {
      assert.ok(err instanceof FerryError);
      assert.equal(err.status, 503);
      assert.equal(err.code, "unexpected_response");
      assert.equal(err.retryAfterMs, 2000);
      return true;
    });
  } finally {
    await fake.close();
  }
});

import assert from "node:assert/strict";
import test from "node:test";
import { parseSse, type SseMessage } from "../src/index.js";

/** A byte stream that delivers `chunks` one by one. */
function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(ctl) {
      for (const c of chunks) ctl.enqueue(enc.encode(c));
      ctl.close();
    },
  });
}

async function all(chunks: string[]): Promise<SseMessage[]> {
  const out: SseMessage[] = [];
  for await (const m of parseSse(streamOf(chunks))) out.push(m);
  return out;
}

test("parses events, ids, types, comments and multi-line data", async () => {
  const got = await all([": keep-alive\n\nid: 1\nevent: queued\ndata: {\"a\":1}\n\n", "id: 2\ndata: line one\ndata: line two\n\n"]);
  assert.deepEqual(got, [
    { id: "1", event: "queued", data: '{"a":1}' },
    { id: "2", event: "message", data: "line one\nline two" },
  ]);
});

test("line ends split across chunks (CRLF, CR) and fields split mid-way", async () => {
  const got = await all(["id: 7\r", "\nevent: st", "arted\r\ndata:x\r", "\r", "id: 8\rdata: y\r\r"]);
  assert.deepEqual(got, [
    { id: "7", event: "started", data: "x" },
    { id: "8", event: "message", data: "y" },
  ]);
});

test("a message cut off by the end of the stream is not dispatched; the id carries over", async () => {
  const got = await all(["id: 3\ndata: a\n\ndata: b\n\ndata: cut"]);
  assert.deepEqual(got, [
    { id: "3", event: "message", data: "a" },
    { id: "3", event: "message", data: "b" },
  ]);
});

test("multi-byte characters split across chunks", async () => {
  const enc = new TextEncoder();
  const bytes = enc.encode("data: héllo ✓\n\n");
  const stream = new ReadableStream<Uint8Array>({
    start(ctl) {
      for (const b of bytes) ctl.enqueue(new Uint8Array([b]));
      ctl.close();
    },
  });
  const out: SseMessage[] = [];
  for await (const m of parseSse(stream)) out.push(m);
  assert.deepEqual(out, [{ id: null, event: "message", data: "héllo ✓" }]);
});

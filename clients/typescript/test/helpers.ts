// Test helpers: a real `ferry server` child process, worker child processes, and
// waiting on conditions (never a fixed sleep as an assertion).

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** clients/typescript */
export const packageRoot = join(here, "..", "..");
const repoRoot = join(packageRoot, "..", "..");

/** A generous deadline for anything a test waits on. */
export const DEADLINE_MS = 90_000;

/**
 * The `ferry` binary: `FERRY_BIN`, else the workspace's release or debug build. `null`
 * when none exists and this is not CI (the tests that need it skip, saying so);
 * under `CI=true` a missing binary is an error.
 */
export function ferryBin(): string | null {
  const candidates = [
    process.env.FERRY_BIN,
    join(repoRoot, "target", "release", "ferry"),
    join(repoRoot, "target", "debug", "ferry"),
  ];
  for (const c of candidates) if (c && existsSync(c)) return c;
  if (process.env.CI === "true") {
    throw new Error(`CI=true, but no ferry binary: set FERRY_BIN (tried ${candidates.filter(Boolean).join(", ")})`);
  }
  process.stderr.write("\n*** no ferry binary (set FERRY_BIN): skipping the tests that need a server ***\n\n");
  return null;
}

/** Lines a child process printed, and a way to wait for one. */
export class Output {
  lines: string[] = [];
  private partial = "";
  private waiters: Array<() => void> = [];

  feed(chunk: string): void {
    this.partial += chunk;
    const parts = this.partial.split("\n");
    this.partial = parts.pop() ?? "";
    this.lines.push(...parts);
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Waits for a line matching `re` (among every line so far) and answers its match. */
  async waitFor(re: RegExp, what: string, timeoutMs = DEADLINE_MS): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const line of this.lines) {
        const m = line.match(re);
        if (m) return m;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; output so far:\n${this.lines.join("\n")}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

/** A child process with its output. */
export class Proc {
  readonly child: ChildProcess;
  readonly out = new Output();
  readonly exited: Promise<{ code: number | null; signal: string | null }>;

  constructor(command: string, args: string[], env: Record<string, string | undefined>, echo: string) {
    this.child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
    for (const stream of [this.child.stdout, this.child.stderr]) {
      stream?.setEncoding("utf8");
      stream?.on("data", (chunk) => this.out.feed(chunk));
    }
    if (process.env.FERRY_TEST_ECHO) {
      this.child.stderr?.on("data", (chunk) => process.stderr.write(`[${echo}] ${chunk}`));
      this.child.stdout?.on("data", (chunk) => process.stderr.write(`[${echo}] ${chunk}`));
    }
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends `signal` and waits (up to the deadline) for the exit. */
  async stop(signal = "SIGTERM", timeoutMs = DEADLINE_MS): Promise<{ code: number | null; signal: string | null }> {
    if (this.running) this.child.kill(signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`process ${this.pid} did not exit within ${timeoutMs} ms of ${signal}`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.exited, late]);
    } catch (err) {
      this.child.kill("SIGKILL");
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }
}

export interface Server {
  url: string;
  dataDir: string;
  proc: Proc;
  /** Stops the server (SIGTERM) and removes its data directory. */
  close(): Promise<void>;
}

/**
 * The environment of a `ferry` command: this one's, less its FERRY_* variables (ferry
 * refuses those that are not its settings, such as FERRY_BIN), plus `extra`.
 */
function ferryEnv(extra: Record<string, string>): Record<string, string | undefined> {
  const unset: Record<string, undefined> = {};
  for (const key of Object.keys(process.env)) if (key.startsWith("FERRY_")) unset[key] = undefined;
  return { ...unset, ...extra };
}

/** Starts `ferry server` on a free loopback port with a temporary data directory. */
export async function startServer(bin: string, env: Record<string, string> = {}, opts: { dataDir?: string; listen?: string } = {}): Promise<Server> {
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), "ferry-ts-")));
  const proc = new Proc(
    bin,
    ["server", "--listen", opts.listen ?? "127.0.0.1:0", "--data-dir", dataDir, "--workers", "2"],
    ferryEnv({ FERRY_LOG: "warn", ...env }),
    "server",
  );
  const m = await Promise.race([
    proc.out.waitFor(/listening on (http:\/\/\S+)/, "the server's listening line", 30_000),
    proc.exited.then((e) => {
      throw new Error(`ferry server exited (${e.code ?? e.signal}) before listening:\n${proc.out.lines.join("\n")}`);
    }),
  ]);
  const url = m[1];
  return {
    url,
    dataDir,
    proc,
    async close() {
      await proc.stop("SIGTERM", 30_000).catch(() => proc.stop("SIGKILL"));
      if (!opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Starts the test worker (`dist/test/fixtures/worker.js`) against `url`, and waits for its session. */
export async function startWorker(url: string, env: Record<string, string> = {}): Promise<Proc> {
  const script = join(packageRoot, "dist", "test", "fixtures", "worker.js");
  const proc = new Proc(process.execPath ?? "node", [script], { FERRY_URL: url, ...env }, env.NAME ?? "worker");
  await Promise.race([
    proc.out.waitFor(/^SESSION \S+/m, "the worker's session"),
    proc.exited.then((e) => {
      throw new Error(`the worker exited (${e.code ?? e.signal}) before opening a session:\n${proc.out.lines.join("\n")}`);
    }),
  ]);
  return proc;
}

/** Asks `look` until `ok` says yes, every 50 ms, for at most the deadline; answers the last look. */
export async function until<T>(what: string, look: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = DEADLINE_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    last = await look();
    if (ok(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Creates a token in the store at `dataDir` (no server may use it then) and answers its secret. */
export async function createToken(bin: string, dataDir: string, user: string, role: string): Promise<string> {
  const proc = new Proc(bin, ["token", "create", "--data-dir", dataDir, "--workspace", "default", "--user", user, "--role", role], ferryEnv({}), "token");
  const exit = await proc.exited;
  const secret = proc.out.lines.map((l) => l.trim()).find((l) => /^ferry_\S+$/.test(l));
  if (exit.code !== 0 || !secret) throw new Error(`ferry token create failed (${exit.code}):\n${proc.out.lines.join("\n")}`);
  return secret;
}

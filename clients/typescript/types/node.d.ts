// The few Node.js APIs this package and its tests use, declared here so that the
// package has a single development dependency (`typescript`) and no `@types/node`.
// Only what is used is declared; the declarations follow Node 20's documentation.

declare var process: {
  readonly env: Record<string, string | undefined>;
  readonly pid: number;
  readonly argv: string[];
  readonly execPath: string;
  exitCode: number | undefined;
  on(event: "SIGTERM" | "SIGINT", listener: (signal: string) => void): unknown;
  off(event: "SIGTERM" | "SIGINT", listener: (signal: string) => void): unknown;
  exit(code?: number): never;
  kill(pid: number, signal?: string | number): boolean;
  readonly stdout: { write(chunk: string): boolean };
  readonly stderr: { write(chunk: string): boolean };
};

declare module "node:os" {
  export function hostname(): string;
  export function tmpdir(): string;
}

declare module "node:path" {
  export function join(...parts: string[]): string;
  export function dirname(path: string): string;
}

declare module "node:url" {
  export function fileURLToPath(url: string | URL): string;
}

declare module "node:fs/promises" {
  export function mkdtemp(prefix: string): Promise<string>;
  export function rm(path: string, options?: { recursive?: boolean; force?: boolean }): Promise<void>;
  export function readFile(path: string, encoding: "utf8"): Promise<string>;
  export function writeFile(path: string, data: string): Promise<void>;
}

declare module "node:fs" {
  export function existsSync(path: string): boolean;
}

declare module "node:child_process" {
  interface Readable {
    setEncoding(encoding: "utf8"): void;
    on(event: "data", listener: (chunk: string) => void): this;
    on(event: "end", listener: () => void): this;
  }
  interface Writable {
    write(chunk: string): boolean;
    end(): void;
  }
  export interface ChildProcess {
    readonly pid: number | undefined;
    readonly exitCode: number | null;
    readonly signalCode: string | null;
    readonly stdout: Readable | null;
    readonly stderr: Readable | null;
    readonly stdin: Writable | null;
    kill(signal?: string): boolean;
    on(event: "exit", listener: (code: number | null, signal: string | null) => void): this;
    on(event: "error", listener: (err: Error) => void): this;
    once(event: "exit", listener: (code: number | null, signal: string | null) => void): this;
  }
  export interface SpawnOptions {
    cwd?: string;
    env?: Record<string, string | undefined>;
    stdio?: Array<"pipe" | "ignore" | "inherit"> | "pipe" | "ignore" | "inherit";
  }
  export function spawn(command: string, args: string[], options?: SpawnOptions): ChildProcess;
}

declare module "node:http" {
  export interface IncomingMessage {
    readonly method?: string;
    readonly url?: string;
    readonly headers: Record<string, string | string[] | undefined>;
    setEncoding(encoding: "utf8"): void;
    on(event: "data", listener: (chunk: string) => void): this;
    on(event: "end", listener: () => void): this;
  }
  export interface ServerResponse {
    writeHead(status: number, headers?: Record<string, string>): this;
    write(chunk: string): boolean;
    end(chunk?: string): void;
    on(event: "close", listener: () => void): this;
  }
  export interface Server {
    listen(port: number, host: string, callback?: () => void): this;
    address(): { port: number; address: string } | string | null;
    close(callback?: (err?: Error) => void): this;
    closeAllConnections(): void;
  }
  export function createServer(handler: (req: IncomingMessage, res: ServerResponse) => void): Server;
}

declare module "node:net" {
  export interface Socket {
    write(chunk: Uint8Array): boolean;
    end(chunk?: Uint8Array): this;
    destroy(): this;
    on(event: "data", listener: (chunk: Uint8Array) => void): this;
    on(event: "end" | "close", listener: () => void): this;
    on(event: "error", listener: (err: Error) => void): this;
  }
  export interface Server {
    listen(port: number, host: string, callback?: () => void): this;
    address(): { port: number; address: string } | string | null;
    close(callback?: (err?: Error) => void): this;
  }
  export function createServer(listener: (socket: Socket) => void): Server;
  export function connect(port: number, host: string): Socket;
}

declare module "node:test" {
  interface TestOptions {
    timeout?: number;
    skip?: boolean | string;
    todo?: boolean | string;
    concurrency?: number | boolean;
  }
  interface TestContext {
    after(fn: () => unknown): void;
    diagnostic(message: string): void;
    skip(message?: string): void;
  }
  type TestFn = (t: TestContext) => unknown;
  interface Test {
    (name: string, fn: TestFn): Promise<void>;
    (name: string, options: TestOptions, fn: TestFn): Promise<void>;
  }
  const test: Test;
  export default test;
  export { test, test as it };
  export function describe(name: string, fn: () => unknown): Promise<void>;
  export function describe(name: string, options: TestOptions, fn: () => unknown): Promise<void>;
  export function before(fn: () => unknown, options?: { timeout?: number }): void;
  export function after(fn: () => unknown, options?: { timeout?: number }): void;
}

declare module "node:assert/strict" {
  interface Assert {
    (value: unknown, message?: string): asserts value;
    ok(value: unknown, message?: string): asserts value;
    equal<T>(actual: unknown, expected: T, message?: string): asserts actual is T;
    notEqual(actual: unknown, expected: unknown, message?: string): void;
    deepEqual<T>(actual: unknown, expected: T, message?: string): asserts actual is T;
    match(value: string, regexp: RegExp, message?: string): void;
    fail(message?: string): never;
    rejects(block: Promise<unknown> | (() => Promise<unknown>), error?: unknown, message?: string): Promise<void>;
    throws(block: () => unknown, error?: unknown, message?: string): void;
  }
  const assert: Assert;
  export default assert;
}

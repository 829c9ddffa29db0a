/**
 * Ferry's TypeScript SDK for Node: `Client` for jobs, workflows, runs and their event
 * streams; `Worker` to serve remote kinds over the worker protocol.
 *
 * @packageDocumentation
 */
export { Client, type StreamOptions, type WaitOptions } from "./client.js";
export { FerryError, NonRetryableError, RetryableError, WaitTimeoutError, type TaskErrorOptions } from "./errors.js";
export type { ConnectionOptions } from "./http.js";
export { parseSse, type SseMessage } from "./sse.js";
export * from "./types.js";
export type { WorkerStats } from "./protocol.js";
export {
  TaskAbortedError,
  type Logger,
  type RunWorkerOptions,
  type TaskContext,
  type TaskFunction,
  type TaskOptions,
  type WorkerOptions,
} from "./task.js";
export { PROTOCOL, Worker } from "./worker.js";

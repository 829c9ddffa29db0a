// The shapes of the HTTP API, as the server names them (snake_case). Objects the server
// may grow keep an index signature, so a newer server's fields are still reachable.

/** A job's state. `succeeded`, `dead` and `cancelled` are final. */
export type JobState = "held" | "scheduled" | "queued" | "running" | "retrying" | "succeeded" | "dead" | "cancelled";

/** A run's state. Every state but `queued` and `running` is final. */
export type RunState = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "timed_out";

/** The final job states. */
export const FINAL_JOB_STATES: readonly JobState[] = ["succeeded", "dead", "cancelled"];
/** The final run states. */
export const FINAL_RUN_STATES: readonly RunState[] = ["succeeded", "failed", "cancelled", "timed_out"];

/** A failed attempt's error. */
export interface JobError {
  /** One of Ferry's error types (`timeout`, `network`, `task`, `worker_lost`, …). */
  type: string;
  message: string;
  retryable: boolean;
  severity?: string | null;
  [key: string]: unknown;
}

/** The backoff between retries. */
export interface Backoff {
  initial_ms?: number;
  max_ms?: number;
  multiplier?: number;
  jitter?: "full" | "none";
}

/** What a job may say besides its kind and input (see the README's "A job" table). */
export interface JobOptions {
  queue?: string;
  priority?: number;
  max_attempts?: number;
  backoff?: Backoff;
  timeout_ms?: number;
  soft_timeout_ms?: number;
  total_timeout_ms?: number;
  run_at?: string;
  delay_ms?: number;
  labels?: Record<string, string>;
  idempotency_key?: string;
  on_limit?: "refuse" | "queue";
  breaker?: string;
  ordering_key?: string;
  [key: string]: unknown;
}

/** A whole job spec, as `POST /v1/jobs` takes it. */
export interface JobSpec extends JobOptions {
  kind: string;
  input?: unknown;
}

/** The answer to a submission. */
export interface JobAccepted {
  id: string;
  state: JobState;
  /** `false` when an idempotency key matched an existing job. */
  created: boolean;
}

/** One attempt of a job. */
export interface Attempt {
  attempt: number;
  worker: string;
  started_at: string;
  finished_at: string | null;
  outcome: string | null;
  error: JobError | null;
  [key: string]: unknown;
}

/** A job, as `GET /v1/jobs/{id}` answers it. */
export interface Job {
  id: string;
  kind: string;
  queue: string;
  state: JobState;
  priority: number;
  input: unknown;
  labels: Record<string, string>;
  max_attempts: number;
  attempts_used: number;
  timeout_ms: number;
  created_at: string;
  updated_at: string;
  finished_at: string | null;
  output: unknown;
  error: JobError | null;
  /** Present on `GET /v1/jobs/{id}`, absent in listings. */
  attempts?: Attempt[];
  [key: string]: unknown;
}

/** One page of `GET /v1/jobs`. */
export interface JobPage {
  items: Job[];
  next_cursor?: string | null;
}

/** One entry of a job's event log (`queued`, `started`, `attempt_failed`, `progress`, `log`, `succeeded`, …). */
export interface JobEvent {
  /** Increases with every event: resume after it. */
  id: number;
  job_id: string;
  type: string;
  at: string;
  data: unknown;
  [key: string]: unknown;
}

/** One entry of a run's event log: the run's own events and a copy of each of its jobs'. */
export interface RunEvent {
  id: number;
  type: string;
  at: string;
  node?: string;
  item?: number;
  job_id?: string;
  data: unknown;
  [key: string]: unknown;
}

/** A workflow definition, as `POST /v1/workflows` takes it (see the README's "Workflows"). */
export interface WorkflowDefinition {
  name: string;
  nodes: Array<{ id: string; kind: string; input?: unknown; depends_on?: string[]; [key: string]: unknown }>;
  failure_policy?: "fail_fast" | "continue";
  timeout_ms?: number;
  [key: string]: unknown;
}

/** The answer to a workflow's registration. */
export interface WorkflowAccepted {
  name: string;
  version: number;
}

/** What a run may say besides its workflow and input. */
export interface RunOptions {
  version?: number;
  idempotency_key?: string;
  on_limit?: "refuse" | "queue";
}

/** The answer to a run's start. */
export interface RunAccepted {
  id: string;
  workflow: string;
  version: number;
  state: RunState;
  created: boolean;
}

/** One node of a run. */
export interface RunNode {
  id: string;
  state: string;
  attempts: number;
  output: unknown;
  error: JobError | null;
  jobs: Array<{ id: string; item?: number | null; state: JobState; attempts: number; error: JobError | null }>;
  [key: string]: unknown;
}

/** A run, as `GET /v1/runs/{id}` answers it. */
export interface Run {
  id: string;
  workflow: string;
  version: number;
  state: RunState;
  input: unknown;
  created_at: string;
  finished_at: string | null;
  error: JobError | null;
  nodes?: RunNode[];
  [key: string]: unknown;
}

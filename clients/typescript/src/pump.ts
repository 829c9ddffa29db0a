// The worker's pump: one loop owns leasing and the sending of results, so that a busy
// worker makes about one call per batch of jobs rather than two per job.
//
// - With a free slot and no lease call on its way, it starts one: `complete` carrying
//   the results ready now (up to 100) with `lease: {max: free slots, wait_ms}`, or a
//   plain `lease` when there is none. The long poll's `wait_ms` is the server's
//   `max_wait_ms` (or `leaseWaitMs`, when smaller).
// - `full`: the last answer brought as many jobs as it asked for (work is waiting). Then
//   a freed slot waits (gathers) up to `batchWindowMs` for the others, until every
//   slot is free, and a result that ends while a call is on its way
//   waits up to `HOLD_MS` from the call's start for it to come back and ride in the
//   next one. Otherwise (the call is a waiting long poll, or the hold is over) results
//   go on their own (`complete` without `lease`), one such call at a time.
// - A failed call: `unknown_session` registers again; no answer, 5xx or 429 puts its
//   results back and pauses (growing); another refusal sends its results one by one
//   (`Outbox.deliver`), so that the good ones get through.

import { FerryError } from "./errors.js";
import { Outbox, transient } from "./outbox.js";
import type { LeaseAnswer, Outgoing, ResultBody, Session, WorkerCore } from "./protocol.js";
import { MAX_BATCH, describe } from "./support.js";

/** While work is waiting, how long a result that ends during a lease call waits for it (ms). */
export const HOLD_MS = 2;
/** The first pause after a failed call (ms); it doubles up to `MAX_PAUSE_MS`. */
const FIRST_PAUSE_MS = 250;
const MAX_PAUSE_MS = 5000;
/** A stopping worker's lease call still waiting this long after it was ended is abandoned (ms). */
const END_WAIT_MS = 3000;

/** The lease call on its way (or about to go: its results' events are being sent first). */
interface Call {
  /** The results it carries (their slots are freed by the call). */
  carried: Outgoing<ResultBody>[];
  /** How many jobs it asks for (0 until it goes out). */
  asked: number;
  /** When it started (`Date.now()`). */
  since: number;
  /** It has gone out with a lease (a stopping worker must end it). */
  leasing: boolean;
  abort: AbortController;
  /** Settles once its answer (or failure) has been handled. */
  done?: Promise<void>;
}

export class Pump {
  private call: Call | null = null;
  private full = false;
  /** While gathering: when the first slot became free. */
  private gatherSince: number | null = null;
  /** The `complete` call without `lease` on its way, if any. */
  private plain: Promise<void> | null = null;
  private retryAt = 0;
  private pause = FIRST_PAUSE_MS;

  constructor(
    private readonly core: WorkerCore,
    private readonly outbox: Outbox,
    private readonly opts: { leaseWaitMs?: number; batchWindowMs: number; callTimeoutMs: number },
  ) {}

  /** Something is on its way (a lease call or results on their own). */
  get busy(): boolean {
    return this.call !== null || this.plain !== null;
  }

  /** Slots free for the next lease call: those held less the results it would carry. */
  private free(): number {
    const carried = Math.min(MAX_BATCH, this.outbox.results.length);
    return this.core.concurrency - this.core.held() + carried;
  }

  /** Leases and sends results until the worker closes. */
  async run(): Promise<void> {
    const core = this.core;
    for (;;) {
      if (core.closing()) {
        // Stopped, and the drain is over: let what is on its way finish.
        while (this.call || this.plain) await Promise.all([this.call?.done, this.plain]);
        if (this.outbox.results.length > 0) {
          core.logger.error(`${this.outbox.results.length} result(s) could not be sent at shutdown: giving up on them`);
        }
        return;
      }
      const reopening = core.reopening();
      if (reopening) {
        await reopening;
        continue;
      }
      const now = Date.now();
      const session = core.session();
      const free = this.free();
      let timer = 1000;
      if (!this.call && session && !core.stopping() && free > 0 && now >= this.retryAt) {
        let gather = 0;
        if (this.full && core.running() > 0 && this.opts.batchWindowMs > 0) {
          this.gatherSince ??= now;
          gather = this.gatherSince + this.opts.batchWindowMs - now;
        }
        if (gather <= 0) {
          this.start(session);
          continue;
        }
        timer = gather;
      }
      if (this.outbox.results.length > 0 && !this.plain && session && now >= this.retryAt) {
        if (!this.call) {
          // No lease call will carry them (no free slot, or stopping): they go on their own.
          // (With a free slot, they wait for the gathering to end and ride in its call.)
          if (free <= 0 || core.stopping()) this.sendPlain();
        } else {
          const hold = this.full ? this.call.since + HOLD_MS - now : 0;
          if (hold <= 0) this.sendPlain();
          else timer = Math.min(timer, hold);
        }
      }
      if (now < this.retryAt) timer = Math.min(timer, this.retryAt - now);
      await core.bell.wait(Math.max(1, Math.ceil(timer)));
    }
  }

  /** Starts a lease call carrying the results ready now. */
  private start(session: Session): void {
    const call: Call = { carried: this.outbox.take(), asked: 0, since: Date.now(), leasing: false, abort: new AbortController() };
    this.call = call;
    this.gatherSince = null;
    call.done = this.exchange(call, session).finally(() => {
      if (this.call === call) this.call = null;
      this.core.bell.ring();
    });
  }

  private async exchange(call: Call, s: Session): Promise<void> {
    const core = this.core;
    const { carried } = call;
    // An attempt's events must reach Ferry before its result.
    if (carried.length > 0 && !(await this.outbox.flushEvents())) {
      this.outbox.putBack(carried);
      if (!core.reopening()) this.backOff("sending events failed");
      return;
    }
    // Stopping (or the session changed) while the events went: no lease; the results go on their own.
    const asked = core.concurrency - core.held() + carried.length;
    if (core.stopping() || core.session() !== s || asked <= 0) {
      this.outbox.putBack(carried);
      return;
    }
    const wait = Math.min(this.opts.leaseWaitMs ?? s.maxWaitMs, s.maxWaitMs);
    const lease = { max: asked, wait_ms: wait };
    call.asked = asked;
    call.since = Date.now();
    call.leasing = true;
    core.logger.debug?.(
      `lease: up to ${asked} job(s), waiting up to ${wait} ms${carried.length > 0 ? `, with ${carried.length} result(s)` : ""}`,
    );
    const opts = { signal: AbortSignal.any([call.abort.signal, core.life]), timeoutMs: this.timeoutMs(wait) };
    let answer: LeaseAnswer;
    try {
      answer =
        carried.length > 0
          ? await core.call<LeaseAnswer>("/complete", { results: carried.map((r) => r.body), lease }, opts)
          : await core.call<LeaseAnswer>("/lease", lease, opts);
    } catch (err) {
      this.full = false;
      this.failed(carried, err, call.abort.signal.aborted);
      return;
    }
    this.pause = FIRST_PAUSE_MS;
    this.outbox.acknowledge(carried, answer?.results);
    const jobs = answer?.jobs ?? [];
    this.full = jobs.length >= asked;
    this.take(jobs, s);
  }

  /** A call's timeout: the transport's, on top of the long poll's wait. */
  private timeoutMs(waitMs: number): number {
    return this.opts.callTimeoutMs + waitMs;
  }

  /** Starts the jobs an answer brought (`accept` hands them back when stopping). */
  private take(jobs: NonNullable<LeaseAnswer["jobs"]>, s: Session): void {
    this.core.stats.jobs += jobs.length;
    // Jobs of a session that has since been replaced are not ours any more.
    if (s.generation !== this.core.generation()) return;
    for (const job of jobs) this.core.accept(job, s.generation);
  }

  /** A call carrying `batch` failed (`abandoned`: the worker gave up on it while stopping). */
  private failed(batch: Outgoing<ResultBody>[], err: unknown, abandoned: boolean): void {
    if (this.core.life.aborted) return;
    if (abandoned) {
      this.outbox.putBack(batch); // sent again on their own: one already recorded is refused, harmlessly
      return;
    }
    if (err instanceof FerryError && err.code === "unknown_session") return; // the re-registration drops them
    if (transient(err)) {
      this.outbox.putBack(batch);
      this.backOff(batch.length > 0 ? `sending ${batch.length} result(s) and leasing failed (${describe(err)})` : `lease failed (${describe(err)})`);
      return;
    }
    if (batch.length > 0) {
      // Refused as a whole: sent on their own, the refused one mended or dropped, the rest get through.
      this.core.logger.warn(`a complete call was refused (${describe(err)}); sending its results on their own`);
      this.runPlain(() => this.outbox.deliver(batch).catch((e) => this.failed(batch, e, false)));
      return;
    }
    this.core.logger.error(`Ferry refused a lease call: ${describe(err)}`);
    this.backOff("the lease call was refused");
  }

  private backOff(why: string): void {
    this.core.logger.warn(`${why}; trying again in ${this.pause} ms`);
    this.retryAt = Date.now() + this.pause;
    this.pause = Math.min(MAX_PAUSE_MS, this.pause * 2);
  }

  /** Sends pending results on their own (`complete` without `lease`), their events first. */
  private sendPlain(): void {
    this.runPlain(async () => {
      const batch = this.outbox.take();
      if (batch.length === 0) return;
      if (!(await this.outbox.flushEvents())) {
        this.outbox.putBack(batch);
        if (!this.core.reopening()) this.backOff("sending events failed");
        return;
      }
      try {
        await this.outbox.deliver(batch);
        this.pause = FIRST_PAUSE_MS;
      } catch (err) {
        this.failed(batch, err, false);
      }
    });
  }

  /** Runs `send` as the plain send, after the one on its way if any (one at a time). */
  private runPlain(send: () => Promise<void>): void {
    const before = this.plain;
    const p: Promise<void> = (async () => {
      if (before) await before;
      await send();
    })()
      .catch((err) => this.core.logger.error(`sending results failed: ${describe(err)}`))
      .finally(() => {
        if (this.plain === p) this.plain = null;
        this.core.bell.ring();
      });
    this.plain = p;
  }

  /**
   * Stops leasing (the worker is stopping). A lease call waiting for work is ended the
   * protocol's way (§2): a new lease call with `wait_ms` 0 ends it, and whatever either
   * brings is handed back. A call that has not ended 3 s later (a server that does not
   * end it) is abandoned: its results are sent again on their own.
   */
  async end(): Promise<void> {
    const call = this.call;
    if (!call) return;
    const s = this.core.session();
    if (call.leasing && s) {
      try {
        const answer = await this.core.call<LeaseAnswer>("/lease", { max: 1, wait_ms: 0 }, { timeoutMs: 5000 });
        this.take(answer?.jobs ?? [], s);
      } catch (err) {
        this.core.logger.warn(`ending the waiting lease call failed (${describe(err)})`);
      }
    }
    const late = setTimeout(() => call.abort.abort(), END_WAIT_MS);
    await call.done;
    clearTimeout(late);
  }
}

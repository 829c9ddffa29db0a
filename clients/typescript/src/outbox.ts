// The worker's outbox: the results and the progress/log events waiting to be sent, the
// events' own sender, and how a batch of results is sent on its own (`complete` without
// `lease`), mending what Ferry refuses. The pump (`pump.ts`) decides when results go.

import { FerryError } from "./errors.js";
import { sleep } from "./http.js";
import type { EventBody, Outgoing, ResultBody, WorkerCore } from "./protocol.js";
import { MAX_BATCH, describe, refusedItem } from "./support.js";

/** Whether a failed call may succeed later as it is: no answer, a 5xx, or a 429. */
export function transient(err: unknown): boolean {
  return !(err instanceof FerryError) || err.status === 0 || err.status >= 500 || err.status === 429;
}

export class Outbox {
  /** Results waiting to be sent, oldest first. */
  results: Outgoing<ResultBody>[] = [];
  /** Progress and log events waiting to be sent, in the order the tasks wrote them. */
  events: Outgoing<EventBody>[] = [];
  /** The events flush under way (one at a time): settles when it is over. */
  private flushing: Promise<unknown> = Promise.resolve();

  constructor(private readonly core: WorkerCore) {}

  pushResult(r: Outgoing<ResultBody>): void {
    this.results.push(r);
    this.core.bell.ring();
  }

  pushEvent(e: Outgoing<EventBody>): void {
    this.events.push(e);
    this.core.bell.ring();
  }

  /** Drops what belongs to a session that is gone (Ferry would refuse it). */
  dropGeneration(generation: number): void {
    this.results = this.results.filter((r) => r.generation !== generation);
    this.events = this.events.filter((e) => e.generation !== generation);
  }

  /** Takes up to `max` of the current session's results, oldest first (an older session's are dropped). */
  take(max = MAX_BATCH): Outgoing<ResultBody>[] {
    const generation = this.core.generation();
    const stale = this.results.filter((r) => r.generation !== generation);
    if (stale.length > 0) {
      this.results = this.results.filter((r) => r.generation === generation);
      for (const r of stale) this.core.done(r.key);
    }
    return this.results.splice(0, max);
  }

  /** Puts results that were not sent back at the front, in their order. */
  putBack(batch: Outgoing<ResultBody>[]): void {
    const generation = this.core.generation();
    const keep = batch.filter((r) => r.generation === generation);
    for (const r of batch) if (r.generation !== generation) this.core.done(r.key);
    this.results.unshift(...keep);
    this.core.bell.ring();
  }

  /** Frees the slots of results Ferry answered, noting those it refused as no longer this worker's. */
  acknowledge(batch: Outgoing<ResultBody>[], acks: Array<{ id: string; accepted: boolean }> | undefined): void {
    batch.forEach((r, i) => {
      if (acks?.[i]?.accepted === false) {
        this.core.logger.info(`job ${r.body.id} attempt ${r.body.attempt}: result refused (no longer this worker's)`);
      }
      this.core.done(r.key);
    });
  }

  // ---- events -----------------------------------------------------------------------

  /**
   * Sends every event queued so far, after the flush under way if there is one (one
   * sender at a time). Whatever was queued before the call has been sent (or dropped as
   * refused) when it answers `true`; `false`: Ferry could not be reached (or the session
   * was lost), and what was not sent is kept (a lost session's is dropped).
   */
  flushEvents(): Promise<boolean> {
    const next = this.flushing.then(() => this.sendAllEvents());
    this.flushing = next.catch(() => false);
    return next;
  }

  /** The events' own sender: sends them as they come, in batches of up to 100. */
  async loop(): Promise<void> {
    let pause = 250;
    for (;;) {
      if (this.events.length === 0) {
        if (this.core.closing()) return;
        await this.core.bell.wait(1000);
        continue;
      }
      const reopening = this.core.reopening();
      if (reopening) {
        await reopening;
        continue;
      }
      if (await this.flushEvents()) {
        pause = 250;
        continue;
      }
      if (this.core.reopening()) continue;
      if (this.core.closing()) {
        this.core.logger.error(`${this.events.length} event(s) could not be sent at shutdown: giving up on them`);
        return;
      }
      this.core.logger.warn(`sending events failed; trying again in ${pause} ms`);
      await sleep(pause, this.core.life).catch(() => {});
      pause = Math.min(5000, pause * 2);
    }
  }

  private async sendAllEvents(): Promise<boolean> {
    for (;;) {
      const generation = this.core.generation();
      this.events = this.events.filter((e) => e.generation === generation);
      if (this.events.length === 0 || !this.core.session()) return this.events.length === 0;
      const batch = this.events.splice(0, MAX_BATCH);
      try {
        await this.sendEvents(batch);
      } catch (err) {
        if (!(err instanceof FerryError && err.code === "unknown_session")) {
          this.core.logger.warn(`sending ${batch.length} event(s) failed: ${describe(err)}`);
          this.events.unshift(...batch);
        }
        return false;
      }
    }
  }

  /**
   * Sends one batch of events. Ferry checks a whole call before it writes any of it: an
   * event it refuses as invalid (`400` naming `events[i]`) is dropped, with a warning,
   * and the rest are sent again.
   */
  private async sendEvents(batch: Outgoing<EventBody>[]): Promise<void> {
    let chunk = batch;
    while (chunk.length > 0) {
      try {
        await this.core.call("/events", { events: chunk.map((e) => e.body) });
        return;
      } catch (err) {
        const at = refusedItem(err, "events");
        if (at !== null && at < chunk.length) {
          this.core.logger.warn(`job ${chunk[at].body.id}: an event was refused and is dropped: ${describe(err)}`);
          chunk = chunk.filter((_, j) => j !== at);
          continue;
        }
        if (err instanceof FerryError && (err.code === "event_limit" || (err.status === 400 && err.code !== "unknown_session"))) {
          this.core.logger.warn(`events dropped: ${describe(err)}`);
          return;
        }
        throw err;
      }
    }
  }

  // ---- results on their own ---------------------------------------------------------

  /**
   * Sends results in one `complete` call without `lease` (at most 100), and frees their
   * slots. Ferry checks the whole call before it ends any attempt: a result it refuses as
   * invalid (`400` naming `results[i]`) is replaced by a non-retryable error saying why
   * (type `invalid_result`), so that the attempt ends now rather than at its timeout; if
   * that is refused too, it is dropped. A call too large as a whole (`413`) is sent again
   * one result at a time, and so is a batch refused for another reason, so that the
   * good results get through. Throws what may succeed later (no answer, 5xx, 429) and
   * `unknown_session`.
   */
  async deliver(results: Outgoing<ResultBody>[]): Promise<void> {
    let current = results.filter((r) => r.generation === this.core.generation());
    for (const r of results) if (r.generation !== this.core.generation()) this.core.done(r.key);
    const replaced = new Set<string>();
    while (current.length > 0) {
      let answer: { results?: Array<{ id: string; accepted: boolean }> };
      try {
        answer = await this.core.call("/complete", { results: current.map((r) => r.body) });
      } catch (err) {
        if (!(err instanceof FerryError) || transient(err) || err.code === "unknown_session") throw err;
        const at = err.status === 413 ? (current.length > 1 ? null : 0) : refusedItem(err, "results");
        if (at === null || at >= current.length) {
          if (current.length > 1) {
            // The call as a whole is refused: one result at a time finds the one at fault.
            for (const r of current) await this.deliver([r]);
            return;
          }
          this.core.logger.error(`job ${current[0].body.id} attempt ${current[0].body.attempt}: Ferry refused its result: ${describe(err)}`);
          this.core.done(current[0].key);
          return;
        }
        const r = current[at];
        this.core.logger.error(`job ${r.body.id} attempt ${r.body.attempt}: Ferry refused its result: ${describe(err)}`);
        if (replaced.has(r.key)) {
          this.core.done(r.key);
          current = current.filter((_, j) => j !== at);
        } else {
          replaced.add(r.key);
          const message = `Ferry refused the task's result (${err.field ?? err.status}: ${err.message})`;
          current = current.map((x, j) =>
            j === at
              ? { ...x, body: { id: x.body.id, attempt: x.body.attempt, error: { type: "invalid_result", message, retryable: false } } }
              : x,
          );
        }
        continue;
      }
      this.acknowledge(current, answer?.results);
      return;
    }
  }
}

/**
 * Flow control: how a consumer that cannot keep up (a blocked stdout, a
 * slow log file) stops the ring-buffer readers that feed it, instead of
 * holding their events in memory without limit.
 * @module
 */

/**
 * A switch a slow consumer pauses the readers it is given to with
 * (`chrootGuard(policy, { flow })`, `followPinnedGuard({ flow })`,
 * `chrootWatch({ flow })`). While it is paused, no batch reaches
 * JavaScript: each reader's thread fills one batch (at most
 * `min(ringBufferBytes, 2 MiB)` bytes of records), then leaves records in
 * the kernel ring buffer, where the programs count what does not fit
 * (`ringBufferFull`; by action for decisions). On {@link Flow.resume} what
 * was kept is delivered, then a lost report with those counts (`onLost`).
 * Memory stays bounded and nothing is lost uncounted. The kernel is not
 * paused: a guard keeps deciding every call by its policy.
 *
 * A watch session is shared by the subscribers with equal options: it is
 * paused while the flow of any of them is.
 */
export class Flow {
  #paused = false;
  readonly #switches = new Set<(paused: boolean) => void>();

  /** Whether the flow is paused. */
  get paused(): boolean {
    return this.#paused;
  }

  /** Stops delivery to every reader given this flow. Idempotent. */
  pause(): void {
    this.#set(true);
  }

  /** Lets delivery go on. Idempotent. */
  resume(): void {
    this.#set(false);
  }

  /**
   * Adds a reader's switch, called at once when the flow is paused and on
   * every change; returns the way to remove it.
   * @internal
   */
  attach(switchTo: (paused: boolean) => void): () => void {
    this.#switches.add(switchTo);
    if (this.#paused) switchTo(true);
    return () => void this.#switches.delete(switchTo);
  }

  #set(paused: boolean): void {
    if (paused === this.#paused) return;
    this.#paused = paused;
    for (const s of [...this.#switches]) s(paused);
  }
}

/**
 * Whether `flow` is a {@link Flow} or absent: the check every option taking
 * one makes. By shape, not `instanceof`: the ESM and CommonJS builds each
 * have their own class.
 * @internal
 */
export function isFlowOption(flow: unknown): boolean {
  return flow === undefined || (typeof flow === 'object' && flow !== null && typeof (flow as Flow).attach === 'function');
}

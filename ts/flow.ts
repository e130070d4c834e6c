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
 * JavaScript (but one already on its way): each reader's thread leaves
 * records in the kernel ring buffer, where the programs count what does
 * not fit (`ringBufferFull`; by action for decisions). On
 * {@link Flow.resume} the readers wake and deliver what the ring buffer
 * kept, then a lost report with those counts (`onLost`); reports wait for
 * the resume too.
 * Memory stays bounded and nothing is lost uncounted. The kernel is not
 * paused: a guard keeps deciding every call by its policy.
 *
 * A watch session is shared by the subscribers with equal options: it is
 * paused while the flow of any of them is.
 */
export class Flow {
  #paused = false;

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

  #set(paused: boolean): void {
    if (paused === this.#paused) return;
    this.#paused = paused;
    for (const s of [...(switches.get(this) ?? [])]) s(paused);
  }
}

/** The readers' switches of each flow, outside the class so that they are no part of its public shape. */
const switches = new WeakMap<Flow, Set<(paused: boolean) => void>>();

/**
 * Adds a reader's switch to `flow`, called at once when it is paused and
 * on every change; returns the way to remove it (a no-op without a flow).
 * @internal
 */
export function attachFlow(flow: Flow | undefined, switchTo: (paused: boolean) => void): () => void {
  if (!flow) return () => {};
  let set = switches.get(flow);
  if (!set) switches.set(flow, (set = new Set()));
  set.add(switchTo);
  if (flow.paused) switchTo(true);
  return () => void set.delete(switchTo);
}

/**
 * Whether `flow` is a {@link Flow} or absent: the check every option taking
 * one makes. The ESM and CommonJS builds each have their own class, and a
 * flow works only with the readers of its own build.
 * @internal
 */
export function isFlowOption(flow: unknown): boolean {
  return flow === undefined || flow instanceof Flow;
}

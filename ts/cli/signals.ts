/**
 * How `watch` and `agent` stop at SIGINT or SIGTERM. The first signal
 * finishes the session: its programs detach, and what the ring buffer
 * still holds is handed over before the last line, so a stop loses no call
 * made before it. A second signal (someone who will not wait for a long
 * backlog) ends at once and says what was not written.
 * @internal
 * @module
 */
import type { SessionStats } from '../session.js';

/** What {@link stopOnSignals} calls; read at each signal, so a session joined later is seen. */
export interface StopHandlers {
  /** The joined session's finish (`JoinedSession.finish`), or undefined before it is joined. */
  finish(): (() => Promise<SessionStats>) | undefined;
  /** The session's totals now (`AttachInfo.stats`), or undefined before it attached. */
  stats(): SessionStats | undefined;
  /**
   * The end: `last` holds the totals after the drain, or the totals read at
   * a second signal; `cut` is true when that second signal dropped what the
   * ring buffer still held.
   */
  detached(last: SessionStats | undefined, cut: boolean): void;
  /** The finish failed (an error with a code, as `finish` raises it). */
  failed(err: unknown): void;
}

/**
 * Installs the SIGINT and SIGTERM handlers; `off()` removes them, after
 * which nothing in `handlers` is called (a finish still under way included).
 */
export function stopOnSignals(handlers: StopHandlers): { off(): void } {
  let finishing = false;
  let over = false;
  const onSignal = () => {
    if (over) return;
    const finish = handlers.finish();
    if (finishing || !finish) return handlers.detached(handlers.stats(), finishing);
    finishing = true;
    finish().then(
      (last) => !over && handlers.detached(last, false),
      (err: unknown) => !over && handlers.failed(err),
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    off() {
      over = true;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

/** The last line of a stop: `detached: <what>`, or at a second signal what it dropped. */
export function detachedNote(what: string, cut: boolean): string {
  return cut ? `detached at the second signal: ${what}; the events still in the ring buffer were not written` : `detached: ${what}`;
}

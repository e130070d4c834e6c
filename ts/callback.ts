/**
 * User callbacks (internal): every `onAttach`, `onLost` and the like is
 * called through {@link callUser}, so one that throws is reported the same
 * way wherever it is called.
 * @internal
 * @module
 */

/**
 * Calls a user callback; what it throws is reported as an uncaught error on
 * a later tick (as RxJS does for subscriber callbacks), so it cannot break
 * the session or other subscribers.
 */
export function callUser<T>(fn: ((x: T) => void) | undefined, x: T): void {
  try {
    fn?.(x);
  } catch (err) {
    setTimeout(() => {
      throw err;
    });
  }
}

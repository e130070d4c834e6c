/**
 * Event timestamps are ns since boot (CLOCK_BOOTTIME); these helpers turn
 * them into wall-clock time.
 * @module
 */
import { native } from './native.js';

let offsetNs: bigint | undefined;

/**
 * The wall-clock `Date` of a CLOCK_BOOTTIME timestamp in ns (an event's
 * `ts`), using the offset between the two clocks measured on first use
 * (millisecond precision; a later clock step is not followed).
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` when the addon cannot load.
 */
export function toWallClock(ts: bigint): Date {
  return new Date(Number((ts + wallClockOffsetNs()) / 1_000_000n));
}

/**
 * The local time's offset from UTC between `fromMs` and `toMs` (ms since
 * the epoch), as this process's `Date` keeps it (Node.js's time zone
 * database and `TZ`): `[from, minutes]` pairs, flattened and ascending,
 * each saying local time is UTC + `minutes` from `from` on. Found by
 * sampling once a day and bisecting each change to the millisecond, so
 * changes closer together than that (none in the database's zones for
 * decades) can be missed. For the addon's table rows.
 * @internal
 */
export function zoneOffsets(fromMs: number, toMs: number): number[] {
  const minutes = (ms: number) => -new Date(ms).getTimezoneOffset();
  const out = [fromMs, minutes(fromMs)];
  const STEP = 86_400_000;
  for (let at = fromMs; at < toMs; at += STEP) {
    const next = Math.min(at + STEP, toMs);
    if (minutes(next) === out[out.length - 1]) continue;
    // The first ms at which the offset differs from the one before it.
    let [lo, hi] = [at, next];
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (minutes(mid) === out[out.length - 1]) lo = mid;
      else hi = mid;
    }
    out.push(hi, minutes(hi));
  }
  return out;
}

/**
 * CLOCK_REALTIME − CLOCK_BOOTTIME in ns, as {@link toWallClock} measured it
 * on first use (the addon's table rows take it too, so both print one time).
 * @internal
 */
export function wallClockOffsetNs(): bigint {
  return (offsetNs ??= BigInt(Date.now()) * 1_000_000n - native().boottimeNs());
}

/**
 * `CLOCK_BOOTTIME` now, in ns since boot: the clock of every event's `ts`,
 * so `boottimeNs() - event.ts` is the event's age.
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` when the addon cannot load.
 */
export function boottimeNs(): bigint {
  return native().boottimeNs();
}

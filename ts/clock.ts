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

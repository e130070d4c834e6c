/**
 * `chrootWatch()`: live chroot(2) events from the kernel as an RxJS
 * Observable.
 * @module
 */
import { Observable } from 'rxjs/internal/Observable';
import { ChrootGuardError } from './errors.js';
import type { ChrootEvent } from './events.js';
import { callUser } from './callback.js';
import { joinSession } from './session.js';
import { watchSessionOptions, type ChrootWatchOptions } from './watch-options.js';

export type { ChrootWatchOptions } from './watch-options.js';

/**
 * Live chroot(2) calls as typed events, one per call, emitted when the call
 * returns.
 *
 * Cold: each subscription attaches (subscribers with equal options share
 * one kernel session) and the last unsubscribe detaches every program,
 * link and map. Needs root, or CAP_BPF and CAP_PERFMON.
 *
 * Errors arrive on the error channel as {@link ChrootGuardError}: `EPERM`
 * (privileges), `UNSUPPORTED_KERNEL`, `MODE_UNAVAILABLE`, `LOAD_FAILED`
 * (verifier; see `verifierLog`), `MOUNT_FAILED`, `NATIVE_UNAVAILABLE`.
 *
 * @throws {ChrootGuardError} `INVALID_ARGUMENT` at call time for bad options.
 * @example
 * import { chrootWatch } from 'chroot-guard';
 * chrootWatch({ comm: 'debootstrap' }).subscribe((e) => console.log(e.pid, e.path, e.errno ?? 'ok'));
 */
export function chrootWatch(options: ChrootWatchOptions = {}): Observable<ChrootEvent> {
  const opts = watchSessionOptions(options);
  return new Observable<ChrootEvent>((subscriber) => {
    let joined: ReturnType<typeof joinSession>;
    try {
      joined = joinSession(opts, {
        event: (e) => {
          if (!subscriber.closed) subscriber.next(e);
        },
        attached: (info) => callUser(options.onAttach, info),
        lost: (report) => callUser(options.onLost, report),
        error: (err) => subscriber.error(err),
      }, options.flow);
    } catch (err) {
      subscriber.error(err instanceof ChrootGuardError ? err : new ChrootGuardError('INTERNAL', String(err), { cause: err }));
      return;
    }
    return joined.leave;
  });
}

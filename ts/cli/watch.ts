/**
 * `chroot-guard watch`: chroot(2) calls live, as a table or JSON lines.
 * @internal
 * @module
 */
import type { AttachMode } from '../errors.js';
import { EXIT, describeAttach, describeLost, note, reportError } from './output.js';
import { addonLines, EventPrinter } from './printer.js';
import { detachedNote, stopOnSignals } from './signals.js';
import { callsLost } from '../batch.js';
import { joinSession, type OutputState, type SessionStats } from '../session.js';
import { watchSessionOptions } from '../watch-options.js';

/** Options of `watch`, as commander parses them. */
export interface WatchFlags {
  json?: boolean;
  mode: 'auto' | AttachMode;
  pid?: number;
  uid?: number;
  comm?: string;
  ringBufferBytes?: number;
  compat?: boolean;
}

/**
 * Runs until SIGINT/SIGTERM (exit 0) or an error (its exit code). At the
 * signal the programs are detached and what the ring buffer still holds is
 * printed before the last line; a second signal stops at once.
 *
 * After the table header or the `attach` record, the addon's reader thread
 * writes the rows, or the `chroot` and `lost` records, to stdout itself
 * ({@link addonLines}); a reader of stdout slower than the calls blocks
 * that thread, so the backlog waits in the kernel ring buffer, whose drops
 * are counted, not in this process's memory.
 */
export function watch(flags: WatchFlags): Promise<number> {
  const printer = new EventPrinter(flags.json === true);
  return new Promise((resolve) => {
    let lost = 0;
    let leave: (() => void) | undefined;
    let finish: (() => Promise<SessionStats>) | undefined;
    let ended = false;
    let stats: (() => SessionStats) | undefined;
    let startOutput: ((sinceTs: bigint) => void) | undefined;
    let outputState: (() => OutputState | null) | undefined;
    /** The finish a first signal started: it settles once the session has stopped writing. */
    let finishing: Promise<SessionStats> | undefined;
    // Handlers first: the subscription can fail at once (e.g. no native addon).
    const stop = () => {
      ended = true;
      signals.off();
      process.stdout.off('error', onStdoutError);
      leave?.();
      leave = undefined;
      finish = undefined;
    };
    const signals = stopOnSignals({
      finish: () => {
        const f = finish;
        return f && (() => (finishing = f()));
      },
      stats: () => stats?.(),
      detached: (last, cut) => {
        stop();
        const end = (final: SessionStats | undefined) => {
          printer.finish(final, outputState?.());
          note(detachedNote(`${printer.count} event${printer.count === 1 ? '' : 's'}${lost ? `, ${lost} lost` : ''}`, cut));
          resolve(EXIT.OK);
        };
        // Cut short: leaving told the addon to stop writing stdout, and the
        // last lines are this process's once it has (it finishes a line
        // begun, for 2 s at most), with the totals the finish ended with
        // (the stats read at the signal are zeros while it runs).
        if (cut && finishing) void finishing.then(end, () => end(last));
        else end(last);
      },
      failed: (err) => {
        stop();
        resolve(reportError(err));
      },
    });
    const onStdoutError = (err: NodeJS.ErrnoException) => {
      stop();
      resolve(err.code === 'EPIPE' ? EXIT.OK : reportError(err));
    };
    process.stdout.on('error', onStdoutError);
    // The session itself, not chrootWatch(): the same options and checks,
    // without loading RxJS (part of the CLI's start-up).
    try {
      const joined = joinSession(
        {
          ...watchSessionOptions({
            mode: flags.mode,
            ...(flags.pid !== undefined ? { pid: flags.pid } : {}),
            ...(flags.uid !== undefined ? { uid: flags.uid } : {}),
            ...(flags.comm !== undefined ? { comm: flags.comm } : {}),
            ...(flags.ringBufferBytes !== undefined ? { ringBufferBytes: flags.ringBufferBytes } : {}),
            ...(flags.compat ? { compat: true } : {}),
          }),
          output: addonLines(flags.json === true),
        },
        {
          attached: (info) => {
            stats = info.stats;
            note(`${describeAttach(info)}\n  watching chroot(2); Ctrl-C to stop`);
            printer.attached(info, (since) => startOutput?.(since));
          },
          outputError: (err) => onStdoutError(err),
          lost: (report) => {
            lost = callsLost(report.total);
            printer.lost(report);
            note(describeLost(report));
          },
          event: (e) => printer.print(e),
          error: (err) => {
            stop();
            printer.finish(undefined, outputState?.());
            resolve(reportError(err));
          },
        },
      );
      // An error can come while joining: leave then, as unsubscribing would.
      if (ended) joined.leave();
      else {
        ({ leave, finish, startOutput, outputState } = joined);
      }
    } catch (err) {
      stop();
      resolve(reportError(err));
    }
  });
}

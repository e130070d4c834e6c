/**
 * `chroot-guard watch`: chroot(2) calls live, as a table or JSON lines.
 * @internal
 * @module
 */
import { chrootWatch } from '../watch.js';
import type { AttachMode } from '../errors.js';
import { EXIT, describeAttach, describeLost, note, reportError } from './output.js';
import { EventPrinter } from './printer.js';
import { callsLost } from '../batch.js';
import type { SessionStats } from '../session.js';

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

/** Runs until SIGINT/SIGTERM (exit 0) or an error (its exit code). */
export function watch(flags: WatchFlags): Promise<number> {
  const printer = new EventPrinter(flags.json === true);
  return new Promise((resolve) => {
    let lost = 0;
    let sub: { unsubscribe(): void } | undefined;
    let stats: (() => SessionStats) | undefined;
    // Handlers first: the subscription can fail at once (e.g. no native addon).
    const stop = () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.stdout.off('error', onStdoutError);
      sub?.unsubscribe();
    };
    const onSignal = () => {
      const last = stats?.();
      stop();
      printer.finish(last);
      note(`detached: ${printer.count} event${printer.count === 1 ? '' : 's'}${lost ? `, ${lost} lost` : ''}`);
      resolve(EXIT.OK);
    };
    const onStdoutError = (err: NodeJS.ErrnoException) => {
      stop();
      resolve(err.code === 'EPIPE' ? EXIT.OK : reportError(err));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.stdout.on('error', onStdoutError);
    sub = chrootWatch({
      mode: flags.mode,
      ...(flags.pid !== undefined ? { pid: flags.pid } : {}),
      ...(flags.uid !== undefined ? { uid: flags.uid } : {}),
      ...(flags.comm !== undefined ? { comm: flags.comm } : {}),
      ...(flags.ringBufferBytes !== undefined ? { ringBufferBytes: flags.ringBufferBytes } : {}),
      ...(flags.compat ? { compat: true } : {}),
      onAttach: (info) => {
        stats = info.stats;
        note(`${describeAttach(info)}\n  watching chroot(2); Ctrl-C to stop`);
        printer.attached(info);
      },
      onLost: (report) => {
        lost = callsLost(report.total);
        printer.lost(report);
        note(describeLost(report));
      },
    }).subscribe({
      next: (e) => printer.print(e),
      error: (err: unknown) => {
        stop();
        printer.finish(undefined);
        resolve(reportError(err));
      },
    });
  });
}

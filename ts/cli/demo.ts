/**
 * `chroot-guard demo`: watch while a built-in workload makes real chroot(2)
 * calls into a busybox root made on the fly, then check that every call was
 * seen with the right pid, path and result.
 * @internal
 * @module
 */
import type { Subscription } from 'rxjs';
import { chrootWatch } from '../watch.js';
import type { AttachMode } from '../errors.js';
import type { ChrootEvent } from '../events.js';
import { demoSteps, makeBusyboxRoot, runStep, type ExpectedCall } from '../demo.js';
import type { AttachInfo } from '../session.js';
import { EXIT, describeAttach, note, reportError, terminalSafe } from './output.js';
import { EventPrinter } from './printer.js';

/** How long a step's events may take to arrive before the next step starts (ms). */
const STEP_WAIT_MS = 2000;

/** Options of `demo`. */
export interface DemoFlags {
  json?: boolean;
  mode: 'auto' | AttachMode;
  keep?: boolean;
}

/** Runs the demo; resolves with the exit code. */
export async function demo(flags: DemoFlags): Promise<number> {
  const root = makeBusyboxRoot();
  const printer = new EventPrinter(flags.json === true);
  const seen: ChrootEvent[] = [];
  let sub: Subscription | undefined;
  try {
    // Attach first (the workload must not start before the programs are in).
    const attached = new Promise<AttachInfo>((resolve, reject) => {
      sub = chrootWatch({ mode: flags.mode, onAttach: resolve, onLost: (r) => printer.lost(r) }).subscribe({
        next: (e) => {
          seen.push(e);
          printer.print(e);
        },
        error: reject,
      });
    });
    const info = await attached;
    note(`${describeAttach(info)}\n  demo root: ${root.dir}`);
    printer.attached(info);
    const expected: Array<{ pid: number; call: ExpectedCall }> = [];
    const allSeen = (calls: typeof expected) => calls.every(({ pid, call }) => seen.some((e) => e.pid === pid && e.path === call.path));
    const waitFor = async (calls: typeof expected, ms: number) => {
      const deadline = Date.now() + ms;
      while (!allSeen(calls) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    };
    for (const step of demoSteps(root.dir)) {
      note(`▶ ${step.title}: ${step.argv.join(' ')}`);
      const run = await runStep(step.argv);
      for (const line of run.output.trimEnd().split('\n').filter(Boolean)) note(`  ${line}`);
      const mine = step.calls.map((call) => ({ pid: run.pid, call }));
      expected.push(...mine);
      // Its events print under its header, before the next step's.
      await waitFor(mine, STEP_WAIT_MS);
    }
    // Whatever is still missing gets the rest of its time.
    await waitFor(expected, 5000);
    printer.finish(undefined);
    let ok = true;
    note('summary (expected call → event seen):');
    for (const { pid, call } of expected) {
      const e = seen.find((x) => x.pid === pid && x.path === call.path && x.errno === call.errno);
      const resolvedOk = !e || call.errno !== null || e.resolvedPath === call.resolvedPath;
      const good = e !== undefined && resolvedOk;
      ok &&= good;
      note(
        `  ${good ? '✓' : '✗'} pid ${pid} chroot(${call.path}) = ${call.errno ?? 'ok'}` +
          (e ? ` — seen: comm ${terminalSafe(e.comm)}, ${e.errno ?? 'ok'}${e.resolvedPath ? `, resolved ${terminalSafe(e.resolvedPathBytes ?? e.resolvedPath)}` : ''}` : ' — NOT SEEN'),
      );
    }
    return ok ? EXIT.OK : EXIT.MISMATCH;
  } catch (err) {
    return reportError(err);
  } finally {
    sub?.unsubscribe();
    if (flags.keep) note(`kept ${root.dir}`);
    else root.remove();
  }
}

/**
 * `chroot-guard stacks`: kernel stacks at each chroot hook, with counts.
 * @internal
 * @module
 */
import type { AttachMode } from '../errors.js';
import { countStacks, type StackReport } from '../stacks.js';
import { EXIT, note, reportError } from './output.js';

/** Renders stacks the way bpftrace prints `@[probe, kstack] = count()`, most frequent first. */
export function renderStacks(r: StackReport): string {
  return r.stacks
    .map((s) => {
      const frames = s.frames.length
        ? s.frames.map((f) => `    ${f.symbol ? `${f.symbol}+${f.offset}` : f.address}`).join('\n')
        : '    <no kernel stack: this kernel gives the hook user-mode registers>';
      return `@[${s.hook},\n${frames}\n]: ${s.count}`;
    })
    .join('\n\n');
}

/** Runs `stacks`; resolves with the exit code. */
export async function stacksCommand(flags: { json?: boolean; mode: 'auto' | AttachMode; duration: number }): Promise<number> {
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const r = await countStacks({
      mode: flags.mode,
      durationMs: flags.duration * 1000,
      signal: abort.signal,
      onAttach: (info) => note(`counting kernel stacks in ${info.mode} mode at ${info.hooks.join(', ')} for ${flags.duration}s (Ctrl-C to stop early)`),
    });
    for (const s of r.skipped) note(`skipped ${s}`);
    if (flags.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    else process.stdout.write((r.stacks.length ? renderStacks(r) : '(no chroot calls seen)') + '\n');
    return EXIT.OK;
  } catch (err) {
    return reportError(err);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

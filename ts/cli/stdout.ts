/**
 * Stdout for every command: its end (EPIPE once the reader exits, as with
 * `chroot-guard ps | head -1`) is caught from the CLI's start, so that no
 * command dies of an unhandled `'error'` event with a stack trace; each
 * command decides what an ended stdout means through
 * {@link onStdoutGone}, and lines written after it are dropped.
 *
 * Stdout to a pipe is asynchronous in Node.js: what its reader has not
 * taken yet is kept in memory, without limit. {@link stdoutFlow} is paused
 * once {@link STDOUT_PAUSE_BYTES} wait and resumed when they are written,
 * so the readers the commands give it stop too and the kernel counts what
 * its ring buffer cannot hold (a flood of denied calls behind a stalled
 * `enforce --json | …` costs lost records, reported, not the guard's
 * memory).
 * @internal
 * @module
 */
import type { Writable } from 'node:stream';
import { Flow } from '../flow.js';

/** Bytes waiting for stdout's reader at which {@link stdoutFlow} pauses. */
export const STDOUT_PAUSE_BYTES = 1 << 20;

/**
 * After a write to `stream`: pauses `flow` once {@link STDOUT_PAUSE_BYTES}
 * wait there, until they are written. Past the stream's high-water mark
 * write() returned false, so 'drain' comes once everything waiting is
 * written.
 */
export function pauseWhileBacklogged(stream: Writable, flow: Flow): void {
  if (stream.writableLength >= STDOUT_PAUSE_BYTES && !flow.paused) {
    flow.pause();
    stream.once('drain', () => flow.resume());
  }
}

/** Paused while stdout's reader lags by {@link STDOUT_PAUSE_BYTES} or more; give it to every reader whose records a command prints. */
export const stdoutFlow = new Flow();

/**
 * The error that ended stdout, or null. For `enforce`, dying of it would
 * remove the guard because nobody reads its log any more.
 */
let stdoutGone: NodeJS.ErrnoException | null = null;
const goneListeners = new Set<(err: NodeJS.ErrnoException) => void>();
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (stdoutGone) return;
  stdoutGone = err;
  // Lines are dropped from now on: nothing to wait for.
  stdoutFlow.resume();
  for (const l of goneListeners) l(err);
});

/** Calls `listener` once if stdout ends (see {@link stdoutGone}); returns the way to stop listening. */
export function onStdoutGone(listener: (err: NodeJS.ErrnoException) => void): () => void {
  if (stdoutGone) {
    listener(stdoutGone);
    return () => {};
  }
  goneListeners.add(listener);
  return () => goneListeners.delete(listener);
}

/**
 * Writes `text` to stdout, or drops it once stdout has ended; `done` is
 * called once stdout has handed it to the kernel (never, when dropped).
 */
export function writeStdout(text: string, done?: () => void): void {
  if (stdoutGone) return;
  process.stdout.write(text, done && ((err) => !err && done()));
  pauseWhileBacklogged(process.stdout, stdoutFlow);
}

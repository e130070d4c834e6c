/**
 * Stdout for every command: its end (EPIPE once the reader exits, as with
 * `chroot-guard ps | head -1`) is caught from the CLI's start, so that no
 * command dies of an unhandled `'error'` event with a stack trace; each
 * command decides what an ended stdout means through
 * {@link onStdoutGone}, and lines written after it are dropped.
 * @internal
 * @module
 */

/**
 * The error that ended stdout, or null. For `enforce`, dying of it would
 * remove the guard because nobody reads its log any more.
 */
let stdoutGone: NodeJS.ErrnoException | null = null;
const goneListeners = new Set<(err: NodeJS.ErrnoException) => void>();
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (stdoutGone) return;
  stdoutGone = err;
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
}

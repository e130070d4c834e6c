/**
 * Stdout for every command: its end (EPIPE once the reader exits, as with
 * `chroot-guard ps | head -1`) is caught from the CLI's start, so that no
 * command dies of an unhandled `'error'` event with a stack trace; each
 * command decides what an ended stdout means through
 * {@link onStdoutGone}, and lines written after it are dropped. A reader
 * slower than the writes is seen through {@link onStdoutPressure}.
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

/** Whether stdout's buffer is past its high-water mark, waiting for `'drain'`. */
let backedUp = false;
const pressureListeners = new Set<(backedUp: boolean) => void>();

/**
 * Calls `listener(true)` when what stdout could not write at once is past
 * its high-water mark (the reader is slower than the writes: Node.js
 * buffers a pipe's writes in memory without limit) and `listener(false)`
 * when it has drained; returns the way to stop listening. `watch` holds its
 * session's batches back meanwhile, so the kernel ring buffer, not this
 * process's memory, takes the backlog.
 */
export function onStdoutPressure(listener: (backedUp: boolean) => void): () => void {
  pressureListeners.add(listener);
  if (backedUp) listener(true);
  return () => pressureListeners.delete(listener);
}

function setBackedUp(on: boolean): void {
  if (backedUp === on) return;
  backedUp = on;
  for (const l of [...pressureListeners]) l(on);
}

/** Writes `text` to stdout, or drops it once stdout has ended. */
export function writeStdout(text: string): void {
  if (stdoutGone) return;
  // write() returns false for any text longer than the high-water mark,
  // even one written at once; what is still queued after it tells a slow
  // reader (and then 'drain' follows, since write() returned false).
  process.stdout.write(text);
  if (backedUp || process.stdout.writableLength < process.stdout.writableHighWaterMark) return;
  setBackedUp(true);
  process.stdout.once('drain', () => setBackedUp(false));
}

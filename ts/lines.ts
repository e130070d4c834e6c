/**
 * Lines of a byte stream, in constant memory: what `replay` and `learn`
 * read a recording with. Node's `readline` holds a line of any length (a
 * file without newlines is read whole into one string); here a line longer
 * than {@link MAX_LINE_BYTES} is reported as such and skipped to its end,
 * so memory stays bounded by the chunk size plus that limit whatever the
 * input holds.
 * @internal
 * @module
 */

/**
 * Longest line read, in bytes (1 MiB). The longest record chroot-guard
 * writes holds four paths of at most 4095 bytes, each twice (the display
 * form, at most 4 characters per byte as `\xNN`, JSON-escaped at most 6 per
 * character, and base64), well under 200 KiB.
 */
export const MAX_LINE_BYTES = 1024 * 1024;

/** One line: its 1-based number, its bytes without the newline (a view: copy it to keep it), or `tooLong` when it was cut. */
export interface Line {
  readonly number: number;
  readonly bytes: Buffer;
  /** The line was longer than {@link MAX_LINE_BYTES}: `bytes` is empty and the line was skipped. */
  readonly tooLong: boolean;
}

/**
 * The lines of `chunks` (a file or stdin stream), each without its `\n`
 * (and a `\r` before it); a last line without a newline counts. `onBytes`
 * is told each chunk's size as it is read (progress).
 */
export async function* lines(chunks: AsyncIterable<Buffer | string>, onBytes?: (n: number) => void): AsyncGenerator<Line> {
  let number = 0;
  let carry: Buffer[] = [];
  let carried = 0;
  let skipping = false; // inside a line that went over the limit
  const line = (bytes: Buffer, tooLong: boolean): Line => {
    number++;
    const end = bytes.length > 0 && bytes[bytes.length - 1] === 0x0d ? bytes.length - 1 : bytes.length;
    return { number, bytes: tooLong ? Buffer.alloc(0) : bytes.subarray(0, end), tooLong };
  };
  for await (const raw of chunks) {
    const chunk = typeof raw === 'string' ? Buffer.from(raw) : raw;
    onBytes?.(chunk.length);
    let at = 0;
    for (let nl = chunk.indexOf(0x0a, at); nl >= 0; nl = chunk.indexOf(0x0a, at)) {
      if (skipping) {
        skipping = false;
        yield line(Buffer.alloc(0), true);
      } else if (carried > 0) {
        if (carried + nl - at > MAX_LINE_BYTES) yield line(Buffer.alloc(0), true);
        else yield line(Buffer.concat([...carry, chunk.subarray(at, nl)]), false);
        carry = [];
        carried = 0;
      } else if (nl - at > MAX_LINE_BYTES) {
        yield line(Buffer.alloc(0), true);
      } else {
        yield line(chunk.subarray(at, nl), false);
      }
      at = nl + 1;
    }
    if (at < chunk.length && !skipping) {
      carried += chunk.length - at;
      if (carried > MAX_LINE_BYTES) {
        skipping = true;
        carry = [];
        carried = 0;
      } else {
        // A copy: the stream may reuse its buffer.
        carry.push(Buffer.from(chunk.subarray(at)));
      }
    }
  }
  if (skipping) yield line(Buffer.alloc(0), true);
  else if (carried > 0) yield line(Buffer.concat(carry), false);
}

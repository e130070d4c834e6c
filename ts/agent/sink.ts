/**
 * Where the agent's NDJSON stream goes: stdout, a file (appended to), or a
 * file rotated by size with rotating-file-stream, logrotate's way: FILE.1
 * is the newest rotated file, FILE.<keep> the oldest kept. Each write is
 * whole lines and the library never splits a write between files, so every
 * file holds whole records; writes made while a rotation runs wait for it.
 * @internal
 * @module
 */
import { createWriteStream } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Writable } from 'node:stream';
import { createStream } from 'rotating-file-stream';
import { DEFAULT_KEEP, type AgentConfig } from './config.js';
import type { LineWriter } from '../cli/printer.js';

/** An open output. */
export interface Sink {
  /** Where lines go; undefined for stdout (the printer's own writer, which copes with a closed pipe). */
  readonly write: LineWriter | undefined;
  /** Calls `listener` once if the file cannot be written (the stream then ends). */
  onError(listener: (err: Error) => void): void;
  /** Writes what is buffered and closes the file; resolves once it is on disk (at once for stdout). */
  close(): Promise<void>;
}

/** Opens the output `config.output` names (stdout by default). Files are created 0640. */
export function openSink(output: AgentConfig['output']): Sink {
  const path = output?.path ?? '-';
  if (path === '-') return { write: undefined, onError: () => {}, close: async () => {} };
  const stream: Writable = output?.rotate
    ? createStream(basename(path), { path: dirname(path), size: `${output.rotate.maxBytes}B`, rotate: output.rotate.keep ?? DEFAULT_KEEP, mode: 0o640 })
    : createWriteStream(path, { flags: 'a', mode: 0o640 });
  let failed: Error | undefined;
  const listeners: Array<(err: Error) => void> = [];
  stream.on('error', (err: Error) => {
    if (failed) return;
    failed = err;
    for (const l of listeners) l(err);
  });
  return {
    // Not awaited: the stream buffers what the disk has not taken yet
    // (nothing is dropped); close() waits for all of it.
    write: (text) => {
      if (!failed) stream.write(text);
    },
    onError: (l) => (failed ? l(failed) : listeners.push(l)),
    close: () => new Promise<void>((resolve) => (failed ? resolve() : stream.end(() => resolve()))),
  };
}

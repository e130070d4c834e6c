/**
 * Where the agent's NDJSON stream goes: stdout, a file (appended to), or a
 * file rotated by size with rotating-file-stream, logrotate's way: FILE.1
 * is the newest rotated file, FILE.<keep> the oldest kept. Each write is
 * whole lines and the library never splits a write between files, so every
 * file holds whole records; writes made while a rotation runs wait for it.
 *
 * The agent writes as root: the file's directory must be root's alone
 * (`checkTrustedDirectory`, created 0700 when missing), and what is opened
 * there must be a regular file of root's with one link and no write for
 * group or others, so that nothing planted before the directory was made
 * safe (a symbolic or hard link to another file, a FIFO, a file another
 * user can read back or truncate) is written through.
 * @internal
 * @module
 */
import { constants, createWriteStream, fstatSync, lstatSync, openSync, closeSync, type Stats } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { createStream } from 'rotating-file-stream';
import { ChrootGuardError } from '../errors.js';
import { UnsafePolicyFileError } from '../policy/types.js';
import { checkTrustedDirectory } from '../policy/trusted-file.js';
import { DEFAULT_KEEP, OUTPUT_DIR_FIX, type AgentConfig } from './config.js';
import type { LineWriter } from '../cli/printer.js';
import { Flow } from '../flow.js';
import { pauseWhileBacklogged, STDOUT_PAUSE_BYTES, stdoutFlow } from '../cli/stdout.js';

/** An open output. */
export interface Sink {
  /** Where lines go; undefined for stdout (the printer's own writer, which copes with a closed pipe). */
  readonly write: LineWriter | undefined;
  /**
   * Paused while {@link STDOUT_PAUSE_BYTES} or more wait to be written
   * (stdout's {@link stdoutFlow}, or the file's own): the agent's readers
   * follow it, so a stalled output costs counted lost records, not memory.
   */
  readonly flow: Flow;
  /** Calls `listener` once if the file cannot be written (the stream then ends). */
  onError(listener: (err: Error) => void): void;
  /** Writes what is buffered and closes the file; resolves once it is on disk (at once for stdout). */
  close(): Promise<void>;
}

/**
 * An output file the agent will not write: its directory or the file
 * itself is one another user could have chosen. `code` is
 * `INVALID_CONFIG`; `reason` is the fault and its remedy alone.
 */
export class UnsafeOutputError extends ChrootGuardError {
  /** What is wrong and how to fix it, e.g. `/srv/out/events.ndjson is a symbolic link: remove it`. */
  readonly reason: string;

  constructor(reason: string) {
    super('INVALID_CONFIG', `refusing the output ${reason}`);
    this.name = 'UnsafeOutputError';
    this.reason = reason;
  }
}

/** Mode of the files the agent creates: root writes, the administrator's group reads. */
const FILE_MODE = 0o640;

/** Why the output file `path` (stat `st`) is not one root may write to; undefined when it is. */
function unsafeFile(path: string, st: Stats): string | undefined {
  const euid = process.geteuid?.() ?? 0;
  if (st.isSymbolicLink()) return `${path} is a symbolic link: remove it (the agent creates the file itself)`;
  if (!st.isFile()) return `${path} is not a regular file: remove it (the agent creates the file itself)`;
  if (st.uid !== 0 && st.uid !== euid) return `${path} is owned by uid ${st.uid}: remove it (the agent creates the file itself)`;
  if (st.nlink !== 1) return `${path} has ${st.nlink} hard links, and another may be a name some other user reads: remove it (the agent creates the file itself)`;
  if (st.mode & 0o022) return `${path} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}) is writable by its group or others: chmod go-w ${path}`;
  return undefined;
}

/**
 * Opens the output `config.output` names (stdout by default). Files are
 * created 0640 in a directory created 0700 when missing (its parent must
 * exist).
 * @throws {UnsafeOutputError} `INVALID_CONFIG`: the directory is one
 * another user can write, or the file is not a regular file of root's with
 * one link and no write for group or others.
 * @throws {Error} The system's error when the directory cannot be made or
 * the file cannot be opened.
 */
export function openSink(output: AgentConfig['output']): Sink {
  const path = output?.path ?? '-';
  if (path === '-') return { write: undefined, flow: stdoutFlow, onError: () => {}, close: async () => {} };
  const file = resolve(path);
  try {
    checkTrustedDirectory(dirname(file), (message) => new Error(`cannot use the directory of ${file}: ${message}`), OUTPUT_DIR_FIX, { missing: 'create' });
  } catch (err) {
    if (err instanceof UnsafePolicyFileError) throw new UnsafeOutputError(`${file}: ${err.problem}; another user could choose what the agent, running as root, writes`);
    throw err;
  }
  let stream: Writable;
  if (output?.rotate) {
    // The library opens and renames by name; in a directory only root can
    // write, what is there now is all that can be there.
    let st: Stats | undefined;
    try {
      st = lstatSync(file);
    } catch {
      st = undefined;
    }
    const why = st && unsafeFile(file, st);
    if (why) throw new UnsafeOutputError(why);
    stream = createStream(basename(file), { path: dirname(file), size: `${output.rotate.maxBytes}B`, rotate: output.rotate.keep ?? DEFAULT_KEEP, mode: FILE_MODE });
  } else {
    // O_NOFOLLOW: a symbolic link fails (ELOOP) rather than be followed;
    // O_NONBLOCK: a FIFO fails (ENXIO) or opens at once, rather than wait
    // for a reader, and fstat then refuses it.
    let fd: number;
    try {
      fd = openSync(file, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY, FILE_MODE);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP' || code === 'ENXIO') throw new UnsafeOutputError(unsafeFile(file, lstatSync(file)) ?? `${file}: ${(err as Error).message}`);
      throw err;
    }
    const why = unsafeFile(file, fstatSync(fd));
    if (why) {
      closeSync(fd);
      throw new UnsafeOutputError(why);
    }
    stream = createWriteStream(file, { fd, flags: 'a' });
  }
  const flow = new Flow();
  let failed: Error | undefined;
  const listeners: Array<(err: Error) => void> = [];
  stream.on('error', (err: Error) => {
    if (failed) return;
    failed = err;
    flow.resume();
    for (const l of listeners) l(err);
  });
  return {
    // Not awaited: the stream buffers what the disk has not taken yet
    // (nothing is dropped; `flow` bounds it); close() waits for all of it.
    write: (text) => {
      if (failed) return;
      stream.write(text);
      pauseWhileBacklogged(stream, flow);
    },
    flow,
    onError: (l) => (failed ? l(failed) : listeners.push(l)),
    close: () => new Promise<void>((resolve) => (failed ? resolve() : stream.end(() => resolve()))),
  };
}

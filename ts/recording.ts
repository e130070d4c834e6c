/**
 * Recordings: the NDJSON stream `watch --json`, `enforce --json` and
 * `status --follow --json` write (`ts/cli/records.ts`, `events.schema.json`),
 * read back line by line in constant memory. The decoder here is the one
 * inverse of the record writers: a `chroot` record becomes the
 * {@link ChrootEvent} it was written from, a `decision` record the caller's
 * facts it carries, byte for byte (raw bytes from the `…Base64` fields,
 * integers above 2^53 exact).
 * @module
 */
import { createReadStream } from 'node:fs';
import { LOSS_COUNTERS, type LossCounts } from './batch.js';
import { DECISION_FIELDS, type ChrootDecision } from './decision.js';
import { ChrootGuardError } from './errors.js';
import { CALL_FIELDS, compileObject, displayBytes, IDENTITY_FIELDS, type ChrootEvent, type FieldSource } from './events.js';
import type { CallerFacts } from './policy/evaluate.js';
import { lines } from './lines.js';
import { recordSchema, type PropertySchema } from './event-schema.js';

type BigIntField = { [K in keyof ChrootEvent]-?: ChrootEvent[K] extends bigint ? K : never }[keyof ChrootEvent];

/**
 * The fields written as JSON integers that may exceed 2^53 (read as
 * bigints). The type check below fails to compile when a bigint field is
 * added to {@link ChrootEvent} and not here.
 */
const BIGINT_FIELDS = ['ts', 'enterTs', 'cgroupId', 'exeIno'] as const satisfies readonly BigIntField[];
const everyBigInt: Exclude<BigIntField, (typeof BIGINT_FIELDS)[number]> extends never ? true : never = true;
void everyBigInt;

/**
 * One line of a recording, read:
 * - `call`: a `chroot` record (`event` is the whole {@link ChrootEvent}) or a
 *   `decision` record (`event` holds the caller's facts; `recorded` is the
 *   decision the recording made). `decided` says whether a policy decides
 *   this call at all (see {@link lsmDecides}).
 * - `attach`: a session began (`mode`: its attach mode, or `lsm`;
 *   `initialMntNs`: the initial mount namespace where and when it ran, null
 *   when the record does not say).
 * - `lost`: what the kernel counted and did not deliver since the previous
 *   `lost` record (`counts`, each since the previous).
 * - `other`: a valid record of another type (`task`, `summary`, `guard`): skipped.
 * - `malformed`: a line that is not a record of `events.schema.json`
 *   (`message` says what is wrong); the lines after it are read on.
 * `line` is the 1-based line number.
 */
export type RecordingItem =
  | { readonly kind: 'call'; readonly line: number; readonly record: 'chroot'; readonly event: ChrootEvent; readonly decided: boolean }
  | { readonly kind: 'call'; readonly line: number; readonly record: 'decision'; readonly event: CallerFacts; readonly decided: boolean; readonly recorded: Pick<ChrootDecision, 'action' | 'ruleId' | 'reason' | 'denied' | 'source'> }
  | { readonly kind: 'attach'; readonly line: number; readonly mode: string; readonly initialMntNs: number | null }
  | { readonly kind: 'lost'; readonly line: number; readonly counts: LossCounts }
  | { readonly kind: 'other'; readonly line: number; readonly type: string }
  | { readonly kind: 'malformed'; readonly line: number; readonly message: string };

/**
 * One record per call: which records of a recording stand for its calls,
 * for `replay` and `learn`. A recording with a guard in it (the agent's
 * stream with a `guard:` section; `watch --json` and `enforce --json`
 * written to one file) holds, for each call the guard decided, a `chroot`
 * record from the watch AND a `decision` record from the guard; counting
 * both would count the call twice. From the point a guard shows up, the
 * first `attach` record of mode `lsm` (which `enforce --json` and the
 * agent's guard write before their first decision) or the first `decision`
 * record, the decisions stand for the calls and every later `chroot` record
 * is skipped, with the calls that failed before the LSM hook (which no
 * policy decides, and no guard saw); `chroot` records before it (a watch
 * recording a guard's was appended to) stand for their calls.
 * @returns A test to apply to each item in recording order: true for a
 * `chroot` record to skip.
 * @internal
 */
export function skipsWatchRecords(): (item: RecordingItem) => boolean {
  let guard = false;
  return (item) => {
    if ((item.kind === 'attach' && item.mode === 'lsm') || (item.kind === 'call' && item.record === 'decision')) guard = true;
    return guard && item.kind === 'call' && item.record === 'chroot';
  };
}

/** How many malformed (or otherwise reported) lines a summary lists by number; the rest are counted. */
export const SAMPLE_LINES = 10;

/**
 * Whether the LSM hook (`security_path_chroot`, where a policy decides)
 * saw the call a `chroot` record describes: every call that succeeded, and
 * failed ones whose LSM result was seen (`lsmRet`, fentry and kprobe
 * modes). A call that failed before the hook (ENOENT, ENOTDIR, EFAULT, a
 * permission or CAP_SYS_CHROOT check) is decided by no policy; in
 * tracepoint mode, which has no LSM-site hook, a failed call cannot be
 * told apart from one, and counts as not decided either.
 */
export function lsmDecides(e: Pick<ChrootEvent, 'ret' | 'lsmRet'>): boolean {
  return e.ret === 0 || e.lsmRet !== null;
}

/** A line that is not a record: thrown by {@link decodeRecord}. @internal */
export class RecordError extends Error {}

/** A test of whether a value fits `p` (a property of events.schema.json): its type, enum or constant, and integer bounds; made once per property. */
function predicate(p: PropertySchema): (v: unknown) => boolean {
  if (p.oneOf) {
    const [a, b, ...more] = p.oneOf.map(predicate);
    if (b === undefined) return a ?? (() => false);
    return more.length === 0 ? (v) => a!(v) || b(v) : (v) => [a!, b, ...more].some((f) => f(v));
  }
  if (p.const !== undefined) {
    const c = p.const;
    return (v) => v === c;
  }
  if (p.enum) {
    const values = new Set(p.enum);
    return (v) => values.has(v);
  }
  const tests = [p.type ?? []].flat().map((t): ((v: unknown) => boolean) => {
    switch (t) {
      case 'null':
        return (v) => v === null;
      case 'boolean':
        return (v) => typeof v === 'boolean';
      case 'string':
        return (v) => typeof v === 'string';
      case 'integer': {
        const min = p.minimum ?? -Infinity;
        const max = p.maximum ?? Infinity;
        return (v) => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
      }
      case 'array':
        return Array.isArray;
      case 'object':
        return (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
      default:
        return () => false;
    }
  });
  return tests.length === 1 ? tests[0]! : (v) => tests.some((f) => f(v));
}

/** A `lost` count that recordings made by versions before it was counted lack; read as 0 there. */
const COUNTED_LATER = 'recursionMissed';

const U64_MAX = 2n ** 64n - 1n;

/** Base64 text as `Buffer#toString('base64')` writes it (padded). */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** A bigint field: a JSON integer (read exactly, see {@link quoteBigIntegers}) from 0 to 2^64 - 1. */
function bigintOf(key: string, v: unknown): bigint {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v === 'string' && /^\d+$/.test(v) && v.length <= 20) {
    const n = BigInt(v);
    if (n <= U64_MAX) return n;
  }
  throw new RecordError(`"${key}" must be an integer from 0 to 2^64 - 1`);
}

/**
 * The values of the {@link BIGINT_FIELDS} (and `lost` records' `sinceTs`)
 * written with 16 or more digits: a double holds 15 exactly. A match is
 * always a key and its value: inside a JSON string every `"` is escaped,
 * so `"ts":` there cannot be followed by a digit; a key that merely ends
 * in `"ts` (`"x\"ts":…`) is no key of any record and fails anyway.
 */
const BIG_INTEGERS = new RegExp(`"(${[...BIGINT_FIELDS, 'sinceTs'].join('|')})":(\\d{16,})(?=[,}\\s])`, 'g');

/**
 * `text` with the integers of {@link BIG_INTEGERS} written as strings, so
 * `JSON.parse` keeps their digits ({@link bigintOf} reads them); other
 * text as it is.
 */
const quoteBigIntegers = (text: string): string => text.replace(BIG_INTEGERS, '"$1":"$2"');

/** The field lists of the records a call comes from: what the writers wrote, in order. */
const CHROOT_KEYS = [...IDENTITY_FIELDS, ...CALL_FIELDS] as const;
const DECISION_KEYS = [...IDENTITY_FIELDS, ...DECISION_FIELDS] as const;
const BIGINTS = new Set<string>(BIGINT_FIELDS);

/** A record type's reader, made once from the schema and the writer's field list. */
interface Reader {
  readonly type: string;
  readonly properties: ReadonlySet<string>;
  readonly required: readonly string[];
  /** Every property, required or not (what this version writes). */
  readonly every: readonly string[];
  /** The object the record was written from, each field read and checked (see {@link readerOf}). */
  readonly build: (r: Record<string, unknown>) => Record<string, unknown>;
  /** Display fields and the bytes they are made from (`path`, `pathBytes`). */
  readonly shown: ReadonlyArray<readonly [string, string]>;
}

/**
 * The reader of one record type: a function per field that reads and
 * checks it (`…Bytes` from the `…Base64` text, bigints from their digits,
 * every other value against the schema), and the object of all of them
 * built as one literal ({@link compileObject}, as the writers are): the
 * event path's cost is per field, so it is generated, not looped.
 */
function readerOf(type: 'chroot' | 'decision', keys: readonly string[]): Reader {
  const schema = recordSchema(type)!;
  const read: Record<string, (v: unknown) => unknown> = {};
  const fields: FieldSource[] = keys.map((key) => {
    let from = key;
    if (key.endsWith('Bytes')) {
      from = key.slice(0, -5) + 'Base64';
      const nullable = predicate(schema.properties[from]!)(null);
      read[key] = (v) => {
        if (v === null && nullable) return null;
        if (typeof v !== 'string') throw new RecordError(`"${from}" must be base64 text${nullable ? ' or null' : ''}`);
        // Buffer.from skips what is not base64: the text must be base64 whole.
        if (v.length % 4 !== 0 || !BASE64.test(v)) throw new RecordError(`"${from}" is not base64`);
        return Buffer.from(v, 'base64');
      };
    } else if (BIGINTS.has(key)) {
      read[key] = (v) => bigintOf(key, v);
    } else {
      const fits = predicate(schema.properties[key]!);
      // A property the schema does not require is one older versions did not write: absent, it reads as null.
      const optional = !schema.required.includes(key);
      read[key] = (v) => {
        if (optional && v === undefined) return null;
        if (!fits(v)) throw new RecordError(`"${key}" has a value the schema does not allow: ${JSON.stringify(v)?.slice(0, 80) ?? 'none'}`);
        return v;
      };
    }
    return { key, expression: `f[${JSON.stringify(key)}](r[${JSON.stringify(from)}])`, get: ((r: Record<string, unknown>) => read[key]!(r[from])) as (a: never) => unknown };
  });
  const build = compileObject<(r: Record<string, unknown>, f: typeof read) => Record<string, unknown>>(['r', 'f'], fields);
  const shown = keys.filter((k) => k.endsWith('Bytes') && keys.includes(k.slice(0, -5))).map((k) => [k.slice(0, -5), k] as const);
  return { type, properties: new Set(Object.keys(schema.properties)), required: schema.required, every: Object.keys(schema.properties), build: (r) => build(r, read), shown };
}

let readers: { chroot: Reader; decision: Reader } | undefined;
const readerFor = (type: 'chroot' | 'decision'): Reader => (readers ??= { chroot: readerOf('chroot', CHROOT_KEYS), decision: readerOf('decision', DECISION_KEYS) })[type];

/**
 * The object a `chroot` or `decision` record was written from: each
 * `…Base64` field back to its `…Bytes` Buffer (and its display sibling,
 * `path` for `pathBytes`, checked to be {@link displayBytes} of those
 * bytes, as the decoder of the kernel's records makes it), bigints from
 * their digits, every other field checked against the schema's type and
 * copied. Every key the schema requires must be there and no other; one it
 * does not require (a field older versions did not write) reads as null when
 * absent.
 */
function decodeFields(reader: Reader, r: Record<string, unknown>): Record<string, unknown> {
  // A record of this version has every property: then the count and the keys say it all.
  if (!(Object.keys(r).length === reader.every.length && reader.every.every((k) => k in r))) {
    for (const k in r) if (!reader.properties.has(k)) throw new RecordError(`a ${reader.type} record has no key "${k}"`);
    const missing = reader.required.filter((k) => !(k in r));
    if (missing.length) throw new RecordError(`a ${reader.type} record needs ${missing.map((k) => `"${k}"`).join(', ')}`);
  }
  const out = reader.build(r);
  // The display forms: the writer's decoder made each from its bytes.
  for (const [shown, key] of reader.shown) {
    const bytes = out[key] as Buffer | null;
    if (bytes === null ? out[shown] !== null : out[shown] !== displayBytes(bytes)) {
      throw new RecordError(`"${shown}" is not the display form of "${shown}Base64"`);
    }
  }
  return out;
}

/**
 * Reads one line of a recording (its text, without the newline).
 * @throws {RecordError} for a line that is not JSON or not a record of
 * `events.schema.json` as this version writes it.
 * @internal
 */
export function decodeRecord(text: string, line: number): RecordingItem {
  let r: unknown;
  try {
    r = JSON.parse(quoteBigIntegers(text));
  } catch (err) {
    throw new RecordError(`not JSON: ${(err as Error).message}`);
  }
  if (typeof r !== 'object' || r === null || Array.isArray(r)) throw new RecordError('not a JSON object');
  const o = r as Record<string, unknown>;
  const type = o.type;
  if (type === 'chroot') {
    const event = decodeFields(readerFor('chroot'), o) as unknown as ChrootEvent;
    return { kind: 'call', line, record: 'chroot', event, decided: lsmDecides(event) };
  }
  if (type === 'decision') {
    const d = decodeFields(readerFor('decision'), o) as unknown as ChrootDecision;
    const event = {} as Record<string, unknown>;
    for (const k of IDENTITY_FIELDS) event[k] = d[k];
    // An internal-error decision carries only what BPF helpers give: no paths, no namespaces.
    return {
      kind: 'call',
      line,
      record: 'decision',
      event: event as unknown as CallerFacts,
      decided: d.reason !== 'internal-error',
      recorded: { action: d.action, ruleId: d.ruleId, reason: d.reason, denied: d.denied, source: d.source },
    };
  }
  if (type === 'lost') {
    const s = recordSchema('lost')!;
    for (const k of s.required) {
      if (k === 'ts' || k === 'sinceTs') bigintOf(k, o[k]);
      else if (k === COUNTED_LATER && o[k] === undefined) continue;
      else if (!predicate(s.properties[k]!)(o[k])) throw new RecordError(`a lost record's "${k}" is missing or not a count`);
    }
    const counts = Object.fromEntries(LOSS_COUNTERS.map((k) => [k, (o[k] as number | undefined) ?? 0])) as unknown as LossCounts;
    return { kind: 'lost', line, counts };
  }
  if (type === 'attach') {
    const { mode, initialMntNs } = o;
    const props = recordSchema('attach')!.properties;
    if (!predicate(props.mode!)(mode)) throw new RecordError('an attach record without a known mode');
    if (initialMntNs !== undefined && !predicate(props.initialMntNs!)(initialMntNs)) throw new RecordError('an attach record\'s "initialMntNs" is not an inode number');
    return { kind: 'attach', line, mode: mode as string, initialMntNs: (initialMntNs as number | undefined) ?? null };
  }
  if (type === 'task' || type === 'summary' || type === 'guard') return { kind: 'other', line, type };
  throw new RecordError(`no record type ${JSON.stringify(type)?.slice(0, 40) ?? 'given'} (expected chroot, decision, lost or attach)`);
}

/** Where a recording comes from: a file name (`-` for stdin), a stream, or chunks. */
export type RecordingSource = string | AsyncIterable<Buffer | string>;

/**
 * Bytes read from a file at a time. Larger reads are not faster here (the
 * decoding is the cost), and 1 MiB buffers raised glibc's dynamic mmap
 * threshold, so freed ones stayed on the heap: a 1 GB replay peaked at
 * 160 MiB instead of 75.
 */
const READ_CHUNK = 64 * 1024;

/** Options of {@link readRecording}. */
export interface ReadRecordingOptions {
  /** Told the size of each chunk read (for progress). */
  readonly onBytes?: (n: number) => void;
  /** Called for each item before it is handed on (for progress). */
  readonly onItem?: (item: RecordingItem) => void;
  /** Stops reading when aborted: the iteration ends after the current item. */
  readonly signal?: AbortSignal;
}

/**
 * The items of a recording, one per non-empty line, read in constant
 * memory (lines up to 1 MiB; a longer one is `malformed`).
 * @param source a file name, `-` for stdin, or a stream of its bytes.
 * @throws {ChrootGuardError} `INVALID_RECORDING` when the file cannot be
 * opened or read (raised by the iteration).
 */
export async function* readRecording(source: RecordingSource, options: ReadRecordingOptions = {}): AsyncGenerator<RecordingItem> {
  const chunks = typeof source === 'string' ? (source === '-' ? process.stdin : createReadStream(source, { highWaterMark: READ_CHUNK })) : source;
  const name = typeof source === 'string' ? (source === '-' ? 'stdin' : source) : 'the recording';
  try {
    for await (const l of lines(chunks, options.onBytes)) {
      if (options.signal?.aborted) return;
      if (l.bytes.length === 0 && !l.tooLong) continue;
      let item: RecordingItem;
      if (l.tooLong) item = { kind: 'malformed', line: l.number, message: 'longer than 1 MiB: not a record' };
      else {
        try {
          item = decodeRecord(l.bytes.toString('utf8'), l.number);
        } catch (err) {
          if (!(err instanceof RecordError)) throw err;
          item = { kind: 'malformed', line: l.number, message: err.message };
        }
      }
      options.onItem?.(item);
      yield item;
    }
  } catch (err) {
    if (err instanceof ChrootGuardError) throw err;
    throw new ChrootGuardError('INVALID_RECORDING', `cannot read ${name}: ${(err as Error).message}`, { cause: err });
  }
}

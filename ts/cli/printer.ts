/**
 * What the CLI writes to stdout: a table, or the NDJSON stream of
 * `ts/cli/records.ts`. `watch` and `demo` print events, `enforce` and
 * `status --follow` decisions.
 * @internal
 * @module
 */
import { boottimeNs, toWallClock, wallClockOffsetNs, zoneOffsets } from '../clock.js';
import type { ChrootDecision } from '../decision.js';
import type { ChrootEvent } from '../events.js';
import { CALLS_LOST, lostSince, NO_LOSS, type LossCounts, type LostReport } from '../batch.js';
import { errnoNameTable } from '../events.js';
import type { AddonOutput, AttachInfo, OutputState, SessionStats } from '../session.js';
import { containerMark, JSON_UNSAFE_RANGES, resolvedMark, rootMarks, tableHeader, tableLine, terminalSafe, UNSAFE_RANGES } from './output.js';
import { writeStdout } from './stdout.js';
import { attachRecord, chrootRecord, decisionRecord, guardRecord, lostRecord, type GuardRecordFields, type LostSource } from './records.js';

/** Bytes (UTF-16 code units) held before a write even within a batch. */
const FLUSH_AT = 64 * 1024;

/**
 * Where lines go: text of whole lines, each ending in a newline, and what
 * to call once it is written (stdout calls it; {@link EventPrinter.attached}
 * needs it only where the addon writes lines too). Stdout by default; the
 * agent passes its rotating file.
 */
export type LineWriter = (text: string, done?: () => void) => void;

/**
 * Lines for stdout (or another {@link LineWriter}), written once per batch:
 * events of one batch arrive in one synchronous run of the batch callback,
 * so a flush queued as a microtask on the first line writes them all with
 * one write(2) when that run ends, in the order they came; a busy batch is
 * written every {@link FLUSH_AT}, so what is held stays small. Records that
 * leave the batch path (the last `lost` record at exit) are flushed at once.
 */
class StdoutLines {
  private text = '';
  private queued = false;

  constructor(private readonly write: LineWriter = writeStdout) {}

  /** Adds one line (without its newline). */
  add(line: string): void {
    this.text += line + '\n';
    if (this.text.length >= FLUSH_AT) return this.flush();
    if (this.queued) return;
    this.queued = true;
    queueMicrotask(this.flush);
  }

  /** Writes what is held, now; `done` once it is written. */
  readonly flush = (done?: () => void): void => {
    this.queued = false;
    if (this.text === '') return done?.();
    const text = this.text;
    this.text = '';
    this.write(text, done);
  };
}

/**
 * What the addon needs to write `watch`'s lines itself (`SessionOptions.output`),
 * byte for byte as {@link EventPrinter} would: table rows as `tableLine`
 * (escapes of `terminalSafe`, times by this process's wall clock offset),
 * or `chroot` and `lost` records as `chrootRecord` and `lostRecord` (the
 * characters JSON strings escape beyond JSON.stringify); the errno names of
 * `errno` and RESULT. The rest of the text is `crates/loader/src/lines.rs`;
 * `test/lines.test.ts` holds the two equal.
 */
export function addonLines(json: boolean): AddonOutput {
  const escaped = (json ? JSON_UNSAFE_RANGES : UNSAFE_RANGES).flat();
  if (json) return { format: 'json', errnoNames: errnoNameTable(), escaped };
  // From a day back to two years on; after that, the last offset holds.
  const now = Date.now();
  return { format: 'table', errnoNames: errnoNameTable(), escaped, wallOffsetNs: wallClockOffsetNs(), zone: zoneOffsets(now - 86_400_000, now + 2 * 366 * 86_400_000) };
}

/** Writes event lines to stdout (or `write`) in the chosen format. */
export class EventPrinter {
  private readonly out: StdoutLines;
  private headerDone = false;
  /** When the counts of the last `lost` record (or the attach) were read: ns since boot. */
  private since = 0n;
  /** Totals the stream has reported as lost so far. */
  private reported: LossCounts = NO_LOSS;
  /** Events printed. */
  count = 0;
  /** The addon writes the `chroot` and `lost` records ({@link EventPrinter.attached}'s `addonWrites`). */
  private addonLines = false;

  /** `write`: where the lines go (whole lines), stdout by default; `lostSource`: the `source` of its `lost` records, in a stream shared with a guard's. */
  constructor(
    private readonly json: boolean,
    write?: LineWriter,
    private readonly lostSource?: LostSource,
  ) {
    this.out = new StdoutLines(write);
  }

  /**
   * The session attached: the `attach` record (JSON), or the table header.
   * `addonWrites`: the session writes its rows, or its `chroot` and `lost`
   * records, to stdout itself ({@link addonLines}): the line is written at
   * once, and `addonWrites(ts)` called with the record's `ts` once stdout
   * has it, so the session's lines follow it; {@link EventPrinter.finish}
   * then takes what they were.
   */
  attached(info: AttachInfo, addonWrites?: (sinceTs: bigint) => void): void {
    this.since = boottimeNs();
    if (this.json) this.out.add(attachRecord(this.since, info));
    else this.header();
    if (addonWrites) {
      this.addonLines = true;
      const since = this.since;
      this.out.flush(() => addonWrites(since));
    }
  }

  /** Prints the table header once (nothing in JSON mode). */
  header(): void {
    if (this.json || this.headerDone) return;
    this.out.add(tableHeader());
    this.headerDone = true;
  }

  /** One event. */
  print(e: ChrootEvent): void {
    this.count++;
    if (this.json) return this.out.add(chrootRecord(e));
    this.header();
    this.out.add(tableLine(e));
  }

  /**
   * What the kernel could not deliver: a `lost` record in the stream (the
   * table reports it on stderr instead, after this). The lines of the batch
   * so far are written first, so a note on stderr follows them.
   */
  lost(report: LostReport): void {
    this.reported = report.total;
    if (this.json && !this.addonLines) {
      const now = boottimeNs();
      this.out.add(lostRecord(report, this.since, now, this.lostSource));
      this.since = now;
    }
    this.out.flush();
  }

  /**
   * At the end: a last `lost` record for what the kernel counted after the
   * last batch, so the stream's totals are final; then everything is
   * written. `addon`: where the addon wrote the `chroot` and `lost`
   * records, what it wrote (the session has stopped): the count, and the
   * last `lost` record, from which this one goes on.
   */
  finish(stats: SessionStats | undefined, addon?: OutputState | null): void {
    if (addon) {
      this.count = addon.records;
      // A line the addon left cut ends here, so the next is whole.
      if (addon.torn) this.out.add('');
      if (addon.lostTs !== null && addon.reported) [this.since, this.reported] = [addon.lostTs, addon.reported];
    }
    const report = stats && lostSince(this.reported, { ...this.reported, ...Object.fromEntries(CALLS_LOST.map((k) => [k, stats[k]])) });
    // The session has stopped: a record of what it did not report is this
    // printer's to write, also where the addon wrote the others.
    this.addonLines = false;
    if (report) this.lost(report);
    this.out.flush();
  }
}

const DECISION_HEADER = `${'TIME'.padEnd(13)}${'PID'.padEnd(8)}${'COMM'.padEnd(17)}${'UID'.padEnd(7)}${'DECISION'.padEnd(11)}${'RULE'.padEnd(24)}RESOLVED`;

/** One table line: time, pid, comm, uid, decision, rule, resolved path and its escape marks ({@link rootMarks}), the container ({@link containerMark}) (caller-controlled fields through {@link terminalSafe}). */
export function decisionLine(d: ChrootDecision): string {
  const t = toWallClock(d.ts);
  const time = `${t.toTimeString().slice(0, 8)}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  const decision = d.denied ? 'DENIED' : d.wouldDeny ? 'would-deny' : d.action;
  const resolved = d.resolvedPath === null ? '' : resolvedMark(d) + terminalSafe(d.resolvedPathBytes ?? d.resolvedPath) + rootMarks(d);
  // At least one space after each cell, also after one wider than its column.
  const cell = (s: string, width: number) => `${s.padEnd(width - 1)} `;
  return `${cell(time, 13)}${cell(String(d.pid), 8)}${cell(terminalSafe(d.commBytes), 17)}${cell(String(d.uid), 7)}${cell(decision, 11)}${cell(d.ruleId === null ? '(default)' : terminalSafe(d.ruleId), 24)}${resolved}${containerMark(d)}${d.source === 'watch' ? '  [from watch]' : ''}`;
}

/** Writes decisions to stdout (or `write`): a table, or `attach`, `decision` and `lost` records (and the agent's `guard` records). */
export class DecisionPrinter {
  private readonly out: StdoutLines;
  private headerDone = false;
  private since = 0n;

  /** `write` and `lostSource` as {@link EventPrinter}'s. */
  constructor(
    private readonly json: boolean,
    write?: LineWriter,
    private readonly lostSource?: LostSource,
  ) {
    this.out = new StdoutLines(write);
  }

  /** The guard runs: the `attach` record (JSON). */
  attached(a: Parameters<typeof attachRecord>[1]): void {
    this.since = boottimeNs();
    if (this.json) this.out.add(attachRecord(this.since, a));
  }

  /** One decision. */
  print(d: ChrootDecision): void {
    if (this.json) return this.out.add(decisionRecord(d));
    if (!this.headerDone) {
      this.out.add(DECISION_HEADER);
      this.headerDone = true;
    }
    this.out.add(decisionLine(d));
  }

  /** What the kernel could not deliver or decide: a `lost` record (JSON; the table reports it on stderr, after this); written at once with the lines before it. */
  lost(report: LostReport): void {
    if (this.json) {
      const now = boottimeNs();
      this.out.add(lostRecord(report, this.since, now, this.lostSource));
      this.since = now;
    }
    this.out.flush();
  }

  /** What the agent did with its guard's policy: a `guard` record (JSON only), written at once. */
  guard(g: GuardRecordFields): void {
    if (!this.json) return;
    this.out.add(guardRecord(boottimeNs(), g));
    this.out.flush();
  }

  /** Writes everything held, at the end. */
  finish(): void {
    this.out.flush();
  }
}

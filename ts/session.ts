/**
 * Kernel sessions (internal): one loaded and attached set of programs per
 * distinct set of options, shared by every subscriber with those options and
 * closed when the last one leaves.
 *
 * States: opening → running → (finishing →) closed. `close()` is idempotent
 * and joins the addon's ring-buffer thread before it returns, so when the
 * last unsubscribe returns no program, link or map of ours is left in the
 * kernel. `finish()` detaches first and delivers what the ring buffer still
 * holds before closing.
 * @internal
 * @module
 */
import type { BindingBatch, BindingOpenResult, BindingOutput, BindingRefusal, BindingSession, BindingStats } from './native/binding.cjs';
import type { AttachMode, Refusal } from './errors.js';
import { ChrootGuardError, errorFromBinding } from './errors.js';
import { decoder, errnoName, type ChrootEvent } from './events.js';
import { native } from './native.js';
import { NO_LOSS, readBatch, type CounterTotals, type LossCounts, type LostReport } from './batch.js';
import { attachFlow, type Flow } from './flow.js';

/** Which attach mode a session uses and why better modes were refused. */
export interface AttachInfo {
  /** The mode the programs are attached in. */
  readonly mode: AttachMode;
  /**
   * The better modes the kernel refused, best first (empty if none). In mode
   * `auto`, a refusal with `remembered: true` was not tried again: it is an
   * earlier attempt's on this boot ({@link Refusal.remembered}).
   */
  readonly refused: readonly Refusal[];
  /**
   * Calls this session does not see: programs of the attached mode that
   * only see 32-bit compat chroot calls (`int $0x80` and the other ia32
   * entries on x86_64, AArch32 tasks on arm64; `__ia32_sys_chroot`, or raw
   * `sys_enter`/`sys_exit` in tracepoint mode), refused or not loaded
   * (`COMPAT_OFF`). Empty when every chroot is
   * seen. In kprobe mode, also exit kretprobes the kernel would only take
   * through the perf kprobe PMU (code `MISSES_UNCOUNTED`): their missed
   * returns, calls without an event, cannot be counted in
   * `kretprobeMissed`.
   */
  readonly blindSpots: readonly Refusal[];
  /** Reads the totals of the kernel session (shared by subscribers with equal options). */
  readonly stats: () => SessionStats;
  /**
   * The attached programs: their names (`crates/common/src/probes.rs`) and
   * kernel program ids, by which `/proc/self/fdinfo` (and `bpftool prog
   * show id N`) shows their run counts and run time.
   */
  readonly programs: readonly AttachedProgram[];
}

/** One attached BPF program. */
export interface AttachedProgram {
  /** Its name, e.g. `cg_tp_enter`. */
  readonly name: string;
  /** The kernel's program id. */
  readonly id: number;
}

/**
 * A session that writes its events to stdout itself, on the addon's reader
 * thread (`chroot-guard watch`, `crates/loader/src/lines.rs`): table rows,
 * or `chroot` and `lost` NDJSON records. No event reaches JavaScript, only
 * the counters. What the text needs from JavaScript (`addonLines` in
 * `ts/cli/printer.ts`): the errno names by number (`''` where none), the
 * code point ranges to escape (flattened inclusive `[lo, hi]` pairs), and
 * for the table the wall clock's offset from CLOCK_BOOTTIME in ns and the
 * time zone's offsets.
 */
export interface AddonOutput {
  readonly format: 'table' | 'json';
  readonly errnoNames: readonly string[];
  readonly escaped: readonly number[];
  readonly wallOffsetNs?: bigint;
  /** The table: the local time's offsets from UTC (`zoneOffsets` in `ts/clock.ts`). */
  readonly zone?: readonly number[];
}

/** {@link AddonOutput} as the binding takes it (arrays it may not change, copied). @internal */
export function bindingOutput(o: AddonOutput): BindingOutput {
  return {
    format: o.format,
    errnoNames: [...o.errnoNames],
    escaped: [...o.escaped],
    ...(o.wallOffsetNs !== undefined ? { wallOffsetNs: o.wallOffsetNs } : {}),
    ...(o.zone ? { zone: [...o.zone] } : {}),
  };
}

/** Normalised options that decide which kernel session serves a subscriber. */
export interface SessionOptions {
  readonly mode: 'auto' | AttachMode;
  readonly pid?: number;
  readonly uid?: number;
  readonly comm?: string;
  readonly ringBufferBytes: number;
  readonly compat: boolean;
  /** Events go to stdout, written by the addon ({@link AddonOutput}); such a session is never shared. */
  readonly output?: AddonOutput;
}

/** What a subscriber hears from its session. */
export interface SessionListener {
  /** One event, as soon as it is decoded (events of a batch come one by one, in order). */
  event(e: ChrootEvent): void;
  attached(info: AttachInfo): void;
  lost(report: LostReport): void;
  error(err: ChrootGuardError): void;
  /**
   * A session writing to stdout: write(2) failed (`code` `EPIPE`: the
   * reader of stdout is gone); the session is closed.
   */
  outputError?(err: NodeJS.ErrnoException): void;
}

/** Totals of a kernel session, read from the addon and the kernel's per-CPU counters. */
export interface SessionStats {
  /** Events read from the ring buffer. */
  readonly events: number;
  /** Batches handed to JavaScript (one threadsafe-function call each). */
  readonly batches: number;
  /** Bytes of records handed to JavaScript. */
  readonly bytes: number;
  /** Events lost to a full ring buffer. */
  readonly ringBufferFull: number;
  /** Calls not traced: syscall entry could not get the thread's in-flight event (the kernel could not allocate its task storage). */
  readonly pendingFull: number;
  /** kprobe mode: calls whose return the exit kretprobe missed, so no event was sent (see `LossCounts.kretprobeMissed`). */
  readonly kretprobeMissed: number;
  /** fentry mode: runs of the syscall's fentry or fexit program the kernel skipped, each losing one call's own event (see `LossCounts.recursionMissed`). */
  readonly recursionMissed: number;
}

const sessions = new Map<string, KernelSession>();

/** Sessions writing to stdout, each its own. */
let outputSessions = 0;

function keyOf(o: SessionOptions): string {
  return JSON.stringify([o.mode, o.pid ?? null, o.uid ?? null, o.comm ?? null, o.ringBufferBytes, o.compat, o.output ? ++outputSessions : null]);
}

/** A refusal from the addon, as the public {@link Refusal}. @internal */
export function refusalOf(r: BindingRefusal): Refusal {
  return {
    mode: r.mode as AttachMode,
    program: r.program,
    target: r.target,
    stage: r.stage as 'load' | 'attach',
    code: r.code,
    errno: r.errno ?? null,
    reason: r.reason,
    ...(r.verifierLog ? { verifierLog: r.verifierLog } : {}),
    remembered: r.remembered,
  };
}

class KernelSession {
  private readonly listeners = new Set<SessionListener>();
  /** Listeners whose {@link Flow} is paused. */
  private readonly pausedBy = new Set<SessionListener>();
  private state: 'opening' | 'running' | 'finishing' | 'closed' = 'opening';
  private info: AttachInfo | undefined;
  private lostTotals: CounterTotals = NO_LOSS;
  private readonly binding: BindingSession;
  private readonly output: boolean;

  constructor(
    private readonly key: string,
    options: SessionOptions,
  ) {
    this.output = options.output !== undefined;
    const n = native();
    decoder();
    const { output, ...load } = options;
    this.binding = new n.BindingSession({
      ...load,
      ...(output ? { output: bindingOutput(output) } : {}),
    });
    this.binding.open((batch) => this.onBatch(batch)).then(
      (result) => this.onOpen(result),
      (cause: unknown) => this.fail(new ChrootGuardError('INTERNAL', `opening the kernel session failed: ${String(cause)}`, { cause })),
    );
  }

  add(listener: SessionListener): void {
    this.listeners.add(listener);
    if (this.state === 'running' && this.info) {
      const info = this.info;
      queueMicrotask(() => this.listeners.has(listener) && listener.attached(info));
    }
  }

  remove(listener: SessionListener): void {
    this.listeners.delete(listener);
    this.pause(listener, false);
    if (this.listeners.size === 0) this.close();
  }

  /** Whether `listener` holds the session paused ({@link Flow}); it is paused while any listener does. */
  pause(listener: SessionListener, paused: boolean): void {
    const before = this.pausedBy.size > 0;
    if (paused && this.listeners.has(listener)) this.pausedBy.add(listener);
    else this.pausedBy.delete(listener);
    const now = this.pausedBy.size > 0;
    if (now !== before && this.state !== 'closed') this.binding.pause(now);
  }

  stats(): SessionStats {
    return statsOf(this.binding.stats());
  }

  /** A session writing to stdout: the `attach` record, whose `ts` is `sinceTs`, is written; the addon's lines may follow. */
  startOutput(sinceTs: bigint): void {
    if (this.state !== 'closed') this.binding.startOutput(sinceTs);
  }

  /** What a session writing to stdout has written there; null for another session. */
  outputState(): OutputState | null {
    if (!this.output) return null;
    const s = this.binding.outputState();
    return { records: s.records, lostTs: s.lostTs ?? null, reported: s.lost ?? null, torn: s.torn };
  }

  /**
   * `listener` leaves once it has every event of the calls made so far:
   * when it is the last listener, the programs are detached and the records
   * left in the ring buffer are delivered (events, then a last loss report)
   * before the session closes; otherwise it leaves at once, the session
   * running on for the others. Resolves with the session's final totals
   * (or its totals now, when others remain).
   */
  async finish(listener: SessionListener): Promise<SessionStats> {
    if (this.state !== 'running' || this.listeners.size > 1 || !this.listeners.has(listener)) {
      const now = this.state === 'running' ? this.stats() : statsOf(undefined);
      this.remove(listener);
      return now;
    }
    this.state = 'finishing';
    // A new subscriber with these options gets a session of its own.
    if (sessions.get(this.key) === this) sessions.delete(this.key);
    try {
      return statsOf(await this.binding.finish());
    } finally {
      this.listeners.delete(listener);
      this.close();
    }
  }

  private onOpen(result: BindingOpenResult): void {
    const refusals = result.refusals.map(refusalOf);
    if (this.state === 'closed') return;
    if (result.failure) {
      this.fail(errorFromBinding(result.failure, { refusals }));
      return;
    }
    this.state = 'running';
    this.info = {
      mode: result.mode as AttachMode,
      refused: refusals,
      blindSpots: result.blindSpots.map(refusalOf),
      stats: () => this.stats(),
      programs: result.programs.map(({ name, id }) => ({ name, id })),
    };
    for (const l of [...this.listeners]) if (this.listeners.has(l)) l.attached(this.info);
  }

  private onBatch(batch: BindingBatch): void {
    if (this.state !== 'running' && this.state !== 'finishing') return;
    if (batch.outputErrno != null) return this.failOutput(batch.outputErrno, batch.error ?? 'writing to stdout failed');
    this.lostTotals = readBatch(batch, this.lostTotals, {
      error: (err) => this.fail(err),
      data: (data) => {
        // Each event goes out as it is decoded, so a busy batch does not
        // hold thousands of decoded events at once (young garbage is cheap
        // to collect, a large live set is not).
        const listeners = [...this.listeners];
        decoder().decodeEach(data, (e) => {
          for (const l of listeners) if (this.listeners.has(l)) l.event(e);
        });
      },
      lost: (report) => {
        for (const l of [...this.listeners]) if (this.listeners.has(l)) l.lost(report);
      },
    });
  }

  private failOutput(errno: number, message: string): void {
    const code = errnoName(errno);
    const err: NodeJS.ErrnoException = Object.assign(new Error(`${message} (${code})`), { code, errno: -errno, syscall: 'write' });
    const listeners = [...this.listeners];
    this.listeners.clear();
    this.close();
    for (const l of listeners) {
      if (l.outputError) l.outputError(err);
      else l.error(new ChrootGuardError('INTERNAL', err.message, { cause: err }));
    }
  }

  private fail(err: ChrootGuardError): void {
    const listeners = [...this.listeners];
    this.listeners.clear();
    this.close();
    for (const l of listeners) l.error(err);
  }

  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (sessions.get(this.key) === this) sessions.delete(this.key);
    this.binding.close();
  }
}

function statsOf(b: BindingStats | undefined): SessionStats {
  const lost = b?.lost;
  return {
    events: b?.events ?? 0,
    batches: b?.batches ?? 0,
    bytes: b?.bytes ?? 0,
    ringBufferFull: lost?.ringBufferFull ?? 0,
    pendingFull: lost?.pendingFull ?? 0,
    kretprobeMissed: lost?.kretprobeMissed ?? 0,
    recursionMissed: lost?.recursionMissed ?? 0,
  };
}

/**
 * What a session writing to stdout ({@link SessionOptions.output}) has
 * written there; once the session is closed, the stream's final state.
 */
export interface OutputState {
  /** `chroot` records written, whole lines only. */
  readonly records: number;
  /** The `ts` (ns since boot) of the last `lost` record written whole, or null when none was. */
  readonly lostTs: bigint | null;
  /** The totals that record reported, or null as `lostTs`. */
  readonly reported: LossCounts | null;
  /** The last write stopped within a line: what follows must start one of its own. */
  readonly torn: boolean;
}

/** A listener's place in a kernel session. */
export interface JoinedSession {
  /** Leaves at once; the last leave closes the session, dropping what its ring buffer still holds. */
  leave(): void;
  /** The session's totals now. */
  stats(): SessionStats;
  /**
   * A session writing to stdout ({@link SessionOptions.output}) writes
   * nothing until this: the listener has written the `attach` record, with
   * `ts` `sinceTs` (ns since boot, where the first `lost` record's interval
   * starts), and stdout has taken it.
   */
  startOutput(sinceTs: bigint): void;
  /** What a session writing to stdout has written there ({@link OutputState}); null for another session. Also after leaving. */
  outputState(): OutputState | null;
  /**
   * Leaves once the listener has the events of every call made so far
   * (the last listener's finish detaches, then drains the ring buffer);
   * resolves with the final totals.
   */
  finish(): Promise<SessionStats>;
}

/**
 * Joins (or starts) the kernel session for `options`. The last leave (or
 * finish) closes the session. While `flow` is paused the session hands
 * JavaScript no batch (shared: while any listener's flow is paused).
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` when the addon cannot load.
 */
export function joinSession(options: SessionOptions, listener: SessionListener, flow?: Flow): JoinedSession {
  const key = keyOf(options);
  let session = sessions.get(key);
  if (!session) {
    session = new KernelSession(key, options);
    sessions.set(key, session);
  }
  const joined = session;
  joined.add(listener);
  const detach = attachFlow(flow, (paused) => joined.pause(listener, paused));
  return {
    leave: () => {
      detach();
      joined.remove(listener);
    },
    stats: () => joined.stats(),
    startOutput: (sinceTs) => joined.startOutput(sinceTs),
    outputState: () => joined.outputState(),
    finish: () => {
      // A finish hands over everything the ring buffer holds (the addon
      // lifts any pause for it).
      detach();
      return joined.finish(listener);
    },
  };
}

/** Number of kernel sessions open in this process (for tests and `doctor`). */
export function openSessionCount(): number {
  return sessions.size;
}

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
import type { BindingBatch, BindingOpenResult, BindingRefusal, BindingSession, BindingStats } from './native/binding.cjs';
import type { AttachMode, Refusal } from './errors.js';
import { ChrootGuardError, errorFromBinding } from './errors.js';
import { decoder, type ChrootEvent } from './events.js';
import { native } from './native.js';
import { NO_LOSS, readBatch, type CounterTotals, type LostReport } from './batch.js';

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

/** Normalised options that decide which kernel session serves a subscriber. */
export interface SessionOptions {
  readonly mode: 'auto' | AttachMode;
  readonly pid?: number;
  readonly uid?: number;
  readonly comm?: string;
  readonly ringBufferBytes: number;
  readonly compat: boolean;
}

/** What a subscriber hears from its session. */
export interface SessionListener {
  /** One event, as soon as it is decoded (events of a batch come one by one, in order). */
  event(e: ChrootEvent): void;
  attached(info: AttachInfo): void;
  lost(report: LostReport): void;
  error(err: ChrootGuardError): void;
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
}

const sessions = new Map<string, KernelSession>();

function keyOf(o: SessionOptions): string {
  return JSON.stringify([o.mode, o.pid ?? null, o.uid ?? null, o.comm ?? null, o.ringBufferBytes, o.compat]);
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
  /** Listeners holding batches back ({@link JoinedSession.hold}). */
  private readonly holders = new Set<SessionListener>();
  private state: 'opening' | 'running' | 'finishing' | 'closed' = 'opening';
  private info: AttachInfo | undefined;
  private lostTotals: CounterTotals = NO_LOSS;
  private readonly binding: BindingSession;

  constructor(
    private readonly key: string,
    options: SessionOptions,
  ) {
    const n = native();
    decoder();
    this.binding = new n.BindingSession({ ...options });
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
    this.hold(listener, false);
    this.listeners.delete(listener);
    if (this.listeners.size === 0) this.close();
  }

  stats(): SessionStats {
    return statsOf(this.binding.stats());
  }

  /** Holds batches back while any listener asks to ({@link JoinedSession.hold}). */
  hold(listener: SessionListener, on: boolean): void {
    const before = this.holders.size > 0;
    if (on && this.listeners.has(listener)) this.holders.add(listener);
    else this.holders.delete(listener);
    const after = this.holders.size > 0;
    if (before !== after && this.state !== 'closed') this.binding.hold(after);
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
  };
}

/** A listener's place in a kernel session. */
export interface JoinedSession {
  /** Leaves at once; the last leave closes the session, dropping what its ring buffer still holds. */
  leave(): void;
  /** The session's totals now. */
  stats(): SessionStats;
  /**
   * While `on`, the session delivers no batch (to any listener): the
   * records wait in the kernel ring buffer, and what does not fit there is
   * dropped and reported in the next `lost` report (`ringBufferFull`). For
   * a listener whose output is backed up, so that the backlog is bounded
   * by the ring buffer instead of growing in memory; a finish waits for it.
   * Leaving releases it.
   */
  hold(on: boolean): void;
  /**
   * Leaves once the listener has the events of every call made so far
   * (the last listener's finish detaches, then drains the ring buffer);
   * resolves with the final totals.
   */
  finish(): Promise<SessionStats>;
}

/**
 * Joins (or starts) the kernel session for `options`. The last leave (or
 * finish) closes the session.
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` when the addon cannot load.
 */
export function joinSession(options: SessionOptions, listener: SessionListener): JoinedSession {
  const key = keyOf(options);
  let session = sessions.get(key);
  if (!session) {
    session = new KernelSession(key, options);
    sessions.set(key, session);
  }
  const joined = session;
  joined.add(listener);
  return {
    leave: () => joined.remove(listener),
    stats: () => joined.stats(),
    hold: (on) => joined.hold(listener, on),
    finish: () => joined.finish(listener),
  };
}

/** Number of kernel sessions open in this process (for tests and `doctor`). */
export function openSessionCount(): number {
  return sessions.size;
}

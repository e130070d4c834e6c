/**
 * The agent's guard (`guard:` in its config): a policy in force through a
 * PINNED guard, so that `lsm/path_chroot` keeps deciding while the agent
 * restarts, stops or is killed. At start a guard pinned already (by
 * `enforce --pin`, an earlier agent) is adopted: its reader is opened, then
 * its policy replaced atomically; else a new guard is pinned
 * ({@link pinOrAdopt}, as `enforce --pin` does) and then followed. Its
 * decisions are read from the pinned ring buffer ({@link followPinnedGuard}),
 * so those made while no agent ran come first. SIGHUP ({@link AgentGuard.reload})
 * reads the policy file again: the update is whole or not at all (the
 * maps' two slots), and a policy that cannot be loaded, or a file another
 * user could change, leaves the one in force as it is. Stopping only stops
 * the reader: the guard stays pinned until `chroot-guard unload`.
 * @internal
 * @module
 */
import type { Subscription } from 'rxjs';
import type { ChrootDecision } from '../decision.js';
import { ChrootGuardError } from '../errors.js';
import type { LostReport } from '../batch.js';
import { DEFAULT_PIN_DIR } from '../defaults.js';
import { followPinnedGuard, pinnedGuard, updatePinnedGuard } from '../pinned.js';
import { DocumentError, formatProblem, UnsafePolicyFileError, type Policy } from '../policy/types.js';
import { loadPolicy } from '../policy/validate.js';
import { pinOrAdopt } from '../cli/enforce.js';
import type { GuardRecordFields } from '../cli/records.js';
import type { AgentConfig } from './config.js';
import type { Flow } from '../flow.js';

/** Where the agent's guard reports to: the output stream and the metrics. */
export interface AgentGuardHooks {
  /** One decision, in the order the kernel made them. */
  decision(d: ChrootDecision): void;
  /** Decisions the kernel could not deliver (or could not make fully: `lsmErrors`), since the previous report. */
  lost(report: LostReport): void;
  /** A policy taken or refused (what a `guard` record says); `policy` is the one taken, absent when refused. */
  policy(record: GuardRecordFields, policy?: Policy): void;
  /** The reader stopped with `err`: decisions are no longer read (the guard stays pinned and deciding). */
  failed(err: unknown): void;
  /** The output's flow control: the pinned ring buffer's reader pauses with it. */
  readonly flow?: Flow;
}

/** A running agent guard: pinned, its policy in force, its decisions followed. */
export class AgentGuard {
  private sub: Subscription | undefined;
  private reading = false;

  private constructor(
    /** The policy file (absolute). */
    readonly file: string,
    /** The pin directory. */
    readonly dir: string,
    private readonly hooks: AgentGuardHooks,
  ) {}

  /**
   * Puts the policy of `file` in force in the guard pinned at
   * `config.pinDir` (adopting it, or pinning a new one) and follows its
   * decisions; resolves once both hold.
   * @throws {PolicyError} `INVALID_POLICY` when `file` is not a valid policy
   * (nothing loaded or changed).
   * @throws {UnsafePolicyFileError} `UNSAFE_POLICY_FILE` when a user other
   * than root could change `file` (`loadPolicy`'s `trusted`; nothing loaded
   * or changed).
   * @throws {ChrootGuardError} As `enforce --pin` (`LSM_UNAVAILABLE`,
   * `EPERM`, `PIN_FAILED`, ...), and `PIN_FAILED` when another process
   * reads the pinned guard's decisions (`status --follow`, another agent):
   * an adopted guard's policy is then left as it was.
   */
  static async start(config: NonNullable<AgentConfig['guard']>, file: string, hooks: AgentGuardHooks): Promise<AgentGuard> {
    const policy = loadPolicy(file, { trusted: true });
    const g = new AgentGuard(file, config.pinDir ?? DEFAULT_PIN_DIR, hooks);
    const dir = g.dir;
    try {
      if (pinnedGuard({ dir })) {
        // Reader first: refused (another reader), nothing is changed.
        g.follow();
        const info = updatePinnedGuard(policy, { dir });
        g.report('adopted', info.generation, policy);
      } else {
        const r = await pinOrAdopt(policy, { dir, ...(config.ringBufferBytes !== undefined ? { ringBufferBytes: config.ringBufferBytes } : {}), onDecision: hooks.decision });
        g.follow();
        g.report(r.how === 'pinned' ? 'pinned' : 'adopted', r.generation, policy);
      }
    } catch (err) {
      g.stop();
      throw err;
    }
    return g;
  }

  /** Opens the reader on the pinned ring buffer; throws its open error. */
  private follow(): void {
    let failure: unknown;
    let opening = true;
    this.reading = true;
    this.sub = followPinnedGuard({ dir: this.dir, onLost: (l) => this.hooks.lost(l), ...(this.hooks.flow ? { flow: this.hooks.flow } : {}) }).subscribe({
      next: (d) => this.hooks.decision(d),
      error: (err: unknown) => {
        this.reading = false;
        if (opening) failure = err;
        else this.hooks.failed(err);
      },
    });
    opening = false;
    if (failure) throw failure;
  }

  private report(event: 'pinned' | 'adopted' | 'reloaded', generation: number, policy: Policy): void {
    this.hooks.policy({ event, policy: this.file, pinDir: this.dir, generation, policyMode: policy.mode, code: null, problems: [] }, policy);
  }

  /**
   * SIGHUP: reads the policy file again and puts it in force atomically
   * (`reloaded`); when it cannot be read, validated or loaded, or a user
   * other than root could have changed it (`UNSAFE_POLICY_FILE`, judged on
   * the descriptor it is read from, before anything reaches the kernel),
   * the policy in force stays and the hooks hear `rejected` with every
   * problem.
   * @returns Whether the new policy is in force.
   */
  reload(): boolean {
    try {
      const policy = loadPolicy(this.file, { trusted: true });
      const info = updatePinnedGuard(policy, { dir: this.dir });
      this.report('reloaded', info.generation, policy);
      return true;
    } catch (err) {
      let now: ReturnType<typeof pinnedGuard> = null;
      try {
        now = pinnedGuard({ dir: this.dir });
      } catch {
        // reported below as it is: generation unknown
      }
      this.hooks.policy({
        event: 'rejected',
        policy: this.file,
        pinDir: this.dir,
        generation: now?.generation ?? null,
        policyMode: now?.mode ?? null,
        code: err instanceof ChrootGuardError ? err.code : 'INTERNAL',
        problems:
          err instanceof DocumentError
            ? err.problems.map(formatProblem)
            : err instanceof UnsafePolicyFileError
              ? [formatProblem({ file: err.file, pointer: '', message: err.problem })]
              : [err instanceof Error ? err.message : String(err)],
      });
      return false;
    }
  }

  /** The generation in force in the pinned guard (whoever set it), or null when none is pinned or it cannot be read. */
  generation(): number | null {
    try {
      return pinnedGuard({ dir: this.dir })?.generation ?? null;
    } catch {
      return null;
    }
  }

  /** The reader runs and a guard is pinned at the directory. */
  healthy(): boolean {
    return this.reading && this.generation() !== null;
  }

  /** Stops the reader; the guard stays pinned and deciding. Idempotent. */
  stop(): void {
    this.reading = false;
    this.sub?.unsubscribe();
    this.sub = undefined;
  }
}

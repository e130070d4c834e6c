/**
 * The policy model: the shapes a policy takes (what `policy.schema.json`
 * describes), the limits the loader and the kernel set, the error a bad
 * policy raises, and what a policy's values stand for (one value or a list,
 * a path's bytes).
 * @module
 */
import { ChrootGuardError } from '../errors.js';

/** What a rule (or the default) does with a chroot call. */
export type PolicyAction = 'allow' | 'deny' | 'audit';

/**
 * Conditions of a rule: every condition given must hold (AND); a list
 * means any of its values (OR).
 *
 * Who can forge what (see the README's threat model): `comm` is chosen by
 * the caller (`prctl(PR_SET_NAME)`, or the name of any executable it
 * runs), so it never identifies a program; paths can be aliased by anyone
 * who can make mounts (a user namespace of their own is enough), so
 * `path`/`subtree`/`alreadyChrooted` hold against such callers only
 * together with `initialNamespaces: true` (or exclude the others with
 * `not: { initialNamespaces: true }`). uids, gids, `exe` (matched by file
 * identity), `cgroupId`, `mntNs`, `initialNamespaces`, `escapesRoot` and
 * `cwdOutsideRoot` are set by the kernel.
 */
export interface PolicyConditions {
  /**
   * The new root is exactly this directory: an absolute path as the caller's
   * mount namespace sees it, like events' `resolvedPath` (the host path for
   * callers in the host's mount namespace; never relative to a chroot the
   * caller is already in). Bytes that are not UTF-8 are written `\xHH`, a
   * backslash `\\`. A directory outside the caller's namespace (a detached
   * mount, another namespace's tree) has no such path: see
   * `resolvedPathUnreachable`. A bind mount shows a directory under another
   * path: add `initialNamespaces` where callers may make their own mounts.
   */
  readonly path?: string | readonly string[];
  /** The new root is this directory or anything below it (absolute, as `path`). */
  readonly subtree?: string | readonly string[];
  /** Real uid of the caller. */
  readonly uid?: number | readonly number[];
  /** Effective uid of the caller (the one CAP_SYS_CHROOT is checked against). */
  readonly euid?: number | readonly number[];
  /** Real gid of the caller. */
  readonly gid?: number | readonly number[];
  /** Effective gid of the caller. */
  readonly egid?: number | readonly number[];
  /**
   * The caller's comm (at most 15 bytes). Set by the caller itself
   * (`prctl(PR_SET_NAME)`, or by naming an executable so): a label, not an
   * identity. `check` warns when an allow or audit rule relies on it alone.
   */
  readonly comm?: string | readonly string[];
  /**
   * The caller's executable (`current->mm->exe_file`), matched by identity:
   * the device and inode of the file at this path when the policy loads
   * (it must exist then). A copy of the file, or another file bind-mounted
   * over the path, does not match; a hard link does; a file replaced after
   * loading (a package upgrade) no longer matches until the policy is loaded
   * again.
   */
  readonly exe?: string | readonly string[];
  /** cgroup v2 id of the caller, as in events' `cgroupId`. */
  readonly cgroupId?: number | readonly number[];
  /**
   * The caller's root is not its mount namespace's root (the kernel's
   * `current_chrooted()`): a chroot from inside a chroot, or a root left in
   * a detached tree or another namespace.
   */
  readonly alreadyChrooted?: boolean;
  /**
   * Inode number of the caller's mount namespace (as events' `mntNs`,
   * `/proc/PID/ns/mnt`). The kernel reuses the number of a namespace that
   * has ended for a new one: name only namespaces that outlive the policy.
   */
  readonly mntNs?: number | readonly number[];
  /**
   * Whether the caller is in the initial user namespace and the initial
   * mount namespace (pid 1's, read when the policy loads): the host's, where
   * paths mean what the host's administrator sees. Callers in user or mount
   * namespaces of their own can alias paths; this condition cannot be forged.
   */
  readonly initialNamespaces?: boolean;
  /**
   * Whether the new root is not at or below the caller's root before the
   * call (events' `escapesRoot`, computed in the kernel): a chroot out of
   * the caller's jail. A new root not reachable from the caller's root (a
   * detached mount, another namespace's tree) escapes it too. When the
   * kernel's walk cannot tell (more than 64 steps), the condition cannot be
   * judged and holds for deny rules only. `examples/no-escape.yaml` denies
   * it for every caller.
   */
  readonly escapesRoot?: boolean;
  /**
   * Whether, after the call, the caller's cwd is not at or below its new
   * root (events' `cwdOutsideRoot`): the first step of the classic escape,
   * and also every chroot(8) call (its `chdir("/")` comes after). Unknown
   * as for `escapesRoot`.
   */
  readonly cwdOutsideRoot?: boolean;
}

/**
 * A rule's `match`: its conditions, and optionally `not`, conditions that,
 * when they all hold, make the rule not apply (`not: { initialNamespaces:
 * true }`: every caller but the host's). No `match`, or an empty one,
 * matches every call.
 */
export interface PolicyMatch extends PolicyConditions {
  /** When every one of these holds (lists: any value), the rule does not apply. At least one condition; no nested `not`. */
  readonly not?: PolicyConditions;
}

/** One rule. */
export interface PolicyRule {
  /** Unique; decision events carry it. `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`. */
  readonly id: string;
  /** `deny` fails the call with EPERM in enforce mode; `audit` allows and reports. */
  readonly action: PolicyAction;
  /** Free text. */
  readonly description?: string;
  /** Conditions; absent: every call. */
  readonly match?: PolicyMatch;
}

/** A policy: see `policy.schema.json` (published with the package). */
export interface Policy {
  /** Editor support; ignored. */
  readonly $schema?: string;
  /** `enforce` denies for real; `audit` never denies and reports what would have been denied. */
  readonly mode: 'enforce' | 'audit';
  /** Action when no rule matches (default `allow`). */
  readonly default?: PolicyAction;
  /**
   * What applies when the kernel program cannot decide (a kernel read
   * fails, or the policy is replaced twice during one decision): `default`
   * (the default action; the default), `allow` or `deny`. A decision that
   * gets no per-thread memory (`ENOMEM`: the kernel could not allocate it,
   * or task storage stayed busy) is a deny whatever this says, since any
   * local user can bring that about. Such decisions are reported with
   * `reason: 'internal-error'` or `'policy-torn'` and counted in `lsmErrors`.
   */
  readonly failMode?: 'default' | 'allow' | 'deny';
  /** Ordered rules; the first that matches decides. At most 64 after list expansion. */
  readonly rules: readonly PolicyRule[];
}

/** Where and what one problem of a policy file is. */
export interface PolicyProblem {
  /** The file, when the policy came from one. */
  readonly file?: string;
  /** 1-based line, when known. */
  readonly line?: number;
  /** 1-based column, when known. */
  readonly column?: number;
  /** JSON pointer of the offending value (e.g. `/rules/2/match/uid`). */
  readonly pointer: string;
  /** What is wrong and what was expected. */
  readonly message: string;
}

/**
 * A YAML or JSON document (a policy, an agent config) that does not parse
 * or validate: `problems` lists each problem with its position; `message`
 * holds them as `FILE:LINE:COL: message` lines. Raised as one of its
 * subclasses, which set `code`.
 */
export abstract class DocumentError extends ChrootGuardError {
  /** Every problem found, in file order. */
  readonly problems: readonly PolicyProblem[];

  protected constructor(code: 'INVALID_POLICY' | 'INVALID_CONFIG', problems: readonly PolicyProblem[]) {
    super(code, problems.map(formatProblem).join('\n'));
    this.problems = problems;
  }
}

/** A policy that does not parse or validate ({@link DocumentError}); `code` is `INVALID_POLICY`. */
export class PolicyError extends DocumentError {
  constructor(problems: readonly PolicyProblem[]) {
    super('INVALID_POLICY', problems);
    this.name = 'PolicyError';
  }
}

/**
 * A policy file that a user other than root could change, refused where
 * it would be loaded into the kernel (`enforce`, the agent's guard:
 * `loadPolicy(file, { trusted: true })`); `code` is `UNSAFE_POLICY_FILE`.
 * `message` names the file, the path component at fault with its owner and
 * mode, and the commands that make it safe.
 */
export class UnsafePolicyFileError extends ChrootGuardError {
  /** The file as it was named. */
  readonly file: string;
  /** The path component at fault: the file, a directory above it, or a symbolic link on the way (links followed). */
  readonly component: string;
  /** What is wrong with it and how to fix it, e.g. `/srv/p.yaml (a file, owner uid 0, gid 0, mode 0666) is writable by its group and others: chmod go-w /srv/p.yaml`. */
  readonly problem: string;

  constructor(file: string, component: string, problem: string) {
    super('UNSAFE_POLICY_FILE', `refusing the policy file ${file}: ${problem}; any user who can change it could change the policy the guard enforces`);
    this.name = 'UnsafePolicyFileError';
    this.file = file;
    this.component = component;
    this.problem = problem;
  }
}

/** `FILE:LINE:COL: message` (parts omitted when unknown). */
export function formatProblem(p: PolicyProblem): string {
  const where = [p.file, p.line, p.column].filter((x) => x !== undefined).join(':');
  return `${where || p.pointer}: ${p.message}`;
}

/** The same policy in audit mode. */
export function asAudit(p: Policy): Policy {
  return { ...p, mode: 'audit' };
}

// The limits the compiler shares with the kernel maps are defined in
// `crates/common/src/policy.rs` (MAX_RULES, MAX_PATHS, MAX_EXES,
// RULE_ID_BYTES) and `crates/common/src/lib.rs` (RESOLVED_MAX, COMM_LEN).
// `check` runs without the addon, so they are repeated here; a test holds
// them to the addon's `policyLimits()` and to `policy.schema.json`.

/** Most compiled rules (each value of a uid, euid, gid, egid, mntNs, comm or cgroupId list counts once per combination): `MAX_RULES` in `crates/common`. */
export const MAX_RULES = 64;
/** Most distinct `path`/`subtree` paths one policy may name: `MAX_PATHS` in `crates/common`. */
export const MAX_PATHS = 1024;
/** Most distinct `exe` paths one policy may name: `MAX_EXES` in `crates/common`. */
export const MAX_EXES = 512;
/**
 * Longest `path`, `subtree` or `exe`, in bytes of UTF-8 once empty
 * components and a trailing `/` are dropped: PATH_MAX - 1, as the loader
 * (`RESOLVED_MAX - 1` in `crates/common`) and the kernel count. JSON
 * Schema's `maxLength` counts UTF-16 code units, not bytes, so this is
 * checked here and not in the schema.
 */
export const MAX_PATH_BYTES = 4095;
/** Longest `comm`, in bytes of UTF-8: TASK_COMM_LEN - 1 (`COMM_LEN - 1` in `crates/common`). */
export const MAX_COMM_BYTES = 15;
/**
 * Longest rule id, in bytes (ids are ASCII, so characters): `RULE_ID_BYTES`
 * in `crates/common`. The schema's id pattern spells the same bound
 * (`{0,63}` after the first character); a test holds them together.
 */
export const MAX_RULE_ID_BYTES = 64;
/**
 * Largest policy, in bytes: {@link loadPolicy} reads at most this many
 * bytes of a file (one more to tell it is larger), so a huge file,
 * `/dev/zero` or an endless FIFO is refused without being read whole;
 * {@link parsePolicy} refuses longer text, and every policy (files and
 * objects alike) must fit in it once written as JSON, the form the loader
 * receives. A policy at the other limits ({@link MAX_RULES} rules,
 * {@link MAX_PATHS} paths, {@link MAX_EXES} executables) is a few tens of
 * KiB.
 */
export const MAX_POLICY_BYTES = 1024 * 1024;
/**
 * Deepest nesting of lists and maps in a policy file. A policy needs 5
 * (policy, rules, rule, match, list); the bound keeps every recursive step
 * (the YAML composer, conversion, validation) far from the stack's end.
 */
export const MAX_POLICY_DEPTH = 64;
/**
 * Most YAML aliases (`*name`) in one policy file. Besides the expansion
 * bound below, this bounds the YAML library's alias lookup, which scans
 * the document once per alias.
 */
export const MAX_ALIASES = 100;
/**
 * Most values (scalars, lists, maps) all aliases of a file may stand for
 * together, each alias counting the values of what it names with aliases
 * inside expanded: a "billion laughs" file (aliases of aliases, growing
 * tenfold per level) is refused at the alias that crosses this, before
 * anything is expanded.
 */
export const MAX_ALIAS_VALUES = 10_000;

/** A condition's values as a list: one value is a list of one; absent, an empty list. */
export const asList = <T>(v: T | readonly T[] | undefined): readonly T[] => (v === undefined ? [] : Array.isArray(v) ? (v as readonly T[]) : [v as T]);

/**
 * The bytes a policy path names: UTF-8, except that `\xHH` (two hex
 * digits) stands for one byte (a directory whose name is not UTF-8) and
 * `\\` for a backslash. A string saying what is wrong when an escape is
 * bad. The loader decodes the same way (`path_bytes` in
 * `crates/loader/src/policy/compile.rs`).
 */
export function pathBytes(p: string): Buffer | string {
  const out: number[] = [];
  const raw = Buffer.from(p, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i]!;
    if (b !== 0x5c) {
      out.push(b);
      continue;
    }
    const next = raw[i + 1];
    if (next === 0x5c) {
      out.push(0x5c);
      i++;
    } else if (next === 0x78 && /^[0-9a-fA-F]{2}$/.test(raw.subarray(i + 2, i + 4).toString('latin1'))) {
      out.push(parseInt(raw.subarray(i + 2, i + 4).toString('latin1'), 16));
      i += 3;
    } else {
      return 'has a backslash that is not \\xHH (one byte) or \\\\ (a backslash)';
    }
  }
  if (out.includes(0)) return 'names a NUL byte';
  return Buffer.from(out);
}

/**
 * Canonical form of a rule path, as bytes in a latin1 string (one char per
 * byte, comparable with {@link latin1} of a resolved path): escapes decoded,
 * no empty components, no trailing slash.
 */
export function canonical(p: string): string {
  const bytes = pathBytes(p);
  const text = typeof bytes === 'string' ? p : bytes.toString('latin1');
  return '/' + text.split('/').filter(Boolean).join('/');
}

/** Raw bytes as a latin1 string: one char per byte, so byte strings compare and prefix-match as strings. */
export const latin1 = (b: Buffer): string => b.toString('latin1');

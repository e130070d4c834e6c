/**
 * The chroot event: its TypeScript type and the decoder that reads it from
 * the batch buffers the loader hands over. Offsets come from the addon
 * (`eventLayout()`, computed from the Rust `#[repr(C)]` struct in
 * `crates/common`), so the decoder never holds a layout of its own.
 * @module
 */
import { constants } from 'node:os';
import type { AttachMode } from './errors.js';
import { ATTACH_MODES, ChrootGuardError } from './errors.js';
import { cgroupAttribution, type CgroupAttribution } from './cgroup.js';
import { native, type Native } from './native.js';
import { utf8SequenceLength } from './utf8.js';

/**
 * A process's executable (`task->mm->exe_file`) as the kernel walked its
 * path: what events (the caller's) and `chroot-guard ps`'s tasks both
 * carry. Paths are in the process's own mount namespace, in the display
 * form of {@link displayBytes} (bytes that are not UTF-8 as `\xNN`, a
 * backslash as `\\`), raw bytes beside them. Unlike `comm`, a process
 * cannot choose it without running another file.
 */
export interface ExecutablePath {
  /**
   * Path of the executable (`exe_file->f_path`), display form; null when
   * the process has no executable (a kernel thread) or a read failed. A
   * memfd shows as `/memfd:NAME` (`exeMemfd`). Each thread's first chroot
   * walks it and keeps the walk (`CG_CALLER_CACHE`) until the task execs,
   * changes mount namespace or parent: like an exec-time binary path, a
   * rename after that walk is not seen (`exeDeleted` is read every call).
   */
  readonly exe: string | null;
  /** Raw bytes of `exe`, or null. */
  readonly exeBytes: Buffer | null;
  /** The walk stopped at 64 steps or 4095 bytes: `exe` is the tail only. */
  readonly exeTruncated: boolean;
  /**
   * The executable is not reachable from the process's mount namespace
   * root (a detached tree, another namespace, a memfd): `exe` is its path
   * from that other root.
   */
  readonly exeUnreachable: boolean;
  /** The executable was unlinked after it was run (`/proc/PID/exe` says `(deleted)`): `exe` names where it was. */
  readonly exeDeleted: boolean;
  /** The executable is a memfd (`memfd_create(2)` run with `fexecve`/`execveat`): a file with no path in any namespace. */
  readonly exeMemfd: boolean;
}

/**
 * One chroot(2) attempt, emitted when the syscall returns.
 *
 * Sources: identity fields are read at syscall entry (`sys_enter_chroot`,
 * or fentry/kprobe on `__x64_sys_chroot`); `resolvedPath` at
 * `security_path_chroot` (fentry/kprobe modes) or from `current->fs->root`
 * at `sys_exit_chroot` after a successful call (tracepoint mode); `ret` at
 * syscall exit; the caller's executable ({@link ExecutablePath}) is walked
 * like `resolvedPath`, at syscall exit (at `security_path_chroot` for
 * decisions). The cgroup path and container ({@link CgroupAttribution})
 * are looked up in user space from `cgroupId` when the event is decoded
 * (`ts/cgroup.ts`), best effort.
 */
export interface ChrootEvent extends ExecutablePath, CgroupAttribution {
  /** Syscall exit time: ns since boot (CLOCK_BOOTTIME, `bpf_ktime_get_boot_ns`). */
  readonly ts: bigint;
  /** Syscall entry time: ns since boot (CLOCK_BOOTTIME). */
  readonly enterTs: bigint;
  /**
   * Caller's process id (the kernel's tgid), from
   * `bpf_get_current_pid_tgid() >> 32`: as seen from the initial pid
   * namespace (the host's), also for callers in containers; `pidNs` says
   * which namespace the caller is in.
   */
  readonly pid: number;
  /** Caller's thread id (the kernel's pid), from `bpf_get_current_pid_tgid()`, in the initial pid namespace. */
  readonly tid: number;
  /**
   * Caller's process id as its own pid namespace sees it (what `getpid()`
   * returns in a container): `current->group_leader->thread_pid->
   * numbers[level].nr`. Equals `pid` outside pid namespaces.
   */
  readonly nsPid: number;
  /** Caller's thread id as its own pid namespace sees it (`current->thread_pid->numbers[level].nr`). */
  readonly nsTid: number;
  /** Parent's process id (`current->real_parent->tgid`), in the initial pid namespace. */
  readonly ppid: number;
  /** Real uid, from `bpf_get_current_uid_gid()`. */
  readonly uid: number;
  /** Real gid, from `bpf_get_current_uid_gid()`. */
  readonly gid: number;
  /** Effective uid: `current->cred->euid`. */
  readonly euid: number;
  /** Effective gid: `current->cred->egid`. */
  readonly egid: number;
  /** `current->comm` at entry: at most 15 bytes, decoded as UTF-8 (display form as for `path`). Set by the caller itself: a label, not an identity. */
  readonly comm: string;
  /** The raw bytes of `comm` (NUL padding excluded): what `comm` policy conditions compare. */
  readonly commBytes: Buffer;
  /**
   * cgroup v2 id of the caller, from `bpf_get_current_cgroup_id()` (the
   * kernfs node id of its cgroup, its directory's inode number): what
   * `cgroupPath` and the container fields are looked up from.
   */
  readonly cgroupId: bigint;
  /** Mount namespace inode number (as in `/proc/PID/ns/mnt`). */
  readonly mntNs: number;
  /** Active pid namespace inode number (as in `/proc/PID/ns/pid`). */
  readonly pidNs: number;
  /** User namespace inode number (as in `/proc/PID/ns/user`): `current->cred->user_ns->ns.inum`. */
  readonly userNs: number;
  /**
   * Device of the caller's executable (`current->mm->exe_file->f_inode->
   * i_sb->s_dev`), in the kernel's encoding: `major << 20 | minor`. 0 when
   * `exeUnknown`.
   */
  readonly exeDev: number;
  /** Inode number of the caller's executable (`exe_file->f_inode->i_ino`); 0n when `exeUnknown`. */
  readonly exeIno: bigint;
  /** The caller has no executable to identify (no `mm` or `exe_file`, e.g. a kernel thread). */
  readonly exeUnknown: boolean;
  /** The parent's comm (`current->real_parent->comm`), display form as for `comm`; set by the parent itself. */
  readonly parentComm: string;
  /** Raw bytes of `parentComm` (NUL padding excluded). */
  readonly parentCommBytes: Buffer;
  /**
   * Path of the parent's executable (`current->real_parent->mm->exe_file`)
   * in the parent's own mount namespace; null when it has none (a kernel
   * thread, or a parent that is exiting) or a read failed.
   */
  readonly parentExe: string | null;
  /** Raw bytes of `parentExe`, or null. */
  readonly parentExeBytes: Buffer | null;
  /** As `exeTruncated`, for `parentExe`. */
  readonly parentExeTruncated: boolean;
  /** As `exeUnreachable`, for `parentExe` and the parent's mount namespace. */
  readonly parentExeUnreachable: boolean;
  /** As `exeDeleted`, for `parentExe`. */
  readonly parentExeDeleted: boolean;
  /** As `exeMemfd`, for `parentExe`. */
  readonly parentExeMemfd: boolean;
  /**
   * The argument as passed, for display: UTF-8, with bytes that are not
   * valid UTF-8 written as `\xNN`. Empty when unreadable (see `pathUnreadable`).
   */
  readonly path: string;
  /** The argument's raw bytes (at most 4095), read with `bpf_probe_read_user_str` at entry. */
  readonly pathBytes: Buffer;
  /** The argument was longer than PATH_MAX - 1 bytes and was cut. */
  readonly pathTruncated: boolean;
  /** The argument's user memory could not be read (the call then fails with EFAULT). */
  readonly pathUnreadable: boolean;
  /**
   * The argument was read after the entry hook, whose read found its page
   * not yet faulted in (a string literal a forked child touches first in
   * the call): at `security_path_chroot` or at syscall exit, once the kernel
   * had copied it in. False when read at entry.
   */
  readonly pathReadLate: boolean;
  /**
   * The new root as an absolute path in the caller's mount namespace (not
   * relative to a chroot the caller is already in), walked from the kernel's
   * dentries and mounts; display form as for `path`. Null when the call
   * never resolved a directory (e.g. ENOENT, ENOTDIR, or EPERM before the
   * LSM hook) or, in tracepoint mode, whenever the call failed.
   */
  readonly resolvedPath: string | null;
  /** Raw bytes of `resolvedPath`, or null. */
  readonly resolvedPathBytes: Buffer | null;
  /** The walk stopped at 64 steps or 4095 bytes: `resolvedPath` is the tail only. */
  readonly resolvedPathTruncated: boolean;
  /**
   * The new root is not reachable from the caller's mount namespace root:
   * the walk ended at another root (`current->nsproxy->mnt_ns->root` was
   * never met): a detached tree (`umount -l`, `open_tree(OPEN_TREE_CLONE)`,
   * `fsmount`), another mount namespace (`/proc/PID/root`, a directory fd
   * passed from elsewhere), or a dentry escaped from its mount.
   * `resolvedPath` is then the path from that other root, which names
   * something else (or nothing) in the caller's namespace; policies treat
   * it as a path that cannot be judged.
   */
  readonly resolvedPathUnreachable: boolean;
  /**
   * The caller's root was not its mount namespace's root when it called
   * (the kernel's `current_chrooted()`): a chroot from inside a chroot, or
   * a root left in a detached tree or another namespace. From
   * `current->fs->root` and `current->nsproxy->mnt_ns->root` at entry.
   */
  readonly callerChrooted: boolean;
  /**
   * The new root is not at or below the caller's root before the call: a
   * chroot out of the caller's jail (the classic escape's `chroot(".")`
   * after climbing with `chdir("..")`, a kept or received directory fd). A
   * new root not reachable from the caller's root (a detached mount,
   * another namespace's tree) is not below it either. Computed in the
   * kernel by walking up from the new root across mounts, as `d_path()`
   * would, at most 64 steps. Source: guard decisions
   * (`lsm/path_chroot`) and fentry/kprobe events (at
   * `security_path_chroot`) compare the hook's `struct path` with
   * `current->fs->root` before the call; tracepoint events compare
   * `current->fs->root` after a successful call with the root saved at
   * `sys_enter_chroot`. Null when not known: the walk's bound was hit or
   * a read failed, or the call never had a new root (`resolvedPath` is
   * then null too: ENOENT, ENOTDIR, EACCES, EPERM before the LSM hook, and
   * in tracepoint mode every failed call). Policies' `escapesRoot`
   * condition tests it; null holds for deny rules only.
   */
  readonly escapesRoot: boolean | null;
  /**
   * After the call, the caller's cwd (`current->fs->pwd`) is not at or
   * below its new root: the first step of the classic escape (a chroot
   * into a subdirectory without a chdir, so `chdir("..")` climbs past the
   * root). chroot(8) and other well-behaved tools also make it true, for
   * the moment until the `chdir("/")` they make right after the call: a
   * fact, not an alarm by itself. Sources and null as `escapesRoot` (the
   * same probes, the cwd instead of the old root); policies'
   * `cwdOutsideRoot` condition tests it.
   */
  readonly cwdOutsideRoot: boolean | null;
  /** Syscall result: 0, or a negative errno. */
  readonly ret: number;
  /** Symbolic errno of a failed call (`'ENOENT'`), or null when `ret` is 0. */
  readonly errno: string | null;
  /**
   * Result of `security_path_chroot` (0 or a negative errno) in fentry and
   * kprobe modes when the call reached the LSM hook; null otherwise.
   */
  readonly lsmRet: number | null;
  /** Which attach mode produced the event. */
  readonly probe: AttachMode;
}

/**
 * The fields of {@link ChrootEvent} that say who called and with what, in
 * record order; a {@link ChrootDecision} carries the same. One list: the
 * decision constructor and the CLI's NDJSON records are compiled from it
 * ({@link compileObject}), and the type check below keeps it complete.
 * @internal
 */
export const IDENTITY_FIELDS = [
  'ts', 'pid', 'tid', 'nsPid', 'nsTid', 'ppid', 'uid', 'gid', 'euid', 'egid', 'comm', 'commBytes',
  'cgroupId', 'cgroupPath', 'cgroupLookup', 'containerRuntime', 'containerId', 'podUid', 'mntNs', 'pidNs', 'userNs',
  'exeDev', 'exeIno', 'exeUnknown', 'exe', 'exeBytes', 'exeTruncated', 'exeUnreachable', 'exeDeleted', 'exeMemfd',
  'parentComm', 'parentCommBytes', 'parentExe', 'parentExeBytes',
  'parentExeTruncated', 'parentExeUnreachable', 'parentExeDeleted', 'parentExeMemfd',
  'path', 'pathBytes', 'pathTruncated', 'pathUnreadable', 'pathReadLate',
  'resolvedPath', 'resolvedPathBytes', 'resolvedPathTruncated', 'resolvedPathUnreachable', 'callerChrooted',
  'escapesRoot', 'cwdOutsideRoot',
] as const satisfies ReadonlyArray<keyof ChrootEvent>;

/** The fields of {@link ChrootEvent} about the call itself (its entry time and outcome), in record order. @internal */
export const CALL_FIELDS = ['enterTs', 'ret', 'errno', 'lsmRet', 'probe'] as const satisfies ReadonlyArray<keyof ChrootEvent>;

/** The call fields' names. @internal */
export type CallField = (typeof CALL_FIELDS)[number];

// Every event field is in exactly one of the two lists: a field added to
// ChrootEvent and neither list fails to compile here.
const everyField: Exclude<keyof ChrootEvent, (typeof IDENTITY_FIELDS)[number] | CallField> extends never ? true : never = true;
void everyField;

/**
 * One field of an object {@link compileObject} builds: its key, the
 * JavaScript that computes its value from the parameters, and the same as a
 * function. @internal
 */
export interface FieldSource {
  readonly key: string;
  readonly expression: string;
  readonly get: (a: never, b: never) => unknown;
}

/**
 * A function of `params` that returns the object of `fields`, in order,
 * compiled on first call into one object literal (`{ key: expression, … }`).
 * The event path builds one object per event; a literal copy field by field
 * costs a few ns where object spread of a 50-field event costs about 2 µs
 * in V8, so copies are generated from the field lists instead of written
 * out by hand. Keys and expressions come from this package's constant lists
 * only. Where code generation is disallowed
 * (`--disallow-code-generation-from-strings`), the object is built field by
 * field with each `get`: slower, the same object.
 * @internal
 */
export function compileObject<F extends (a: never, b: never) => object>(params: readonly string[], fields: readonly FieldSource[]): F {
  const compile = (): F => {
    try {
      return new Function(...params, `return { ${fields.map((f) => `${JSON.stringify(f.key)}: ${f.expression}`).join(', ')} };`) as F;
    } catch {
      return ((a: never, b: never) => {
        const o: Record<string, unknown> = {};
        for (const f of fields) o[f.key] = f.get(a, b);
        return o;
      }) as F;
    }
  };
  let built: F | undefined;
  // Two fixed parameters (every use has one or two): no rest array per call.
  return ((a: never, b: never) => (built ??= compile())(a, b)) as F;
}

/** The field `key` of the argument `param` (at `index`), copied as it is. @internal */
export const copied = (param: string, index: number, key: string): FieldSource => ({
  key,
  expression: `${param}.${key}`,
  get: (a: never, b: never) => ((index === 0 ? a : b) as Record<string, unknown>)[key],
});

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(constants.errno).map(([name, n]) => [n, name] as [number, string]),
);

/** Symbolic name of a positive errno (`2` → `'ENOENT'`), or `E<n>` when unknown. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

/** {@link errnoName}'s names as a table by errno (`''` where it has none), for the addon's NDJSON writer. @internal */
export function errnoNameTable(): string[] {
  const table: string[] = [];
  for (const [n, name] of ERRNO_NAMES) table[n] = name;
  return Array.from(table, (name) => name ?? '');
}

const utf8 = new TextDecoder('utf-8');

/**
 * A copy of `data[start, end)`. Most are short (a comm, a path): for them a
 * loop into `Buffer.allocUnsafe` (the pool, as `Buffer.from` uses) takes
 * about half of `Buffer.from(data.subarray(…))`'s time, which makes a view
 * first and checks its argument's kind.
 */
function copyOf(data: Buffer, start: number, end: number): Buffer {
  const n = end - start;
  if (n > 64) return Buffer.from(data.subarray(start, end));
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) out[i] = data[start + i]!;
  return out;
}

/** A copy of the NUL-padded bytes at `at`, up to the first NUL (a `comm`). */
function cString(data: Buffer, at: number, max: number): Buffer {
  let n = 0;
  while (n < max && data[at + n] !== 0) n++;
  return copyOf(data, at, at + n);
}

/**
 * Whether `bytes` are printable ASCII without a backslash, the common
 * case, which {@link displayBytes} shows as they are. A plain loop, not
 * `every`, which calls a function per byte.
 */
function isPlain(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b < 0x20 || b >= 0x7f || b === 0x5c) return false;
  }
  return true;
}

/**
 * Display form of raw bytes (paths, comm): the UTF-8 text, with every byte
 * that is not part of well-formed UTF-8 written `\xNN` and a backslash
 * written `\\`. Unambiguous: a name holding a literal backslash never
 * prints like one holding a byte that is not UTF-8. It is also the escape
 * form policies take (`pathBytes(displayBytes(b))` gives `b` back), so a
 * displayed path can be pasted into a rule.
 */
export function displayBytes(bytes: Uint8Array): string {
  if (isPlain(bytes)) return (bytes instanceof Buffer ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)).toString('latin1');
  let out = '';
  let run = 0; // start of the well-formed bytes not yet written
  for (let i = 0; i < bytes.length; ) {
    const n = utf8SequenceLength(bytes, i);
    if (n > 0 && bytes[i] !== 0x5c) {
      i += n;
      continue;
    }
    out += utf8.decode(bytes.subarray(run, i));
    out += n > 0 ? '\\\\' : `\\x${bytes[i]!.toString(16).padStart(2, '0')}`;
    i += 1;
    run = i;
  }
  return out + utf8.decode(bytes.subarray(run));
}

/**
 * Why a decision came out as it did: `rule` (a rule matched), `default`
 * (none did), `internal-error` (the program could not decide: a kernel read
 * failed, the policy's `failMode` applied; or no per-thread memory,
 * `ENOMEM`, a deny), `policy-torn` (the policy was replaced twice during the
 * decision; `failMode` applied).
 */
export type DecisionReason = 'rule' | 'default' | 'internal-error' | 'policy-torn';

/**
 * A policy decision as the `lsm/path_chroot` program reports it (internal:
 * `ts/guard.ts` turns the rule index into the rule's id).
 * @internal
 */
export interface RawDecision {
  readonly event: ChrootEvent;
  /** Why. */
  readonly reason: DecisionReason;
  /** For `internal-error`: the failing helper's errno name (`ENOMEM`), else null. */
  readonly error: string | null;
  /** The caller was in the initial user and mount namespaces. */
  readonly initialNamespaces: boolean;
  /** `allow`, `deny` or `audit`: the matching rule's action, or the default's. */
  readonly action: 'allow' | 'deny' | 'audit';
  /** Compiled rule index, or null for the default action. */
  readonly rule: number | null;
  /** The policy was in enforce mode. */
  readonly enforcing: boolean;
  /** EPERM was returned to the caller. */
  readonly denied: boolean;
  /** Generation of the deciding policy. */
  readonly generation: number;
}

/** Field offsets and constants of the record, from the addon. */
type Layout = Record<string, number>;

/** A fact of `flags` that may be absent or unknown: null unless `compared` is set and `unknown` is not, else whether `yes` is set. */
function fact(flags: number, compared: number, yes: number, unknown: number): boolean | null {
  return (flags & compared) === 0 || (flags & unknown) !== 0 ? null : (flags & yes) !== 0;
}

/** Every layout key the decoder reads, flags included. @internal */
export const DECODED_KEYS = [
  'size', 'kind', 'mode', 'path_len', 'resolved_len', 'flags', 'pid', 'tid', 'ppid', 'uid', 'gid', 'euid',
  'egid', 'mnt_ns', 'pid_ns', 'user_ns', 'ns_pid', 'ns_tid', 'exe_dev', 'exe_ino', 'lsm_ret', 'ret', 'enter_ns', 'ts_ns', 'cgroup_id',
  'comm', 'parent_comm', 'exe_len', 'parent_exe_len', 'exe_flags', 'exe_flag_present', 'exe_flag_truncated', 'exe_flag_unreachable',
  'exe_flag_deleted', 'exe_flag_memfd', 'exe_flag_parent_shift', 'data', 'header', 'flag_exe_unknown', 'flag_policy_torn', 'flag_internal_error', 'flag_initial_namespaces',
  'comm_len', 'flag_path_truncated', 'flag_path_unreadable', 'flag_path_read_late', 'flag_resolved_present',
  'flag_resolved_truncated', 'flag_resolved_unreachable', 'flag_lsm_called', 'kind_chroot',
  'rule', 'policy_gen', 'flag_caller_chrooted', 'flag_action_shift', 'flag_action_mask', 'flag_enforcing',
  'flag_denied', 'flag_roots_compared', 'flag_escapes_root', 'flag_escapes_root_unknown', 'flag_cwd_outside_root',
  'flag_cwd_outside_root_unknown', 'kind_decision', 'no_rule', 'action_allow', 'action_deny', 'action_audit',
  ...ATTACH_MODES.map((m) => `mode_${m}` as const),
] as const;
type Key = (typeof DECODED_KEYS)[number];

let shared: Decoder | undefined;

/**
 * The decoder of the loaded addon, made on first use.
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` when the addon cannot load.
 * @internal
 */
export function decoder(): Decoder {
  return (shared ??= new Decoder(native()));
}

/**
 * The display string one field had last ({@link displayBytes}), kept while
 * it is plain (printable ASCII, no backslash: its characters are its
 * bytes): a process's events repeat its comm and executable paths,
 * and a tool's calls their paths; comparing bytes with characters takes
 * less time than decoding them again.
 */
class LastText {
  private text: string | null = null;

  of(bytes: Buffer): string {
    const t = this.text;
    if (t !== null && t.length === bytes.length) {
      let i = 0;
      while (i < t.length && t.charCodeAt(i) === bytes[i]) i++;
      if (i === t.length) return t;
    }
    const text = displayBytes(bytes);
    this.text = isPlain(bytes) ? text : null;
    return text;
  }
}

/**
 * Decodes the batches of one addon (internal). Use {@link decoder}.
 * @internal
 */
export class Decoder {
  private readonly L: Record<Key, number>;
  private readonly modes: Map<number, AttachMode>;
  private readonly comm = new LastText();
  private readonly parentComm = new LastText();
  private readonly exe = new LastText();
  private readonly parentExe = new LastText();
  private readonly path = new LastText();
  private readonly resolvedPath = new LastText();

  constructor(binding: Native) {
    const layout: Layout = binding.eventLayout();
    for (const k of DECODED_KEYS) {
      if (typeof layout[k] !== 'number') {
        throw new ChrootGuardError('NATIVE_UNAVAILABLE', `the native addon's event layout lacks "${k}": addon and JS are from different builds`);
      }
    }
    this.L = layout as Record<Key, number>;
    this.modes = new Map<number, AttachMode>(ATTACH_MODES.map((m) => [this.L[`mode_${m}`], m]));
  }

  /**
   * Decodes every record of a batch (`[u32 length][u32 0][record][pad to 8]`…):
   * chroot events into `events`, policy decisions into `decisions`.
   * Strings and byte buffers are copied out, so the batch is not retained.
   */
  decodeBatch(data: Buffer, events: ChrootEvent[] = [], decisions: RawDecision[] = []): ChrootEvent[] {
    this.decodeEach(data, (e) => events.push(e), (d) => decisions.push(d));
    return events;
  }

  /**
   * Decodes the records of one batch in order, handing each to `onEvent`
   * (chroot events) or `onDecision` (guard decisions; skipped when absent)
   * as soon as it is decoded.
   */
  decodeEach(data: Buffer, onEvent: (e: ChrootEvent) => void, onDecision?: (d: RawDecision) => void): void {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const L = this.L;
    let at = 0;
    while (at + 8 <= data.length) {
      const len = view.getUint32(at, true);
      const start = at + 8;
      if (len >= L.header) {
        const kind = view.getUint8(start + L.kind);
        if (kind === L.kind_chroot) onEvent(this.decodeOne(data, view, start));
        else if (kind === L.kind_decision && onDecision) onDecision(this.decodeDecision(data, view, start));
      }
      at = start + Math.ceil(len / 8) * 8;
    }
  }

  private decodeDecision(data: Buffer, v: DataView, s: number): RawDecision {
    const L = this.L;
    const flags = v.getUint32(s + L.flags, true);
    const code = (flags >>> L.flag_action_shift) & L.flag_action_mask;
    const rule = v.getUint16(s + L.rule, true);
    const internal = (flags & L.flag_internal_error) !== 0;
    const reason: DecisionReason = internal ? 'internal-error' : flags & L.flag_policy_torn ? 'policy-torn' : rule === L.no_rule ? 'default' : 'rule';
    return {
      event: this.decodeOne(data, v, s),
      reason,
      error: internal ? errnoName(-v.getInt32(s + L.lsm_ret, true)) : null,
      initialNamespaces: (flags & L.flag_initial_namespaces) !== 0,
      action: code === L.action_deny ? 'deny' : code === L.action_audit ? 'audit' : 'allow',
      rule: rule === L.no_rule ? null : rule,
      enforcing: (flags & L.flag_enforcing) !== 0,
      denied: (flags & L.flag_denied) !== 0,
      generation: v.getUint32(s + L.policy_gen, true),
    };
  }

  private decodeOne(data: Buffer, v: DataView, s: number): ChrootEvent {
    const L = this.L;
    const flags = v.getUint32(s + L.flags, true);
    // `data` holds the argument, the resolved path, the executable and the
    // parent's executable, back to back; records carry only the used bytes.
    const pathLen = v.getUint16(s + L.path_len, true);
    const resolvedLen = v.getUint16(s + L.resolved_len, true);
    const exeLen = v.getUint16(s + L.exe_len, true);
    const pathBytes = copyOf(data, s + L.data, s + L.data + pathLen);
    const commBytes = cString(data, s + L.comm, L.comm_len);
    const parentCommBytes = cString(data, s + L.parent_comm, L.comm_len);
    let at = s + L.data + pathLen;
    const resolvedPathBytes = flags & L.flag_resolved_present ? copyOf(data, at, at + resolvedLen) : null;
    at += resolvedLen;
    const xf = v.getUint16(s + L.exe_flags, true);
    const pf = xf >>> L.exe_flag_parent_shift;
    const exeBytes = xf & L.exe_flag_present ? copyOf(data, at, at + exeLen) : null;
    at += exeLen;
    const parentExeBytes = pf & L.exe_flag_present ? copyOf(data, at, at + v.getUint16(s + L.parent_exe_len, true)) : null;
    const ret = Number(v.getBigInt64(s + L.ret, true));
    const cgroupId = v.getBigUint64(s + L.cgroup_id, true);
    const cg = cgroupAttribution(cgroupId);
    return {
      ts: v.getBigUint64(s + L.ts_ns, true),
      enterTs: v.getBigUint64(s + L.enter_ns, true),
      pid: v.getUint32(s + L.pid, true),
      tid: v.getUint32(s + L.tid, true),
      nsPid: v.getUint32(s + L.ns_pid, true),
      nsTid: v.getUint32(s + L.ns_tid, true),
      ppid: v.getUint32(s + L.ppid, true),
      uid: v.getUint32(s + L.uid, true),
      gid: v.getUint32(s + L.gid, true),
      euid: v.getUint32(s + L.euid, true),
      egid: v.getUint32(s + L.egid, true),
      comm: this.comm.of(commBytes),
      commBytes,
      cgroupId,
      cgroupPath: cg.cgroupPath,
      cgroupLookup: cg.cgroupLookup,
      containerRuntime: cg.containerRuntime,
      containerId: cg.containerId,
      podUid: cg.podUid,
      mntNs: v.getUint32(s + L.mnt_ns, true),
      pidNs: v.getUint32(s + L.pid_ns, true),
      userNs: v.getUint32(s + L.user_ns, true),
      exeDev: v.getUint32(s + L.exe_dev, true),
      exeIno: v.getBigUint64(s + L.exe_ino, true),
      exeUnknown: (flags & L.flag_exe_unknown) !== 0,
      exe: exeBytes ? this.exe.of(exeBytes) : null,
      exeBytes,
      exeTruncated: (xf & L.exe_flag_truncated) !== 0,
      exeUnreachable: (xf & L.exe_flag_unreachable) !== 0,
      exeDeleted: (xf & L.exe_flag_deleted) !== 0,
      exeMemfd: (xf & L.exe_flag_memfd) !== 0,
      parentComm: this.parentComm.of(parentCommBytes),
      parentCommBytes,
      parentExe: parentExeBytes ? this.parentExe.of(parentExeBytes) : null,
      parentExeBytes,
      parentExeTruncated: (pf & L.exe_flag_truncated) !== 0,
      parentExeUnreachable: (pf & L.exe_flag_unreachable) !== 0,
      parentExeDeleted: (pf & L.exe_flag_deleted) !== 0,
      parentExeMemfd: (pf & L.exe_flag_memfd) !== 0,
      path: this.path.of(pathBytes),
      pathBytes,
      pathTruncated: (flags & L.flag_path_truncated) !== 0,
      pathUnreadable: (flags & L.flag_path_unreadable) !== 0,
      pathReadLate: (flags & L.flag_path_read_late) !== 0,
      resolvedPath: resolvedPathBytes ? this.resolvedPath.of(resolvedPathBytes) : null,
      resolvedPathBytes,
      resolvedPathTruncated: (flags & L.flag_resolved_truncated) !== 0,
      resolvedPathUnreachable: (flags & L.flag_resolved_unreachable) !== 0,
      callerChrooted: (flags & L.flag_caller_chrooted) !== 0,
      escapesRoot: fact(flags, L.flag_roots_compared, L.flag_escapes_root, L.flag_escapes_root_unknown),
      cwdOutsideRoot: fact(flags, L.flag_roots_compared, L.flag_cwd_outside_root, L.flag_cwd_outside_root_unknown),
      ret,
      errno: ret < 0 ? errnoName(-ret) : null,
      lsmRet: flags & L.flag_lsm_called ? v.getInt32(s + L.lsm_ret, true) : null,
      probe: this.modes.get(v.getUint8(s + L.mode)) ?? 'tracepoint',
    };
  }
}

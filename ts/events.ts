/**
 * The chroot event: its TypeScript type and the decoder that reads it from
 * the batch buffers the loader hands over. Offsets come from the addon
 * (`eventLayout()`, computed from the Rust `#[repr(C)]` struct in
 * `crates/common`), so the decoder never holds a layout of its own.
 * @module
 */
import { constants } from 'node:os';
import type { AttachMode } from './errors.js';
import { ChrootWatchError } from './errors.js';
import { native, type Native } from './native.js';

/**
 * One chroot(2) attempt, emitted when the syscall returns.
 *
 * Sources: identity fields are read at syscall entry (`sys_enter_chroot`,
 * or fentry/kprobe on `__x64_sys_chroot`); `resolvedPath` at
 * `security_path_chroot` (fentry/kprobe modes) or from `current->fs->root`
 * at `sys_exit_chroot` after a successful call (tracepoint mode); `ret` at
 * syscall exit.
 */
export interface ChrootEvent {
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
  /** `current->comm` at entry: at most 15 bytes, decoded as UTF-8. */
  readonly comm: string;
  /** cgroup v2 id of the caller, from `bpf_get_current_cgroup_id()`. */
  readonly cgroupId: bigint;
  /** Mount namespace inode number (as in `/proc/PID/ns/mnt`). */
  readonly mntNs: number;
  /** Active pid namespace inode number (as in `/proc/PID/ns/pid`). */
  readonly pidNs: number;
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
   * The caller's root was not its mount namespace's root when it called:
   * a chroot from inside a chroot. From `current->fs->root` at entry.
   */
  readonly callerChrooted: boolean;
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

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(constants.errno).map(([name, n]) => [n, name] as [number, string]),
);

/** Symbolic name of a positive errno (`2` → `'ENOENT'`), or `E<n>` when unknown. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Display form of raw bytes: UTF-8 when valid, else ASCII with `\xNN` escapes. */
export function displayBytes(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    let out = '';
    for (const b of bytes) out += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
    return out;
  }
}

/**
 * A policy decision as the `lsm/path_chroot` program reports it (internal:
 * `ts/guard.ts` turns the rule index into the rule's id).
 * @internal
 */
export interface RawDecision {
  readonly event: ChrootEvent;
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

const REQUIRED = [
  'size', 'kind', 'mode', 'path_len', 'resolved_len', 'flags', 'pid', 'tid', 'ppid', 'uid', 'gid', 'euid',
  'egid', 'mnt_ns', 'pid_ns', 'lsm_ret', 'ret', 'enter_ns', 'ts_ns', 'cgroup_id', 'comm', 'data', 'header',
  'comm_len', 'flag_path_truncated', 'flag_path_unreadable', 'flag_resolved_present',
  'flag_resolved_truncated', 'flag_lsm_called', 'kind_chroot', 'mode_fentry', 'mode_kprobe', 'mode_tracepoint',
  'rule', 'policy_gen', 'flag_caller_chrooted', 'flag_action_shift', 'flag_action_mask', 'flag_enforcing',
  'flag_denied', 'kind_decision', 'no_rule', 'action_allow', 'action_deny', 'action_audit',
] as const;
type Key = (typeof REQUIRED)[number];

let shared: Decoder | undefined;

/**
 * The decoder of the loaded addon, made on first use.
 * @throws {ChrootWatchError} `NATIVE_UNAVAILABLE` when the addon cannot load.
 * @internal
 */
export function decoder(): Decoder {
  return (shared ??= new Decoder(native()));
}

/**
 * Decodes the batches of one addon (internal). Use {@link decoder}.
 * @internal
 */
export class Decoder {
  private readonly L: Record<Key, number>;
  private readonly modes: Map<number, AttachMode>;

  constructor(binding: Native) {
    const layout: Layout = binding.eventLayout();
    for (const k of REQUIRED) {
      if (typeof layout[k] !== 'number') {
        throw new ChrootWatchError('NATIVE_UNAVAILABLE', `the native addon's event layout lacks "${k}": addon and JS are from different builds`);
      }
    }
    this.L = layout as Record<Key, number>;
    this.modes = new Map<number, AttachMode>([
      [this.L.mode_fentry, 'fentry'],
      [this.L.mode_kprobe, 'kprobe'],
      [this.L.mode_tracepoint, 'tracepoint'],
    ]);
  }

  /**
   * Decodes every record of a batch (`[u32 length][u32 0][record][pad to 8]`…):
   * chroot events into `events`, policy decisions into `decisions`.
   * Strings and byte buffers are copied out, so the batch is not retained.
   */
  decodeBatch(data: Buffer, events: ChrootEvent[] = [], decisions: RawDecision[] = []): ChrootEvent[] {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const L = this.L;
    let at = 0;
    while (at + 8 <= data.length) {
      const len = view.getUint32(at, true);
      const start = at + 8;
      if (len >= L.header) {
        const kind = view.getUint8(start + L.kind);
        if (kind === L.kind_chroot) events.push(this.decodeOne(data, view, start));
        else if (kind === L.kind_decision) decisions.push(this.decodeDecision(data, view, start));
      }
      at = start + Math.ceil(len / 8) * 8;
    }
    return events;
  }

  private decodeDecision(data: Buffer, v: DataView, s: number): RawDecision {
    const L = this.L;
    const flags = v.getUint32(s + L.flags, true);
    const code = (flags >>> L.flag_action_shift) & L.flag_action_mask;
    const rule = v.getUint16(s + L.rule, true);
    return {
      event: this.decodeOne(data, v, s),
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
    // `data` holds the argument, then the resolved path; records carry only
    // the used bytes.
    const pathLen = v.getUint16(s + L.path_len, true);
    const pathBytes = Buffer.from(data.subarray(s + L.data, s + L.data + pathLen));
    const commRaw = data.subarray(s + L.comm, s + L.comm + L.comm_len);
    const commEnd = commRaw.indexOf(0);
    let resolvedPathBytes: Buffer | null = null;
    if (flags & L.flag_resolved_present) {
      const n = v.getUint16(s + L.resolved_len, true);
      const at = s + L.data + pathLen;
      resolvedPathBytes = Buffer.from(data.subarray(at, at + n));
    }
    const ret = Number(v.getBigInt64(s + L.ret, true));
    return {
      ts: v.getBigUint64(s + L.ts_ns, true),
      enterTs: v.getBigUint64(s + L.enter_ns, true),
      pid: v.getUint32(s + L.pid, true),
      tid: v.getUint32(s + L.tid, true),
      ppid: v.getUint32(s + L.ppid, true),
      uid: v.getUint32(s + L.uid, true),
      gid: v.getUint32(s + L.gid, true),
      euid: v.getUint32(s + L.euid, true),
      egid: v.getUint32(s + L.egid, true),
      comm: displayBytes(commEnd < 0 ? commRaw : commRaw.subarray(0, commEnd)),
      cgroupId: v.getBigUint64(s + L.cgroup_id, true),
      mntNs: v.getUint32(s + L.mnt_ns, true),
      pidNs: v.getUint32(s + L.pid_ns, true),
      path: displayBytes(pathBytes),
      pathBytes,
      pathTruncated: (flags & L.flag_path_truncated) !== 0,
      pathUnreadable: (flags & L.flag_path_unreadable) !== 0,
      resolvedPath: resolvedPathBytes ? displayBytes(resolvedPathBytes) : null,
      resolvedPathBytes,
      resolvedPathTruncated: (flags & L.flag_resolved_truncated) !== 0,
      callerChrooted: (flags & L.flag_caller_chrooted) !== 0,
      ret,
      errno: ret < 0 ? errnoName(-ret) : null,
      lsmRet: flags & L.flag_lsm_called ? v.getInt32(s + L.lsm_ret, true) : null,
      probe: this.modes.get(v.getUint8(s + L.mode)) ?? 'tracepoint',
    };
  }
}

/**
 * `chrootedTasks()`: every process whose root is not the root of its mount
 * namespace, right now, read from the kernel by a BPF task iterator
 * (`iter/task`), or from `/proc` where the kernel refuses the iterator.
 * @module
 */
import type { BindingChrootedTask } from './native/binding.cjs';
import { cgroupAttribution, NO_CGROUP, type CgroupAttribution } from './cgroup.js';
import type { Denial } from './doctor.js';
import { check, errorFromBinding } from './errors.js';
import { displayBytes, type ExecutablePath } from './events.js';
import { native } from './native.js';

/** Where {@link chrootedTasks} reads: see {@link ChrootedTasksOptions.source}. */
export type PsSource = 'iterator' | 'proc';

/** The sources {@link ChrootedTasksOptions.source} takes. @internal */
export const PS_SOURCES: readonly string[] = ['auto', 'iterator', 'proc'];

/**
 * One chrooted process: a thread-group leader whose root (`task->fs->root`)
 * is not its mount namespace's root, the kernel's `current_chrooted()`
 * notion. Paths are walked by the kernel to the process's own mount
 * namespace root (from `/proc`: `readlink` of `/proc/PID/{root,cwd,exe}`),
 * kept as raw bytes (`…Bytes`) and shown in the display form of
 * `displayBytes` (bytes that are not UTF-8 as `\xNN`, a backslash as `\\`).
 * The executable ({@link ExecutablePath}): from `/proc`, `exeTruncated` is
 * never set, and `exeUnreachable` only for a memfd. The cgroup's path and
 * the container it names ({@link CgroupAttribution}) are looked up from
 * `cgroupId` as events' are (`cgroupLookup` is `failed` when `cgroupId` is
 * null).
 */
export interface ChrootedTask extends ExecutablePath, CgroupAttribution {
  /** Process id (tgid), as the host's pid namespace sees it: `task->tgid`. */
  readonly pid: number;
  /** Parent's process id: `task->real_parent->tgid` (`PPid` in `/proc/PID/status`). */
  readonly ppid: number;
  /** Real uid as the initial user namespace sees it: `task->cred->uid` (`Uid` in status). */
  readonly uid: number;
  /** `task->comm` (`/proc/PID/comm`), display form; a label the process picks. */
  readonly comm: string;
  /** The comm's raw bytes. */
  readonly commBytes: Buffer;
  /**
   * The root, display form: an absolute path in the process's mount
   * namespace; with {@link rootUnreachable}, the path from the top of the
   * tree the root is in.
   */
  readonly root: string;
  /** The root's raw bytes. */
  readonly rootBytes: Buffer;
  /** The root walk hit its bound (64 steps or 4095 bytes): `root` is the path's tail. Iterator only. */
  readonly rootTruncated: boolean;
  /**
   * The root is in a tree its mount namespace does not reach: a detached
   * one (`umount -l` of the directory it chrooted into) or another
   * namespace's. From `/proc`, only known when the root is that tree's top.
   */
  readonly rootUnreachable: boolean;
  /** The working directory (`task->fs->pwd`), display form; null when unknown. */
  readonly cwd: string | null;
  /** The cwd's raw bytes, or null. */
  readonly cwdBytes: Buffer | null;
  /**
   * Whether walking up from the cwd never passes the root (a chroot without
   * chdir, or a directory kept from before): what `getcwd(3)` reports as
   * `(unreachable)`. Null when it could not be told (no cwd, or more than
   * 64 steps up).
   */
  readonly cwdOutsideRoot: boolean | null;
  /** The cwd walk hit its bound. Iterator only. */
  readonly cwdTruncated: boolean;
  /** The cwd is in a tree the mount namespace does not reach. Iterator only. */
  readonly cwdUnreachable: boolean;
  /**
   * cgroup v2 id: `task->cgroups->dfl_cgrp->kn->id`, the inode number of
   * its cgroup2 directory; from `/proc`, that inode found through
   * `/proc/PID/cgroup`, null when no cgroup2 file system is mounted.
   */
  readonly cgroupId: bigint | null;
  /** Inode number of the mount namespace (`task->nsproxy->mnt_ns->ns.inum`, `/proc/PID/ns/mnt`). */
  readonly mntNs: number;
  /**
   * When the process started, ns since boot (CLOCK_BOOTTIME, like
   * `ChrootEvent.ts`): `task->start_boottime`; from `/proc`, `starttime` of
   * `/proc/PID/stat`, which has clock-tick precision (10 ms at 100 Hz).
   */
  readonly startNs: bigint;
}

/** Options of {@link chrootedTasks}. */
export interface ChrootedTasksOptions {
  /**
   * `auto` (default): the task iterator, or `/proc` where the kernel
   * refuses it (`PsResult.iteratorRefusal` says why); `iterator`: the
   * iterator or an error; `proc`: `/proc` only, no BPF (the tests use it
   * to hold both sources to the same answers).
   */
  readonly source?: 'auto' | PsSource;
}

/** What {@link chrootedTasks} found. */
export interface PsResult {
  /** Where the tasks were read. */
  readonly source: PsSource;
  /**
   * Why the iterator was not used, when `auto` fell back to `/proc`
   * (`code`: `EPERM` (missing privileges or refused at load), `NO_BTF`,
   * `VERIFIER`, `UNSUPPORTED_KERNEL`, …); null otherwise.
   */
  readonly iteratorRefusal: Denial | null;
  /** The chrooted processes, by pid. */
  readonly tasks: readonly ChrootedTask[];
}

/**
 * Every chrooted process now. Loads the eBPF object, runs its `iter/task`
 * program once and unloads everything before resolving (nothing stays
 * loaded); needs root, or CAP_BPF and CAP_PERFMON (the `/proc` fallback
 * sees only the processes this one may inspect).
 * @throws {ChrootGuardError} (as a rejection) with `source: 'iterator'`:
 * `EPERM`, `UNSUPPORTED_KERNEL`, `LOAD_FAILED`; `INVALID_ARGUMENT` at call
 * time.
 */
export async function chrootedTasks(options: ChrootedTasksOptions = {}): Promise<PsResult> {
  const source = options.source ?? 'auto';
  check(PS_SOURCES.includes(source), `source must be auto, iterator or proc; got ${JSON.stringify(source)}`);
  const r = await native().chrootedTasksNative(source);
  if (r.failure) throw errorFromBinding(r.failure);
  return {
    source: r.source as PsSource,
    iteratorRefusal: r.iteratorRefusal
      ? { code: r.iteratorRefusal.code, errno: r.iteratorRefusal.errno ?? null, reason: r.iteratorRefusal.reason, ...(r.iteratorRefusal.verifierLog ? { verifierLog: r.iteratorRefusal.verifierLog } : {}) }
      : null,
    tasks: r.tasks.map(taskOf),
  };
}

function taskOf(t: BindingChrootedTask): ChrootedTask {
  const bytes = (b: Buffer | null | undefined) => (b == null ? null : Buffer.from(b));
  const cwdBytes = bytes(t.cwd);
  const exeBytes = bytes(t.exe);
  const cgroupId = t.cgroupId == null ? null : BigInt(t.cgroupId);
  return {
    pid: t.pid,
    ppid: t.ppid,
    uid: t.uid,
    comm: displayBytes(t.comm),
    commBytes: Buffer.from(t.comm),
    root: displayBytes(t.root),
    rootBytes: Buffer.from(t.root),
    rootTruncated: t.rootTruncated,
    rootUnreachable: t.rootUnreachable,
    cwd: cwdBytes && displayBytes(cwdBytes),
    cwdBytes,
    cwdOutsideRoot: t.cwdOutsideRoot ?? null,
    cwdTruncated: t.cwdTruncated,
    cwdUnreachable: t.cwdUnreachable,
    exe: exeBytes && displayBytes(exeBytes),
    exeBytes,
    exeTruncated: t.exeTruncated,
    exeUnreachable: t.exeUnreachable,
    exeDeleted: t.exeDeleted,
    exeMemfd: t.exeMemfd,
    cgroupId,
    ...(cgroupId === null ? NO_CGROUP : cgroupAttribution(cgroupId)),
    mntNs: t.mntNs,
    startNs: BigInt(t.startNs),
  };
}

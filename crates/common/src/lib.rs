//! Types shared by the chroot-guard eBPF programs (`crates/ebpf`) and user
//! space (`crates/loader`).
//!
//! Everything here is `#[repr(C)]` with explicit padding fields, so the layout
//! the kernel writes is the layout user space reads. Nothing uses `bool` or
//! leaves an implicit hole. The loader's tests compare these layouts with the
//! BTF that `bpf-linker --btf` writes into the built object.
#![no_std]

pub mod policy;
pub mod probes;
pub mod tasks;

/// Bytes reserved for the chroot argument, `PATH_MAX` in the kernel
/// (`include/uapi/linux/limits.h`), terminating NUL included.
pub const PATH_MAX: usize = 4096;

/// Bytes reserved for the resolved new root. The walk writes at most
/// `RESOLVED_MAX - 1` bytes of path.
pub const RESOLVED_MAX: usize = 4096;

/// Bytes reserved for each executable path (`exe`, `parent_exe`). The walk
/// writes at most `EXE_MAX - 1` bytes of path.
pub const EXE_MAX: usize = RESOLVED_MAX;

/// Bytes of an executable path a thread's cache of its own and its
/// parent's executable keeps (a power of two; the kernel side walks longer
/// paths every time). Covers container and Nix store paths with room.
pub const EXE_CACHE_BYTES: usize = 512;

/// Bytes of [`ChrootEvent::data`]: the argument, the resolved path and the
/// two executable paths, plus one more [`EXE_MAX`] that only the verifier
/// needs. Each path is copied at the masked sum of the lengths before it, so
/// the last one may start as late as `4 * 4096 - 1` and run `EXE_MAX - 1`
/// bytes: the verifier checks `max(offset) + max(length) <= size`.
pub const DATA_BYTES: usize = PATH_MAX + RESOLVED_MAX + 3 * EXE_MAX;

/// Longest dentry name the walk copies (`NAME_MAX` in the kernel).
pub const NAME_MAX: usize = 255;

/// Bound on the dentry/mount walk that builds the resolved path: each step
/// moves up one dentry or crosses one mount. Deeper paths are cut short and
/// flagged with [`flags::RESOLVED_TRUNCATED`].
pub const MAX_PATH_DEPTH: u32 = 64;

/// `TASK_COMM_LEN` in the kernel (`include/linux/sched.h`).
pub const COMM_LEN: usize = 16;

/// Default size of the `EVENTS` ring buffer in bytes (a power of two, and a
/// multiple of the page size, as `BPF_MAP_TYPE_RINGBUF` requires).
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;

/// Least time, in ns, between two wakeups of the ring buffer's reader
/// while it keeps up (50 µs: at most 20,000 a second; a ring an eighth
/// full wakes it regardless). A record that comes sooner after a wakeup,
/// or finds a record before it still unread, gets no wakeup and waits
/// until the reader (`crates/loader/src/reader.rs`) looks again: within
/// twice this when records trickle in, within 1 ms in a stream (while the
/// consumer holds batches back the reader leaves them in the ring buffer
/// until the hold ends).
pub const WAKEUP_NS: u64 = 50_000;

/// Threads the legacy object (kernels before 5.12, watch only) keeps a
/// call in flight for at once: its per-thread state is a preallocated hash
/// map of about 20 KiB a thread, 5 MiB in all. A call beyond it is counted
/// as a `PendingFull` loss.
pub const LEGACY_THREADS_MAX: u32 = 256;

/// Size of the per-CPU scratch buffer the path walk writes backwards into:
/// room for [`RESOLVED_MAX`] plus one more maximal name, so a masked offset
/// and a masked length always stay inside the map value (the verifier checks
/// `max(offset) + max(length) <= value size`).
pub const SCRATCH_BYTES: usize = 2 * RESOLVED_MAX;

/// What produced an event. The numbers are stable: they cross the ring
/// buffer and are decoded by `ts/events.ts`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// One `chroot(2)` attempt, emitted when the syscall returns.
    Chroot = 1,
    /// One policy decision, emitted by the `lsm/path_chroot` program before
    /// the call completes (see [`policy`]).
    Decision = 2,
}

/// Attach mode that produced an event. Stable numbers, see [`EventKind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// fentry/fexit (`BPF_PROG_TYPE_TRACING`) on the syscall entry and on
    /// `security_path_chroot`. Needs BTF and ftrace direct calls; 5.5+.
    Fentry = 1,
    /// kprobe/kretprobe on the same two functions. Needs `CONFIG_KPROBES`.
    Kprobe = 2,
    /// The `syscalls:sys_enter_chroot`/`sys_exit_chroot` tracepoints.
    /// Needs `CONFIG_FTRACE_SYSCALLS`; the only family some locked-down
    /// kernels allow.
    Tracepoint = 3,
}

impl Mode {
    /// All modes, best first: the order `auto` tries them in.
    pub const ALL: [Mode; 3] = [Mode::Fentry, Mode::Kprobe, Mode::Tracepoint];

    /// The name used on the command line, in TypeScript and in program names.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Fentry => "fentry",
            Mode::Kprobe => "kprobe",
            Mode::Tracepoint => "tracepoint",
        }
    }
}

/// Bits of [`ChrootEvent::flags`].
pub mod flags {
    /// `path` filled the whole buffer and the user string went on: the
    /// argument was cut at [`crate::PATH_MAX`] - 1 bytes.
    pub const PATH_TRUNCATED: u32 = 1 << 0;
    /// The user string could not be read (`bpf_probe_read_user_str` failed,
    /// for instance a bad pointer, which the syscall answers with EFAULT).
    pub const PATH_UNREADABLE: u32 = 1 << 1;
    /// `resolved` holds the new root as an absolute path.
    pub const RESOLVED_PRESENT: u32 = 1 << 2;
    /// The walk hit [`crate::MAX_PATH_DEPTH`] or [`crate::RESOLVED_MAX`]
    /// before reaching the root of the mount namespace: `resolved` holds the
    /// tail of the path only.
    pub const RESOLVED_TRUNCATED: u32 = 1 << 3;
    /// The walk ended at a root other than the caller's mount namespace's
    /// root mount (`current->nsproxy->mnt_ns->root`): the directory is in a
    /// detached tree (`umount -l`, `open_tree(OPEN_TREE_CLONE)`, `fsmount`)
    /// or in another mount namespace (reached through `/proc/PID/root` or a
    /// directory fd from elsewhere), or it escaped its mount (a dentry that is
    /// its own parent below a mount's root). `resolved` holds the path from
    /// that other root; no path in the caller's namespace names it.
    pub const RESOLVED_UNREACHABLE: u32 = 1 << 12;
    /// `security_path_chroot` was reached and `lsm_ret` holds its result
    /// (fentry and kprobe modes only).
    pub const LSM_CALLED: u32 = 1 << 4;
    /// The caller's root was not its mount namespace's root when it called
    /// chroot(2), the kernel's `current_chrooted()` notion: a chroot from
    /// inside a chroot, or a root left in a detached tree or another
    /// namespace.
    pub const CALLER_CHROOTED: u32 = 1 << 5;
    /// Decisions: the action (`policy::ACTION_*`) sits in these two bits.
    pub const ACTION_SHIFT: u32 = 6;
    /// Mask of the action bits (after shifting).
    pub const ACTION_MASK: u32 = 0b11;
    /// Decisions: the policy was in enforce mode.
    pub const ENFORCING: u32 = 1 << 8;
    /// Decisions: the call was denied (EPERM returned to the caller).
    pub const DENIED: u32 = 1 << 9;
    /// The caller has no executable to identify (`current->mm` or its
    /// `exe_file` is NULL, or a read failed): `exe_dev` and `exe_ino` are
    /// zero, and `exe` conditions held for deny rules only, as for a path
    /// that cannot be judged.
    pub const EXE_UNKNOWN: u32 = 1 << 10;
    /// Decisions: the policy was replaced twice while this decision read
    /// it: the policy's fail action applied and `LsmError` was counted.
    pub const POLICY_TORN: u32 = 1 << 11;
    /// Decisions: the decision could not be made (a kernel read failed, or
    /// no per-thread memory; `lsm_ret` holds the negative errno, `-ENOMEM`
    /// for the memory): the policy's fail action applied, a deny without
    /// memory, and `LsmError` was counted. Only the header of the record is
    /// filled: identity from BPF helpers, no paths.
    pub const INTERNAL_ERROR: u32 = 1 << 13;
    /// Decisions: the caller was in the initial user namespace and the
    /// initial mount namespace (what `initialNamespaces` rules test).
    pub const INITIAL_NAMESPACES: u32 = 1 << 14;
    /// The argument was read after the entry hook: the entry's read failed
    /// (its page not yet faulted in, as for a string literal a forked child
    /// touches first in the call), and it was read again at
    /// `security_path_chroot` or at syscall exit, once the kernel had copied
    /// it in. What chroot(2) used, unless another thread rewrote the memory
    /// in between.
    pub const PATH_READ_LATE: u32 = 1 << 15;
    /// The call reached a new root and the two escape facts below were
    /// computed: on every decision (`lsm/path_chroot`: the hook's `struct
    /// path` against `current->fs->root` and `current->fs->pwd` before the
    /// call), on fentry and kprobe events that reached
    /// `security_path_chroot` (the same comparison there, also for a call
    /// an LSM then denied), and on tracepoint events of successful calls
    /// (`current->fs->root` after the call against the root saved at
    /// entry, and `current->fs->pwd` after the call). Unset, a call that
    /// never had a new root (ENOENT, ENOTDIR, EACCES, EPERM before the LSM
    /// hook, or any failure in tracepoint mode): the facts are absent, not
    /// false, and [`ESCAPES_ROOT`] to [`CWD_OUTSIDE_ROOT_UNKNOWN`] are unset.
    pub const ROOTS_COMPARED: u32 = 1 << 16;
    /// The new root is not at or below the caller's root before the call,
    /// walking up from it across mounts as `d_path()` would, in the
    /// caller's mount namespace: a chroot out of the caller's jail (to a
    /// directory reached through a `..` walk from a cwd left outside, a
    /// kept or received directory fd). A new root not reachable from the
    /// caller's root at all (a detached mount, another namespace's tree)
    /// is not below it either.
    pub const ESCAPES_ROOT: u32 = 1 << 17;
    /// [`crate::MAX_PATH_DEPTH`] steps (or a failed read) were not enough
    /// to tell [`ESCAPES_ROOT`]: the fact is unknown (policies hold it for
    /// deny rules only).
    pub const ESCAPES_ROOT_UNKNOWN: u32 = 1 << 18;
    /// After the call the caller's cwd is not at or below its new root: the
    /// first step of the classic escape (chroot into a subdirectory without
    /// a chdir, then `chdir("..")` climbs past the root). chroot(8) and
    /// every well-behaved tool make this true for the moment between their
    /// chroot(2) and the `chdir("/")` right after it, so alone it is a fact,
    /// not an alarm.
    pub const CWD_OUTSIDE_ROOT: u32 = 1 << 19;
    /// As [`ESCAPES_ROOT_UNKNOWN`], for [`CWD_OUTSIDE_ROOT`].
    pub const CWD_OUTSIDE_ROOT_UNKNOWN: u32 = 1 << 20;
}

/// Bits of [`ChrootEvent::exe_flags`]: the low byte describes `exe`, the
/// same bits shifted by [`exe_flags::PARENT_SHIFT`] describe `parent_exe`.
pub mod exe_flags {
    /// The path was walked: its bytes are in `data` (possibly empty of
    /// meaning, see the other bits). Unset when the task has no `mm` or
    /// `exe_file`, or a read failed.
    pub const PRESENT: u16 = 1 << 0;
    /// The walk hit [`crate::MAX_PATH_DEPTH`] or [`crate::EXE_MAX`]: the
    /// path is its tail only.
    pub const TRUNCATED: u16 = 1 << 1;
    /// The walk ended at a root other than the task's mount namespace's:
    /// the file is in a detached tree, another namespace, or on a kernel
    /// internal mount (a memfd); no path of the task's names it.
    pub const UNREACHABLE: u16 = 1 << 2;
    /// The file was unlinked (`d_unlinked()`: its dentry is unhashed and
    /// not a root), what `/proc/PID/exe` marks `(deleted)`.
    pub const DELETED: u16 = 1 << 3;
    /// The file is a memfd (`memfd_create(2)`, run with `execveat` or
    /// `fexecve`): on a kernel-internal mount (`mount.mnt_ns` is
    /// `MNT_NS_INTERNAL`) and named `memfd:…`. It has no path in any
    /// namespace; the path holds `/memfd:NAME`.
    pub const MEMFD: u16 = 1 << 4;
    /// Shift of the parent's bits.
    pub const PARENT_SHIFT: u16 = 8;
}

/// One chroot attempt, as written to the `EVENTS` ring buffer.
///
/// Filled in three steps, keyed by thread in the `PENDING` hash map:
/// at syscall entry (identity, argument), at `security_path_chroot`
/// (resolved path, fentry/kprobe modes) and at syscall exit (result;
/// resolved path from `current->fs->root` in tracepoint mode).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ChrootEvent {
    /// [`EventKind`] as `u8`.
    pub kind: u8,
    /// [`Mode`] as `u8`: which attach mode produced the event.
    pub mode: u8,
    /// Bytes of the argument at the start of `data`, terminating NUL excluded.
    pub path_len: u16,
    /// Bytes of the resolved path in `data`, right after the argument.
    pub resolved_len: u16,
    /// Decisions: index of the compiled rule that matched, or
    /// [`policy::NO_RULE`] for the default action. Zero otherwise.
    pub rule: u16,
    /// Bytes of the caller's executable path in `data`, after the resolved
    /// path.
    pub exe_len: u16,
    /// Bytes of the parent's executable path in `data`, after `exe`.
    pub parent_exe_len: u16,
    /// [`exe_flags`] bits of `exe` (low byte) and `parent_exe` (high byte).
    pub exe_flags: u16,
    /// Explicit padding, always zero.
    pub _pad0: u16,
    /// [`flags`] bits.
    pub flags: u32,
    /// Thread group id of the caller (`pid` in user-space terms), from
    /// `bpf_get_current_pid_tgid() >> 32`.
    pub pid: u32,
    /// Thread id of the caller, from `bpf_get_current_pid_tgid()`.
    pub tid: u32,
    /// Thread group id of `current->real_parent`.
    pub ppid: u32,
    /// Real uid, from `bpf_get_current_uid_gid()`.
    pub uid: u32,
    /// Real gid, from `bpf_get_current_uid_gid()`.
    pub gid: u32,
    /// Effective uid, from `current->cred->euid`.
    pub euid: u32,
    /// Effective gid, from `current->cred->egid`.
    pub egid: u32,
    /// Inode number of the caller's mount namespace
    /// (`current->nsproxy->mnt_ns->ns.inum`), as in `/proc/PID/ns/mnt`.
    pub mnt_ns: u32,
    /// Inode number of the caller's active pid namespace
    /// (`current->thread_pid->numbers[level].ns->ns.inum`).
    pub pid_ns: u32,
    /// Result of `security_path_chroot` (0 or -errno) when
    /// [`flags::LSM_CALLED`] is set.
    pub lsm_ret: i32,
    /// Decisions: generation of the policy that decided. Zero otherwise.
    pub policy_gen: u32,
    /// Device of the caller's executable, `current->mm->exe_file->f_inode->
    /// i_sb->s_dev` in the kernel's encoding (major << 20 | minor); zero
    /// with [`flags::EXE_UNKNOWN`].
    pub exe_dev: u32,
    /// Inode number of the caller's user namespace
    /// (`current->cred->user_ns->ns.inum`), as in `/proc/PID/ns/user`.
    pub user_ns: u32,
    /// The caller's process id as its own pid namespace sees it
    /// (`current->group_leader->thread_pid->numbers[level].nr`): what
    /// `getpid()` returns inside a container.
    pub ns_pid: u32,
    /// The caller's thread id as its own pid namespace sees it
    /// (`current->thread_pid->numbers[level].nr`).
    pub ns_tid: u32,
    /// Syscall result: 0 or -errno.
    pub ret: i64,
    /// `bpf_ktime_get_boot_ns()` at syscall entry: ns since boot,
    /// CLOCK_BOOTTIME.
    pub enter_ns: u64,
    /// `bpf_ktime_get_boot_ns()` at syscall exit: ns since boot,
    /// CLOCK_BOOTTIME.
    pub ts_ns: u64,
    /// cgroup v2 id of the caller, from `bpf_get_current_cgroup_id()`.
    pub cgroup_id: u64,
    /// Inode number of the caller's executable,
    /// `current->mm->exe_file->f_inode->i_ino`; zero with
    /// [`flags::EXE_UNKNOWN`].
    pub exe_ino: u64,
    /// User address of the argument, kept for a late read
    /// ([`flags::PATH_READ_LATE`]).
    pub arg_addr: u64,
    /// `current->comm` at syscall entry, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// `current->real_parent->comm` at syscall exit (at the LSM hook for
    /// decisions), NUL padded.
    pub parent_comm: [u8; COMM_LEN],
    /// `path_len` bytes of the argument as passed to chroot(2), then
    /// `resolved_len` bytes of the new root as an absolute path in the
    /// caller's mount namespace, then `exe_len` bytes of the caller's
    /// executable (`current->mm->exe_file`, walked the same way) and
    /// `parent_exe_len` bytes of the parent's
    /// (`current->real_parent->mm->exe_file`, in the parent's mount
    /// namespace). Only the used bytes go to the ring buffer
    /// ([`ChrootEvent::record_len`]): a record is the header
    /// ([`EVENT_HEADER_BYTES`]) plus its paths, not the whole 20 KiB.
    pub data: [u8; DATA_BYTES],
}

/// Bytes of an event before `data`: the fixed part of every record.
pub const EVENT_HEADER_BYTES: usize = core::mem::offset_of!(ChrootEvent, data);

impl ChrootEvent {
    /// Bytes of the record as written to the ring buffer: the header and the
    /// used part of `data`. Masked, so the verifier sees a bound no larger
    /// than the struct.
    #[inline(always)]
    pub fn record_len(&self) -> usize {
        EVENT_HEADER_BYTES
            + (self.path_len as usize & (PATH_MAX - 1))
            + (self.resolved_len as usize & (RESOLVED_MAX - 1))
            + (self.exe_len as usize & (EXE_MAX - 1))
            + (self.parent_exe_len as usize & (EXE_MAX - 1))
    }
}

/// Indexes of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `bpf_ringbuf_output` failed: the ring buffer was full and the event
    /// was lost.
    RingBufFull = 0,
    /// Syscall entry could not get the thread's in-flight event
    /// (`CG_PENDING` task storage: the kernel could not allocate it, or found
    /// task storage busy on this CPU): the call was not traced.
    PendingFull = 1,
    /// The LSM program could not evaluate the policy (an internal read
    /// failed, or the policy was torn): the policy's fail action applied.
    LsmError = 2,
    /// Allow decisions not written: the ring buffer was full, or at least
    /// half full, which is kept for deny and audit decisions (so a flood of
    /// allowed calls cannot push them out).
    AllowLost = 3,
    /// Deny decisions lost: the ring buffer was full.
    DenyLost = 4,
    /// Audit decisions lost: the ring buffer was full.
    AuditLost = 5,
}

/// Number of entries of the `COUNTERS` array.
pub const COUNTER_COUNT: u32 = 6;

/// Offsets (bytes) of the kernel struct fields the programs read, taken from
/// the running kernel's BTF at load time and passed in the read-only global
/// `OFFSETS`. Rust eBPF code gets no CO-RE relocations from the compiler, so
/// this is how one object runs on 6.1 and 6.18 alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.fs`
    pub task_fs: u32,
    /// `task_struct.nsproxy`
    pub task_nsproxy: u32,
    /// `task_struct.cred`
    pub task_cred: u32,
    /// `task_struct.thread_pid`
    pub task_thread_pid: u32,
    /// `fs_struct.root`
    pub fs_root: u32,
    /// `path.mnt`
    pub path_mnt: u32,
    /// `path.dentry`
    pub path_dentry: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_name` (a `struct qstr`)
    pub dentry_name: u32,
    /// `qstr.len` (inside an anonymous union)
    pub qstr_len: u32,
    /// `qstr.name`
    pub qstr_name: u32,
    /// `mount.mnt` (the embedded `struct vfsmount`)
    pub mount_mnt: u32,
    /// `mount.mnt_parent`
    pub mount_parent: u32,
    /// `mount.mnt_mountpoint`
    pub mount_mountpoint: u32,
    /// `vfsmount.mnt_root`
    pub vfsmount_root: u32,
    /// `nsproxy.mnt_ns`
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace.ns` plus `ns_common.inum`
    pub mnt_ns_inum: u32,
    /// `pid.level`
    pub pid_level: u32,
    /// `pid.numbers`
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`
    pub upid_size: u32,
    /// `upid.ns`
    pub upid_ns: u32,
    /// `upid.nr`
    pub upid_nr: u32,
    /// `task_struct.group_leader`
    pub task_group_leader: u32,
    /// `pid_namespace.ns` plus `ns_common.inum`
    pub pid_ns_inum: u32,
    /// `cred.euid`
    pub cred_euid: u32,
    /// `cred.egid`
    pub cred_egid: u32,
    /// Offset in `struct pt_regs` of the first syscall argument
    /// (`di` on x86_64, `regs[0]` on arm64).
    pub pt_regs_arg0: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `mnt_namespace.root`: the namespace's root mount, where a path walk
    /// must end for the path to be reachable from the caller.
    pub mnt_ns_root: u32,
    /// `cred.user_ns`
    pub cred_user_ns: u32,
    /// `user_namespace.ns` plus `ns_common.inum`
    pub user_ns_inum: u32,
    /// `file.f_inode`
    pub file_f_inode: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// Offset in `struct pt_regs` of the first argument of a 32-bit compat
    /// syscall (`bx` on x86_64; the native register elsewhere).
    pub pt_regs_compat_arg0: u32,
    /// Offset in `struct pt_regs` of the syscall number (`orig_ax` on
    /// x86_64, the 32-bit `syscallno` on arm64).
    pub pt_regs_syscall_nr: u32,
    /// `task_struct.thread_info` plus the word that marks a 32-bit compat
    /// syscall: `thread_info.status` on x86_64 (`TS_COMPAT`, set for the
    /// syscall in progress), `thread_info.flags` on arm64 (`TIF_32BIT`, an
    /// AArch32 task, whose every syscall is compat).
    pub task_ti_compat: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `file.f_path`
    pub file_f_path: u32,
    /// `mount.mnt_ns`
    pub mount_mnt_ns: u32,
    /// `dentry.d_hash` plus `hlist_bl_node.pprev`: NULL when the dentry is
    /// unhashed.
    pub dentry_hash_pprev: u32,
    /// `cred.uid`
    pub cred_uid: u32,
    /// `cred.gid`
    pub cred_gid: u32,
    /// `task_struct.pid`: the thread id.
    pub task_pid: u32,
    /// `task_struct.start_boottime`
    pub task_start_boottime: u32,
    /// `task_struct.self_exec_id`: one more on each execve(2) of the task.
    pub task_self_exec_id: u32,
    /// `fs_struct.pwd`
    pub fs_pwd: u32,
    /// `task_struct.cgroups`
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id`
    pub kernfs_node_id: u32,
    /// Not an offset: 1 when the kernel has the `bpf_loop` helper (5.17+,
    /// a function in its BTF). The path walks then run their steps in it
    /// (`kernel::steps`), and fentry/fexit programs wait out a busy task
    /// storage (`TaskStorage::current_waiting`) instead of losing the
    /// call's state; without it those branches are dead and the verifier
    /// skips them.
    pub has_bpf_loop: u32,
}

/// Which calls the programs report, set at load time in the read-only global
/// `FILTER`. The verifier sees the frozen values, so an unset filter costs
/// nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// [`filter_flags`] bits: which of the fields below apply.
    pub flags: u32,
    /// Report only this thread group id.
    pub pid: u32,
    /// Report only this real uid.
    pub uid: u32,
    /// Explicit padding, always zero.
    pub _pad0: u32,
    /// Report only this comm (NUL padded, compared over all 16 bytes).
    pub comm: [u8; COMM_LEN],
}

/// Key of `CG_STACK_COUNTS` (`chroot-guard stacks`): a kernel stack id
/// (`bpf_get_stackid`, `u32::MAX` for a hit without kernel frames) and the
/// link register at an arm64 kprobe. At a kprobe on a function's first
/// instruction arm64's frame-pointer unwinder starts from the caller's
/// frame record, so the stack skips the probed function's caller, whose
/// return address is still in the link register (`regs[30]`); user space
/// puts it back after the first frame. 0 everywhere else.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackKey {
    /// The stack id.
    pub id: u32,
    /// Explicit padding (always 0).
    pub _pad: u32,
    /// The link register at an arm64 kprobe, else 0.
    pub lr: u64,
}

/// Bits of [`Filter::flags`].
pub mod filter_flags {
    /// [`crate::Filter::pid`] applies.
    pub const PID: u32 = 1 << 0;
    /// [`crate::Filter::uid`] applies.
    pub const UID: u32 = 1 << 1;
    /// [`crate::Filter::comm`] applies.
    pub const COMM: u32 = 1 << 2;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with
    // explicit padding: every bit pattern is valid and there are no holes.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::StackKey {}
}

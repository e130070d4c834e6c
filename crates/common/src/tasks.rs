//! The record of `chroot-guard ps`: one chrooted process, as the `iter/task`
//! program (`crates/ebpf/src/tasks.rs`) writes it with `bpf_seq_write` and
//! the loader (`crates/loader/src/ps.rs`) reads it from the iterator's file.
//!
//! Records are variable length: the header, then `root_len` bytes of the
//! root, `cwd_len` of the working directory and `exe_len` of the
//! executable, back to back, with no padding between records.

use crate::{COMM_LEN, RESOLVED_MAX};

/// Bytes reserved for each of the three paths: the walk writes at most
/// `TASK_PATH_MAX - 1` bytes of path (the same bound as the resolved root
/// of a chroot event, [`RESOLVED_MAX`]).
pub const TASK_PATH_MAX: usize = RESOLVED_MAX;

/// Bytes of [`TaskRecord::data`]. Each path is copied at the masked sum of
/// the lengths before it: the root at 0, the cwd at most at
/// `TASK_PATH_MAX - 1`, the exe at most at `2 * TASK_PATH_MAX - 1`, each
/// running at most `TASK_PATH_MAX - 1` bytes; the verifier checks
/// `max(offset) + max(length) <= size`, so three path buffers hold it.
pub const TASK_DATA_BYTES: usize = 3 * TASK_PATH_MAX;

/// Bits of [`TaskRecord::flags`].
pub mod task_flags {
    /// The root walk hit the depth or byte bound before a root: `root`
    /// holds the tail of the path only.
    pub const ROOT_TRUNCATED: u32 = 1 << 0;
    /// The root walk ended at a root other than the task's mount
    /// namespace's (`task->nsproxy->mnt_ns->root`): the root is in a
    /// detached tree (`umount -l` of the directory it chrooted into) or in
    /// another namespace's tree; `root` is the path from that other root.
    pub const ROOT_UNREACHABLE: u32 = 1 << 1;
    /// `task->fs->pwd` was walked: `cwd` holds it.
    pub const CWD_PRESENT: u32 = 1 << 2;
    /// The cwd walk hit a bound: `cwd` holds its tail.
    pub const CWD_TRUNCATED: u32 = 1 << 3;
    /// The cwd walk ended at another root than the task's namespace's.
    pub const CWD_UNREACHABLE: u32 = 1 << 4;
    /// Walking up from the cwd never passes the task's root: the cwd is
    /// outside the root (a `chroot` without `chdir`, or a directory fd
    /// kept from before). What `getcwd(3)` answers with `(unreachable)`.
    pub const CWD_OUTSIDE_ROOT: u32 = 1 << 5;
    /// Walking up from the cwd hit the depth bound before either the root
    /// or a mount tree's top: [`CWD_OUTSIDE_ROOT`] could not be told and is
    /// unset.
    pub const CWD_BELOW_UNKNOWN: u32 = 1 << 6;
}

/// One chrooted thread-group leader: a task whose root is not its mount
/// namespace's root (`is_chrooted` in `crates/ebpf/src/kernel.rs`, the
/// kernel's `current_chrooted()` notion), read by the `iter/task` program.
/// Only the used bytes of `data` are written ([`TaskRecord::record_len`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TaskRecord {
    /// Process id, `task->tgid` (the task is its group's leader).
    pub tgid: u32,
    /// Parent's process id, `task->real_parent->tgid`.
    pub ppid: u32,
    /// Real uid, `task->cred->uid`, as the initial user namespace sees it.
    pub uid: u32,
    /// Inode number of the task's mount namespace
    /// (`task->nsproxy->mnt_ns->ns.inum`), as in `/proc/PID/ns/mnt`.
    pub mnt_ns: u32,
    /// [`task_flags`] bits.
    pub flags: u32,
    /// Bytes of the root's path at the start of `data`.
    pub root_len: u16,
    /// Bytes of the cwd's path, after the root.
    pub cwd_len: u16,
    /// Bytes of the executable's path, after the cwd.
    pub exe_len: u16,
    /// [`crate::exe_flags`] bits of the executable (the low byte only).
    pub exe_flags: u16,
    /// Explicit padding, always zero.
    pub _pad0: u32,
    /// When the process started: `task->start_boottime`, ns since boot
    /// (CLOCK_BOOTTIME, counting suspend), what `/proc/PID/stat`'s
    /// `starttime` gives in clock ticks.
    pub start_ns: u64,
    /// cgroup v2 id of the task, `task->cgroups->dfl_cgrp->kn->id` (what
    /// `bpf_get_current_cgroup_id()` reads for `current`; the inode number
    /// of its cgroup2 directory).
    pub cgroup_id: u64,
    /// `task->comm`, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// `root_len` bytes of `task->fs->root`, `cwd_len` of `task->fs->pwd`
    /// and `exe_len` of `task->mm->exe_file`, each walked to the task's
    /// own mount namespace root (see `walk` in `crates/ebpf/src/kernel.rs`).
    pub data: [u8; TASK_DATA_BYTES],
}

/// Bytes of a [`TaskRecord`] before `data`.
pub const TASK_HEADER_BYTES: usize = core::mem::offset_of!(TaskRecord, data);

impl TaskRecord {
    /// Bytes of the record as written: the header and the used part of
    /// `data`. Masked, so the verifier sees a bound within the struct.
    #[inline(always)]
    pub fn record_len(&self) -> usize {
        TASK_HEADER_BYTES
            + (self.root_len as usize & (TASK_PATH_MAX - 1))
            + (self.cwd_len as usize & (TASK_PATH_MAX - 1))
            + (self.exe_len as usize & (TASK_PATH_MAX - 1))
    }
}

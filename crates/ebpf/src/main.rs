//! chroot-guard's eBPF programs, one object for every attach mode.
//!
//! Each mode has an entry hook, a hook at `security_path_chroot` where the
//! kernel supports one, and an exit hook. They share the logic in
//! [`event`]: entry fills the thread's [`ChrootEvent`] in `CG_PENDING`
//! (task storage), the LSM hooks add the resolved root and verdict, exit
//! adds the result and copies the used part of the event to the
//! `CG_EVENTS` ring buffer.
//!
//! The program list lives in `chroot_guard_common::probes` (`PROBES`,
//! `SERVICE_PROGRAMS`).
#![no_std]
#![no_main]

mod event;
mod fentry;
mod kernel;
mod kprobe;
#[cfg(not(feature = "legacy"))]
mod lsm;
mod stacks;
mod task_storage;
mod tasks;
mod tracepoint;

use aya_ebpf::{
    btf_maps::{Array, PerCpuArray, RingBuf},
    macros::btf_map,
};
use task_storage::TaskStorage;
use chroot_guard_common::{
    ChrootEvent, Filter, KernelOffsets, COUNTER_COUNT, DEFAULT_RING_BUFFER_BYTES, SCRATCH_BYTES,
};

// Maps are BTF-defined (`.maps`), so key and value types travel in BTF:
// `bpftool map dump` prints typed values and the loader's layout test reads
// `ChrootEvent` back from the object.

/// Events to user space. The loader resizes it (`ringBufferBytes`).
#[btf_map]
static CG_EVENTS: RingBuf<ChrootEvent, { DEFAULT_RING_BUFFER_BYTES as usize }> = RingBuf::new();

/// When the reader was last woken (ns since boot), see `event::send`.
#[btf_map]
static CG_WAKEUP: Array<u64, 1> = Array::new();

/// The call each thread has in flight: an event (about 20 KiB) and what
/// tracepoint mode keeps from entry to exit, allocated zeroed on the
/// thread's first chroot and reused for the next, freed when the thread
/// exits or the programs unload (in the legacy object: created per call,
/// deleted at exit, see `task_storage`). A value is in flight while its
/// event's `kind` is set: entry clears the header and sets it, exit clears
/// it.
#[btf_map]
static CG_PENDING: TaskStorage<event::Pending> = TaskStorage::new();

/// What each thread keeps between its calls (`kernel::CallerCache`, about
/// 1.1 KiB: its pid namespace ids and the last walks of its own and its
/// parent's executable path), allocated on its first chroot and kept like
/// `CG_PENDING`. Not in the legacy object, whose calls read and walk
/// everything each time.
#[cfg(not(feature = "legacy"))]
#[btf_map]
static CG_CALLER_CACHE: TaskStorage<kernel::CallerCache> = TaskStorage::new();

/// Per-CPU buffer the path walk writes backwards into, for programs that
/// run with preemption off (tracepoints, kprobes).
#[btf_map]
pub(crate) static CG_SCRATCH: PerCpuArray<[u8; SCRATCH_BYTES], 1> = PerCpuArray::new();

/// Per-thread walk buffers for programs that can be preempted (fentry/fexit
/// and LSM run under `migrate_disable()` only, so on a preemptible kernel a
/// second chroot on the same CPU could share a per-CPU buffer). Allocated
/// on the thread's first walk and kept, like `CG_PENDING`. Not in the
/// legacy object: before 5.11, `migrate_disable()` is `preempt_disable()`
/// outside PREEMPT_RT, so fentry/fexit programs are not preemptible there
/// and use `CG_SCRATCH`.
#[cfg(not(feature = "legacy"))]
#[btf_map]
pub(crate) static CG_THREAD_SCRATCH: TaskStorage<[u8; SCRATCH_BYTES]> = TaskStorage::new();

/// Per-CPU counters, indexed by `chroot_guard_common::Counter`.
#[btf_map]
static CG_COUNTERS: PerCpuArray<u64, { COUNTER_COUNT as usize }> = PerCpuArray::new();

/// Field offsets of the running kernel, set by the loader from BTF.
#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_real_parent: 0,
    task_tgid: 0,
    task_fs: 0,
    task_nsproxy: 0,
    task_cred: 0,
    task_thread_pid: 0,
    fs_root: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_parent: 0,
    dentry_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    vfsmount_root: 0,
    nsproxy_mnt_ns: 0,
    mnt_ns_inum: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_ns: 0,
    upid_nr: 0,
    task_group_leader: 0,
    pid_ns_inum: 0,
    cred_euid: 0,
    cred_egid: 0,
    pt_regs_arg0: 0,
    task_mm: 0,
    mm_exe_file: 0,
    mnt_ns_root: 0,
    cred_user_ns: 0,
    user_ns_inum: 0,
    file_f_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    pt_regs_compat_arg0: 0,
    pt_regs_syscall_nr: 0,
    task_ti_compat: 0,
    task_comm: 0,
    file_f_path: 0,
    mount_mnt_ns: 0,
    dentry_hash_pprev: 0,
    cred_uid: 0,
    cred_gid: 0,
    task_pid: 0,
    task_start_boottime: 0,
    task_self_exec_id: 0,
    fs_pwd: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    has_bpf_loop: 0,
};

/// Which calls to report, set by the loader.
#[no_mangle]
static FILTER: Filter = Filter { flags: 0, pid: 0, uid: 0, _pad0: 0, comm: [0; 16] };

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";

//! The life of one event, shared by every attach mode: [`begin`] at syscall
//! entry, [`resolve`] and [`lsm_return`] at `security_path_chroot`,
//! [`finish`] at syscall exit.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::generated,
};
use chroot_guard_common::{
    filter_flags, flags, ChrootEvent, Counter, EventKind, Mode, EVENT_HEADER_BYTES, PATH_MAX, WAKEUP_NS,
};

use crate::{
    kernel::{self, CallerCache, Error, Scratch},
    CG_COUNTERS, CG_EVENTS, CG_PENDING, CG_WAKEUP, FILTER,
};
#[cfg(not(feature = "legacy"))]
use crate::CG_CALLER_CACHE;

/// Copies the used part of `ev` (header and paths) to the ring buffer.
///
/// Wakeup policy: the kernel's default wakes the reader for a record
/// whenever it had caught up, which at high rates means a wakeup (an
/// `irq_work` and a context switch) per record. Here a record wakes the
/// reader when the reader had caught up (the ring was empty: latency
/// matters, the reader is idle) and the last wakeup is older than
/// [`WAKEUP_NS`], or when the ring is an eighth full (throughput matters).
/// Records in between accumulate until the reader looks again: within
/// 2 × [`WAKEUP_NS`] when records trickle in, within 1 ms in a stream.
///
/// The time of the send is the record's `ts_ns`, which every caller reads
/// right before: a clock read costs about 60 ns on the development host,
/// and a stale time could hold back a wakeup the reader needs.
#[inline(always)]
pub fn send(ev: &ChrootEvent) -> Result<(), i32> {
    let ring = core::ptr::from_ref(&CG_EVENTS).cast_mut().cast();
    let now = ev.ts_ns;
    // SAFETY: helpers without preconditions beyond a ring buffer map.
    let (avail, size) = unsafe {
        (
            generated::bpf_ringbuf_query(ring, u64::from(BPF_RB_AVAIL_DATA)),
            generated::bpf_ringbuf_query(ring, u64::from(BPF_RB_RING_SIZE)),
        )
    };
    let mut flags = u64::from(BPF_RB_NO_WAKEUP);
    if let Some(last) = CG_WAKEUP.get_ptr_mut(0) {
        // SAFETY: a map value; a race between CPUs only adds a wakeup.
        unsafe {
            if (avail == 0 && now.wrapping_sub(*last) >= WAKEUP_NS) || avail.saturating_mul(8) >= size {
                *last = now;
                flags = u64::from(BPF_RB_FORCE_WAKEUP);
            }
        }
    }
    // SAFETY: `record_len()` is at most the size of the event.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const ChrootEvent).cast::<u8>(), ev.record_len()) };
    CG_EVENTS.output_untyped::<[u8]>(bytes, flags)
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = CG_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe { *c += 1 };
    }
}

/// Whether the load-time `FILTER` lets this caller through.
#[inline(always)]
fn wanted(tgid: u32, uid: u32, comm: &[u8; 16]) -> bool {
    // SAFETY: plain reads of an immutable static (frozen .rodata).
    let f = unsafe { core::ptr::read_volatile(&FILTER) };
    if f.flags & filter_flags::PID != 0 && f.pid != tgid {
        return false;
    }
    if f.flags & filter_flags::UID != 0 && f.uid != uid {
        return false;
    }
    if f.flags & filter_flags::COMM != 0 && f.comm != *comm {
        return false;
    }
    true
}

/// A thread's call in flight (`CG_PENDING`): the event, and the caller's
/// root at entry, which tracepoint mode compares with the root after the
/// call ([`flags::ESCAPES_ROOT`]) since no hook there sees the new root
/// before it is set. Never sent: the pointers stay in the kernel.
#[repr(C)]
pub struct Pending {
    /// The event being filled.
    pub event: ChrootEvent,
    /// `current->fs->root.mnt` at entry (tracepoint mode), or null. Only
    /// compared, never followed: the call drops its reference, so the mount
    /// and dentry may be freed by exit (only a reuse of one of the addresses
    /// as an ancestor of the new root within the one call could mislead the
    /// comparison).
    pub root_mnt: *const u8,
    /// `current->fs->root.dentry` at entry, as `root_mnt`.
    pub root_dentry: *const u8,
}

/// The current thread's pending call, if its entry was seen. `kind` says
/// whether the program is preemptible ([`Scratch::PerThread`]): there a
/// busy task storage is waited out (the value is created if absent, zeroed,
/// so that no wait is for a value that is not there); otherwise one lookup.
#[inline(always)]
fn pending_call(kind: Scratch) -> Option<&'static mut Pending> {
    let p = match kind {
        Scratch::PerThread => kernel::preemptible_get(&CG_PENDING, true)?,
        _ => CG_PENDING.current(false)?,
    };
    // SAFETY: task storage stays valid while the program runs; only this
    // thread's programs touch its value, one at a time.
    let p = unsafe { &mut *p };
    (p.event.kind != 0).then_some(p)
}

/// The current thread's pending event, if its entry was seen.
#[inline(always)]
fn pending(kind: Scratch) -> Option<&'static mut ChrootEvent> {
    pending_call(kind).map(|p| &mut p.event)
}

/// Clears the header of `ev` (a reused value: only the header must start
/// zeroed; `data` is written before it is read, and only its used part is
/// sent).
#[inline(always)]
pub fn clear_header(ev: &mut ChrootEvent) {
    // SAFETY: the header is the first EVENT_HEADER_BYTES of `ev`.
    unsafe { clear_header_at((ev as *mut ChrootEvent).cast::<u64>()) };
}

/// Zeroes the `EVENT_HEADER_BYTES` at `p` a word at a time. Written out
/// because `write_bytes` becomes a call to the BPF target's `memset`, a
/// loop storing one byte per turn: a few hundred instructions a call.
///
/// # Safety
/// `p` must be 8-byte aligned with `EVENT_HEADER_BYTES` writable bytes.
#[inline(always)]
pub unsafe fn clear_header_at(p: *mut u64) {
    const _: () = assert!(EVENT_HEADER_BYTES % 8 == 0 && core::mem::align_of::<ChrootEvent>() >= 8);
    for i in 0..EVENT_HEADER_BYTES / 8 {
        // Volatile, so LLVM cannot fold the stores back into a memset.
        // SAFETY: in bounds, see above.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
    }
}

/// Syscall entry: starts this thread's event (its task storage, header
/// cleared) with the caller's identity and the argument read from user
/// memory at `filename`.
#[inline(always)]
pub fn begin(filename: *const u8, mode: Mode) -> Result<(), Error> {
    // Before any branch: see `kernel::Task`.
    let task = kernel::Task::current();
    let cred = kernel::cred(&task);
    let (pid_tgid, uid_gid) = kernel::current_ids(&task, cred);
    let tgid = (pid_tgid >> 32) as u32;
    let comm = kernel::current_comm()?;
    if !wanted(tgid, uid_gid as u32, &comm) {
        return Ok(());
    }
    let got = if mode == Mode::Fentry { kernel::preemptible_get(&CG_PENDING, true) } else { CG_PENDING.current(true) };
    let Some(ev) = got else {
        count(Counter::PendingFull);
        return Ok(());
    };
    // SAFETY: this thread's value, see `pending`.
    let call = unsafe { &mut *ev };
    let root = kernel::fs_root(&task);
    (call.root_mnt, call.root_dentry) = (core::ptr::null(), core::ptr::null());
    if mode == Mode::Tracepoint {
        if let Ok(root) = root {
            (call.root_mnt, call.root_dentry) = root;
        }
    }
    let ev = &mut call.event;
    clear_header(ev);
    ev.kind = EventKind::Chroot as u8;
    ev.mode = mode as u8;
    fill_identity(ev, &task, cred, pid_tgid, uid_gid, comm, root, caller_cache().map(|c| &mut c.ids));
    ev.arg_addr = filename as u64;
    read_argument(ev, filename);
    Ok(())
}

/// Reads the argument again if the entry hook could not: by now the kernel
/// has copied it in (`getname`), faulting its page in.
#[inline(always)]
fn read_argument_late(ev: &mut ChrootEvent) {
    if ev.flags & flags::PATH_UNREADABLE != 0 && ev.flags & flags::RESOLVED_PRESENT == 0 {
        read_argument(ev, ev.arg_addr as *const u8);
        if ev.flags & flags::PATH_UNREADABLE == 0 {
            ev.flags |= flags::PATH_READ_LATE;
        }
    }
}

/// Fills who is calling: ids, comm, time, cgroup, namespaces, the
/// executable's identity, and whether the caller is already chrooted, from
/// `cred` ([`kernel::cred`]), `pid_tgid` and `uid_gid`
/// ([`kernel::current_ids`]) and `root`, the caller's [`kernel::fs_root`],
/// which the caller has read for its own use too. Reads of kernel memory are best effort: a failed read
/// leaves the field zero.
#[inline(always)]
pub fn fill_identity(
    ev: &mut ChrootEvent,
    task: &kernel::Task,
    cred: *const u8,
    pid_tgid: u64,
    uid_gid: u64,
    comm: [u8; 16],
    root: Result<(*const u8, *const u8), Error>,
    ids: Option<&mut kernel::IdsCached>,
) {
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.comm = comm;
    // SAFETY: helpers without preconditions.
    unsafe {
        ev.enter_ns = generated::bpf_ktime_get_boot_ns();
        ev.cgroup_id = generated::bpf_get_current_cgroup_id();
    }
    ev.ppid = kernel::parent_tgid(task);
    (ev.euid, ev.egid) = kernel::effective_ids(cred);
    ev.mnt_ns = kernel::mnt_ns_inum(task);
    ev.user_ns = kernel::user_ns_inum(cred);
    if let Ok((ns, pid, tid)) = kernel::pid_ns_ids_cached(task, ids) {
        ev.pid_ns = ns;
        ev.ns_pid = pid;
        ev.ns_tid = tid;
    }
    match kernel::exe_identity(task) {
        Ok((dev, ino)) => {
            ev.exe_dev = dev;
            ev.exe_ino = ino;
        }
        Err(_) => ev.flags |= flags::EXE_UNKNOWN,
    }
    if root.and_then(|r| kernel::is_chrooted_at(task, r)).unwrap_or(false) {
        ev.flags |= flags::CALLER_CHROOTED;
    }
}

/// This thread's [`kernel::CallerCache`], created on its first call; `None`
/// when the kernel could not allocate it or found the storage busy. One
/// try in every program type: unlike the call's own state, the cache is
/// optional (without it the call reads and walks everything), so a busy
/// storage is not waited out. Always `None` in the legacy object.
#[inline(always)]
pub fn caller_cache() -> Option<&'static mut CallerCache> {
    #[cfg(feature = "legacy")]
    return None;
    // SAFETY: this thread's value, touched by one of its programs at a time.
    #[cfg(not(feature = "legacy"))]
    return CG_CALLER_CACHE.current(true).map(|c| unsafe { &mut *c });
}

/// Adds who ran the call, once the paths before them are final: the
/// caller's executable path, its parent's comm and executable path
/// ([`kernel::exe_into`], from `cache` when it holds them). Best effort:
/// what cannot be read is left out and its
/// [`chroot_guard_common::exe_flags::PRESENT`] bit stays unset.
#[inline(always)]
pub fn attribute(kind: Scratch, ev: &mut ChrootEvent, task: &kernel::Task, parent: kernel::ExeOwner, cache: Option<&mut CallerCache>) {
    let (own, parent_cache) = match cache {
        Some(c) => (Some(&mut c.own), Some(&mut c.parent)),
        None => (None, None),
    };
    let _ = kernel::exe_into(kind, ev, kernel::ExeOwner::own(task), false, own);
    if let Ok(comm) = kernel::comm(parent.task) {
        ev.parent_comm = comm;
    }
    let _ = kernel::exe_into(kind, ev, parent, true, parent_cache);
}

/// Reads the chroot(2) argument from user memory into `ev.path`, setting
/// [`flags::PATH_UNREADABLE`] when it cannot and clearing it when it can.
#[inline(always)]
pub fn read_argument(ev: &mut ChrootEvent, filename: *const u8) {
    // SAFETY: the helper checks the user address and bounds the write.
    let n = unsafe {
        generated::bpf_probe_read_user_str(ev.data.as_mut_ptr().cast(), PATH_MAX as u32, filename.cast())
    };
    if n <= 0 {
        ev.flags |= flags::PATH_UNREADABLE;
        return;
    }
    ev.flags &= !flags::PATH_UNREADABLE;
    let n = (n as u32).min(PATH_MAX as u32);
    ev.path_len = (n - 1) as u16;
    if n == PATH_MAX as u32 {
        // The buffer is full: the string went on if the next byte is not NUL.
        let mut next = 0u8;
        // SAFETY: as above, one byte.
        let r = unsafe {
            generated::bpf_probe_read_user(
                (&raw mut next).cast(),
                1,
                filename.wrapping_add(PATH_MAX - 1).cast(),
            )
        };
        if r == 0 && next != 0 {
            ev.flags |= flags::PATH_TRUNCATED;
        }
    }
}

/// `security_path_chroot(path)` entry: records the resolved new root and
/// the escape facts ([`kernel::root_facts`]: `path` against the caller's
/// `current->fs->root` and `current->fs->pwd`, which the call has not
/// changed yet). `kind`: the scratch buffer the calling program type may
/// use.
#[inline(always)]
pub fn resolve(kind: Scratch, path: *const u8) -> Result<(), Error> {
    // Before any branch: see `kernel::Task`.
    let task = kernel::Task::current();
    let Some(ev) = pending(kind) else { return Ok(()) };
    read_argument_late(ev);
    let (vfsmnt, dentry) = kernel::path_parts(path)?;
    if let Ok(root) = kernel::fs_root(&task) {
        ev.flags |= kernel::root_facts(root, (vfsmnt, dentry), &task);
    }
    kernel::resolve_into(kind, ev, &task, vfsmnt, dentry).map(|_| ())
}

/// `security_path_chroot` return: records the LSM verdict. `kind`: the
/// scratch buffer the calling program type may use (its preemptibility).
#[inline(always)]
pub fn lsm_return(kind: Scratch, ret: i32) -> Result<(), Error> {
    let Some(ev) = pending(kind) else { return Ok(()) };
    ev.lsm_ret = ret;
    ev.flags |= flags::LSM_CALLED;
    Ok(())
}

/// Syscall exit: records the result and sends the event. In tracepoint mode
/// a successful call's new root is read from `current->fs->root`, and the
/// escape facts compare it with the root saved at entry and with
/// `current->fs->pwd`.
#[inline(always)]
pub fn finish(kind: Scratch, ret: i64) -> Result<(), Error> {
    // Before any branch: see `kernel::Task`.
    let task = kernel::Task::current();
    let parent = kernel::ExeOwner::parent(&task);
    let Some(call) = pending_call(kind) else { return Ok(()) };
    let old_root = (call.root_mnt, call.root_dentry);
    let ev = &mut call.event;
    read_argument_late(ev);
    ev.ret = ret;
    if ret == 0 && ev.flags & flags::RESOLVED_PRESENT == 0 {
        if let Ok(new_root) = kernel::fs_root(&task) {
            if ev.flags & flags::ROOTS_COMPARED == 0 && !old_root.0.is_null() {
                ev.flags |= kernel::root_facts(old_root, new_root, &task);
            }
            // A failed walk leaves the path absent; the event still goes out.
            let _ = kernel::resolve_into(kind, ev, &task, new_root.0, new_root.1);
        }
    }
    attribute(kind, ev, &task, parent, caller_cache());
    // Last, for `send`'s clock: a fentry/fexit program can be preempted
    // during the walks above.
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { generated::bpf_ktime_get_boot_ns() };
    if send(ev).is_err() {
        count(Counter::RingBufFull);
    }
    ev.kind = 0;
    CG_PENDING.release();
    Ok(())
}

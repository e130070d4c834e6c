//! Reads of kernel memory: task fields and the dentry/mount walk.
//!
//! Every offset comes from `OFFSETS`, filled by the loader from the running
//! kernel's BTF; the programs read it from frozen `.rodata`, so the verifier
//! sees each as a constant. Two ways to read:
//! - [`load`]: a plain load through a BTF-typed pointer (`current` from
//!   `bpf_get_current_task_btf()`, and the pointer fields loaded from it).
//!   The verifier checks the offset against the kernel's BTF and makes the
//!   load fault-safe; it costs an instruction, where a helper call costs
//!   about 50 ns on the development host. Used for the fixed chains from
//!   `current` (ids, namespaces, credentials, the executable's identity),
//!   whose first steps [`Task`] loads once per program (each such load
//!   costs the verifier searches of the kernel's BTF).
//! - [`read`]: `bpf_probe_read_kernel`, for everything else: the path
//!   walks (whose pointers are plain numbers, so the verifier's loop states
//!   stay small), `container_of` steps (a negative offset BTF cannot check)
//!   and variable indexes.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use chroot_guard_common::{
    exe_flags, flags, ChrootEvent, COMM_LEN, EXE_CACHE_BYTES, EXE_MAX, MAX_PATH_DEPTH, NAME_MAX, RESOLVED_MAX, SCRATCH_BYTES,
};

use crate::{task_storage::TaskStorage, CG_SCRATCH};
#[cfg(not(feature = "legacy"))]
use crate::CG_THREAD_SCRATCH;

/// Which walk buffer a program may use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scratch {
    /// This CPU's: for tracepoint and kprobe programs, which run with
    /// preemption disabled.
    PerCpu,
    /// This thread's (task storage), allocated on first use: for
    /// fentry/fexit programs, which can be preempted.
    PerThread,
    /// A buffer the program already holds: the BPF LSM program takes its
    /// thread's once (`TaskStorage::current_waiting`), so no later lookup
    /// can fail on a busy task storage and change a decision.
    #[cfg(not(feature = "legacy"))]
    Held(*mut u8),
}

impl Scratch {
    /// The buffer (`SCRATCH_BYTES` long), allocating the thread's if needed.
    #[inline(always)]
    pub fn get(self) -> Result<*mut u8, Error> {
        match self {
            Scratch::PerCpu => Ok(CG_SCRATCH.get_ptr_mut(0).ok_or(0)?.cast()),
            #[cfg(not(feature = "legacy"))]
            Scratch::PerThread => Ok(preemptible_get(&CG_THREAD_SCRATCH, true).ok_or(0)?.cast()),
            // Not preemptible before 5.11 (see `CG_THREAD_SCRATCH`).
            #[cfg(feature = "legacy")]
            Scratch::PerThread => Ok(CG_SCRATCH.get_ptr_mut(0).ok_or(0)?.cast()),
            #[cfg(not(feature = "legacy"))]
            Scratch::Held(p) => Ok(p),
        }
    }
}

/// A load-time offset from `OFFSETS`. The volatile read keeps the load from
/// `.rodata`, which the verifier then sees as a frozen constant.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: a plain read of an immutable static.
        (unsafe { core::ptr::read_volatile(&crate::OFFSETS.$field) }) as usize
    };
}

/// This thread's value of `map` for a preemptible program (fentry/fexit):
/// where the kernel has `bpf_loop` it waits out a busy task storage
/// ([`TaskStorage::current_waiting`]), which on 6.1 with full preemption
/// another thread preempted inside the helper causes; elsewhere one try.
/// The legacy object's programs are never preempted (`CG_THREAD_SCRATCH`):
/// one try.
#[inline(always)]
pub fn preemptible_get<T>(map: &TaskStorage<T>, create: bool) -> Option<*mut T> {
    #[cfg(feature = "legacy")]
    return map.current(create);
    #[cfg(not(feature = "legacy"))]
    return if off!(has_bpf_loop) != 0 { map.current_waiting(create) } else { map.current(create) };
}

/// Error type of the programs: the helper's negative errno, or 0 where
/// there is nothing to report.
pub type Error = i64;

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: usize) -> Result<T, Error> {
    // SAFETY: bpf_probe_read_kernel checks the address and never faults.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset).cast::<T>()) }.map_err(Error::from)
}

/// Loads a `T` at `base + offset` straight from kernel memory: `base` must
/// be a BTF-typed pointer (from `bpf_get_current_task_btf()` or a `load` of
/// a pointer field), so the verifier checks the access against the kernel's
/// BTF and turns it into a load that reads zero instead of faulting. About
/// one instruction, against a helper call for [`read`].
///
/// In the legacy object (no `bpf_get_current_task_btf()` before 5.11, so
/// no BTF-typed `current`) this is a [`read`], zero when it fails, as the
/// verifier's load would read.
#[cfg(not(feature = "legacy"))]
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: see above; the verifier rejects an access BTF does not allow.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset).cast::<T>()) }
}

/// [`load`] in the legacy object: a helper read, zero when it fails. The
/// helper's result is not tested: the kernel zeroes the destination when
/// the read fails, and a branch per load would split every verifier state
/// after it (four loads at the top of a program, up to sixteen states
/// each, which 5.10's verifier did not finish).
#[cfg(feature = "legacy")]
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes all `size_of::<T>()` bytes of `value`
    // (zeros when the read fails) and never faults on `base`.
    unsafe {
        generated::bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(offset).cast(),
        );
        // The types read are integers, pointers and byte arrays, for which
        // any bytes are a value.
        value.assume_init()
    }
}

/// Reads a pointer at `base + offset`.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: usize) -> Result<*const u8, Error> {
    read::<*const u8>(base, offset)
}

/// `current` as a raw `struct task_struct *`: BTF-typed (so [`load`] is
/// a plain load), except in the legacy object, where the kernel has only
/// `bpf_get_current_task()` and its value is a plain number.
#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: the helpers have no preconditions.
    #[cfg(not(feature = "legacy"))]
    return (unsafe { generated::bpf_get_current_task_btf() }) as *const u8;
    #[cfg(feature = "legacy")]
    return (unsafe { generated::bpf_get_current_task() }) as *const u8;
}

/// A task and the pointers of it that several reads follow, each loaded
/// once, where a program begins its work. Why once: on kernels since 6.3
/// the verifier checks every load of a pointer field through a trusted or
/// RCU pointer (`current`, its `real_parent`) against the lists of fields
/// that keep that trust (`btf_nested_type_is_trusted`), and each check
/// searches the kernel's whole BTF by name, up to four searches a load,
/// every time a verifier state walks the instruction. Loaded at the top of
/// a program, where one state walks them, each costs its searches once;
/// pointers loaded through the plain pointers they yield (`nsproxy`, `fs`,
/// `mm`, `cred`) cost none. On the development host such searches were
/// about 60 % of the CPU time the kernel took to load the tracepoint
/// programs (bench/README.md).
#[derive(Clone, Copy)]
pub struct Task {
    /// The `struct task_struct *` itself.
    pub ptr: *const u8,
    /// `task->real_parent`.
    pub real_parent: *const u8,
    /// `task->nsproxy`.
    pub nsproxy: *const u8,
    /// `task->fs`.
    pub fs: *const u8,
    /// `task->mm`: null for a kernel thread.
    pub mm: *const u8,
}

impl Task {
    /// `task`'s pointers (a BTF-typed `struct task_struct *`, except in the
    /// legacy object), loaded now.
    #[inline(always)]
    pub fn of(task: *const u8) -> Task {
        Task {
            ptr: task,
            real_parent: load::<*const u8>(task, off!(task_real_parent)),
            nsproxy: load::<*const u8>(task, off!(task_nsproxy)),
            fs: load::<*const u8>(task, off!(task_fs)),
            mm: load::<*const u8>(task, off!(task_mm)),
        }
    }

    /// [`Task::of`] `current`.
    #[inline(always)]
    pub fn current() -> Task {
        Task::of(current_task())
    }
}

/// `current->comm`, NUL-padded to 16 bytes. The buffer starts as two
/// zeroed words, stored one by one: aya's wrapper zeroes its byte array with the BPF target's
/// `memset`, a loop storing one byte per turn, and the helper does not pad
/// on every kernel (6.1's copies with `strscpy`, which leaves the bytes
/// after the NUL as they were; the comm filter compares all 16).
#[inline(always)]
pub fn current_comm() -> Result<[u8; COMM_LEN], Error> {
    let mut comm = core::mem::MaybeUninit::<[u64; COMM_LEN / 8]>::uninit();
    let words = comm.as_mut_ptr().cast::<u64>();
    for i in 0..COMM_LEN / 8 {
        // Volatile: a plain `[0u64; 2]` is folded into a `memset` call too.
        // SAFETY: inside the two words.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: the helper writes at most COMM_LEN bytes to the buffer.
    let r = unsafe { generated::bpf_get_current_comm(words.cast(), COMM_LEN as u32) };
    if r < 0 {
        return Err(r);
    }
    // SAFETY: both words were written above; two u64 are sixteen bytes,
    // any value a valid byte array.
    Ok(unsafe { core::mem::transmute::<[u64; COMM_LEN / 8], [u8; COMM_LEN]>(comm.assume_init()) })
}

/// `task->real_parent->tgid`.
#[inline(always)]
pub fn parent_tgid(task: &Task) -> u32 {
    load::<u32>(task.real_parent, off!(task_tgid))
}

/// `task->comm`.
#[inline(always)]
pub fn comm(task: *const u8) -> Result<[u8; COMM_LEN], Error> {
    read::<[u8; COMM_LEN]>(task, off!(task_comm))
}

/// `task->cred`, a plain BTF-typed pointer: what [`effective_ids`],
/// [`real_uid`] and [`user_ns_inum`] read from.
#[inline(always)]
pub fn cred(task: &Task) -> *const u8 {
    load::<*const u8>(task.ptr, off!(task_cred))
}

/// `cred->euid` and `cred->egid`.
#[inline(always)]
pub fn effective_ids(cred: *const u8) -> (u32, u32) {
    (load::<u32>(cred, off!(cred_euid)), load::<u32>(cred, off!(cred_egid)))
}

/// `task->nsproxy->mnt_ns->ns.inum`.
#[inline(always)]
pub fn mnt_ns_inum(task: &Task) -> u32 {
    let mnt_ns = load::<*const u8>(task.nsproxy, off!(nsproxy_mnt_ns));
    load::<u32>(mnt_ns, off!(mnt_ns_inum))
}

/// `struct upid`: `nr`, then the `ns` pointer, read in one go. Checked by
/// the loader like [`DentryWindow`].
#[repr(C)]
#[derive(Clone, Copy)]
struct UpidWindow {
    nr: u32,
    _pad: u32,
    ns: *const u8,
}

/// The task's pid namespace and ids as that namespace sees them, as
/// `task_active_pid_ns()` and `task_tgid_vnr()`/`task_pid_vnr()` find them:
/// `(ns.inum, pid, tid)` from `task->thread_pid->numbers[level]` and its
/// group leader's. The index varies, and 6.1's verifier refuses a variable
/// offset on a BTF-typed pointer, so the `struct pid` pointers are read with
/// [`read`] (plain numbers) and so is what lies behind them. A thread and
/// its group leader are always in one pid namespace (`CLONE_THREAD` refuses
/// `CLONE_NEWPID`), so the leader's `struct upid` is at the same level: six
/// helper reads in all.
#[inline(always)]
pub fn pid_ns_ids(task: *const u8, leader: *const u8) -> Result<(u32, u32, u32), Error> {
    let pid = read_ptr(task, off!(task_thread_pid))?;
    let level = read::<u32>(pid, off!(pid_level))? & 0xff;
    let at = off!(pid_numbers) + level as usize * off!(upid_size);
    let own = read::<UpidWindow>(pid.wrapping_add(at), off!(upid_nr))?;
    let inum = read::<u32>(own.ns, off!(pid_ns_inum))?;
    let leader = read_ptr(leader, off!(task_thread_pid))?;
    let tgid = read::<u32>(leader.wrapping_add(at), off!(upid_nr))?;
    Ok((inum, tgid, own.nr))
}

/// `task->fs->root` as `(vfsmount, dentry)`.
#[inline(always)]
pub fn fs_root(task: &Task) -> Result<(*const u8, *const u8), Error> {
    path_parts(task.fs.wrapping_add(off!(fs_root)))
}

/// `struct path`: `mnt`, then `dentry`, read in one go. Checked by the
/// loader like [`DentryWindow`].
#[repr(C)]
#[derive(Clone, Copy)]
struct PathWindow {
    mnt: *const u8,
    dentry: *const u8,
}

/// A `const struct path *` as `(vfsmount, dentry)`: one helper read.
#[inline(always)]
pub fn path_parts(path: *const u8) -> Result<(*const u8, *const u8), Error> {
    let p = read::<PathWindow>(path, off!(path_mnt))?;
    Ok((p.mnt, p.dentry))
}

/// `struct dentry` from `d_parent` on: `d_parent`, then `d_name` (a `struct
/// qstr`: hash, length, name pointer on a little-endian machine), read in
/// one go, so a step of the walk costs two helper calls (this and the name)
/// instead of four. The loader checks the layout against the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy)]
struct DentryWindow {
    parent: *const u8,
    _hash: u32,
    len: u32,
    name: *const u8,
}

/// `struct mount` from `mnt_parent` on: `mnt_parent`, `mnt_mountpoint`,
/// then the embedded `struct vfsmount`'s `mnt_root`: everything a mount
/// crossing needs, in one read. Checked by the loader like [`DentryWindow`].
#[repr(C)]
#[derive(Clone, Copy)]
struct MountWindow {
    parent: *const u8,
    mountpoint: *const u8,
    root: *const u8,
}

/// Where [`walk`] left a path: bytes `pos..RESOLVED_MAX` of the scratch
/// buffer.
pub struct Walk {
    /// The buffer.
    pub scratch: *mut u8,
    /// Start of the path in `scratch`; the path ends at `RESOLVED_MAX`.
    pub pos: u32,
    /// The walk reached the caller's mount namespace's root: the path is
    /// whole and names the directory in the caller's namespace.
    pub complete: bool,
    /// The walk ended at another root (a detached tree, another mount
    /// namespace, or an escaped dentry): no path of the caller's names it.
    pub unreachable: bool,
}

/// Mask keeping offsets inside the first `RESOLVED_MAX` bytes of scratch.
pub const MASK: u32 = RESOLVED_MAX as u32 - 1;

impl Walk {
    /// Length of the path.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        (RESOLVED_MAX as u32 - self.pos) & MASK
    }
}

/// Writes the absolute path of `(vfsmnt, dentry)` in the mount namespace
/// whose root mount is `ns_root` into the `kind` scratch buffer, the way
/// `d_absolute_path()` would: up the dentries, across mounts to the mount
/// namespace's root, ignoring any chroot the caller is already in. `bpf_d_path` is not allowed
/// on these hooks, so the walk is done here, bounded by [`MAX_PATH_DEPTH`]
/// steps and [`RESOLVED_MAX`] bytes; when cut short the tail is kept and
/// `complete` is false.
///
/// A mount that is its own parent is the root of some tree, not always of
/// the caller's: a detached tree (`umount -l`, `open_tree(OPEN_TREE_CLONE)`,
/// `fsmount`) or another mount namespace (`/proc/PID/root`, a directory fd
/// passed from elsewhere) ends the same way. Only `ns_root` (the task's
/// own `nsproxy->mnt_ns->root`) makes the path `complete`; any other root,
/// or a dentry that is its own parent below its mount's root (escaped, or a
/// pseudo file such as a memfd, whose name is then the last one written),
/// sets `unreachable`, since the path written then names something else
/// (or nothing) in the task's namespace.
///
/// Verifier notes: the write position lives in the scratch map and is
/// re-read (volatile) each step, so the verifier sees one bounded unknown
/// instead of a different exact value per path, and the states of the
/// "cross a mount" and "go up a dentry" branches prune each other. Without
/// this the walk explodes past the 1M instruction limit. Where the kernel
/// has `bpf_loop` the steps run in it ([`steps`]).
#[inline(always)]
pub fn walk(kind: Scratch, ns_root: *const u8, vfsmnt: *const u8, dentry: *const u8) -> Result<Walk, Error> {
    let scratch = kind.get()?;
    let mnt = vfsmnt.wrapping_sub(off!(mount_mnt));
    let mut w = PathWalk {
        scratch,
        ns_root,
        mnt,
        m: read::<MountWindow>(mnt, off!(mount_parent))?,
        dentry,
        complete: false,
        unreachable: false,
        failed: 0,
    };
    // The path is built backwards, ending at RESOLVED_MAX; pos stays >= 1.
    w.store_pos(RESOLVED_MAX as u32);
    steps(&mut w);
    if w.failed != 0 {
        return Err(w.failed);
    }
    let mut pos = w.load_pos();
    if pos >= RESOLVED_MAX as u32 {
        // Nothing written: the path is the namespace's root itself.
        pos = RESOLVED_MAX as u32 - 1;
        // SAFETY: in bounds, see above.
        unsafe { *scratch.add((pos & MASK) as usize) = b'/' };
    }
    Ok(Walk { scratch, pos: pos & MASK, complete: w.complete, unreachable: w.unreachable })
}

/// What a walk ([`walk`], [`is_below`]) carries from one step to the next,
/// on the program's stack, where a `bpf_loop` callback reaches it.
trait Steps {
    /// One step up: `true` when the walk is over.
    fn step(&mut self) -> bool;
}

/// Runs `w`'s steps until one says it is over, at most [`MAX_PATH_DEPTH`]:
/// in `bpf_loop` (5.17+), whose callback the verifier checks until its
/// state converges (once or a few times), where a bounded loop is checked
/// once per step, 64 times over; as a bounded loop where the kernel has no
/// `bpf_loop` (5.13 to 5.16), and always in the legacy object (no
/// callbacks before 5.13).
#[inline(always)]
fn steps<W: Steps>(w: &mut W) {
    #[cfg(not(feature = "legacy"))]
    if off!(has_bpf_loop) != 0 {
        // SAFETY: the callback and its context live for the call.
        unsafe { generated::bpf_loop(MAX_PATH_DEPTH, step_cb::<W> as *mut core::ffi::c_void, core::ptr::from_mut(w).cast(), 0) };
        return;
    }
    for _ in 0..MAX_PATH_DEPTH {
        if w.step() {
            break;
        }
    }
}

/// `bpf_loop`'s callback for [`steps`]: 1 (stop) once the walk is over.
#[cfg(not(feature = "legacy"))]
#[inline(never)]
extern "C" fn step_cb<W: Steps>(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the walk on the caller's stack.
    i64::from(unsafe { &mut *ctx.cast::<W>() }.step())
}

/// [`walk`]'s state.
struct PathWalk {
    scratch: *mut u8,
    ns_root: *const u8,
    /// The `struct mount` the walk is in, and its window.
    mnt: *const u8,
    m: MountWindow,
    dentry: *const u8,
    complete: bool,
    unreachable: bool,
    /// The error of a failed read, which ends the walk; 0 while none has
    /// (a helper's errors are negative). A plain value written before the
    /// steps, not an `Option`: LLVM left an `Option`'s payload in a stack
    /// slot only the failing path writes, which verifiers before 6.3
    /// refuse to read.
    failed: Error,
}

impl PathWalk {
    const POS_MASK: u32 = 2 * RESOLVED_MAX as u32 - 1;

    /// The write position: in the scratch value's last 8 bytes, not in the
    /// path (which ends at RESOLVED_MAX + NAME_MAX).
    #[inline(always)]
    fn pos_slot(&self) -> *mut u32 {
        // SAFETY: SCRATCH_BYTES - 8 is inside the value and 4-byte aligned.
        unsafe { self.scratch.add(SCRATCH_BYTES - 8) }.cast::<u32>()
    }
    #[inline(always)]
    fn load_pos(&self) -> u32 {
        // SAFETY: see `pos_slot`.
        unsafe { core::ptr::read_volatile(self.pos_slot()) & Self::POS_MASK }
    }
    #[inline(always)]
    fn store_pos(&self, p: u32) {
        // SAFETY: see `pos_slot`.
        unsafe { core::ptr::write_volatile(self.pos_slot(), p) }
    }
    /// The name's length, in the 4 bytes after the position.
    #[inline(always)]
    fn load_len(&self) -> u32 {
        // SAFETY: see `pos_slot`; the 4 bytes after it, also in the value.
        unsafe { core::ptr::read_volatile(self.pos_slot().add(1)) }
    }
    #[inline(always)]
    fn store_len(&self, l: u32) {
        // SAFETY: see `load_len`.
        unsafe { core::ptr::write_volatile(self.pos_slot().add(1), l) }
    }
    #[inline(always)]
    fn try_step(&mut self) -> Result<bool, Error> {
        if self.dentry == self.m.root {
            if self.m.parent == self.mnt {
                self.complete = self.mnt == self.ns_root;
                self.unreachable = !self.complete;
                return Ok(true);
            }
            self.dentry = self.m.mountpoint;
            self.mnt = self.m.parent;
            self.m = read::<MountWindow>(self.mnt, off!(mount_parent))?;
            return Ok(false);
        }
        let d = read::<DentryWindow>(self.dentry, off!(dentry_parent))?;
        if d.len > NAME_MAX as u32 {
            return Ok(true);
        }
        // Through the scratch map again: after the check above LLVM would
        // drop the mask, and the verifier, which may track a different copy
        // of the value, would see an unbounded length.
        self.store_len(d.len);
        let len = self.load_len() & NAME_MAX as u32;
        let pos = self.load_pos();
        if len + 1 >= pos {
            return Ok(true);
        }
        let pos = pos - (len + 1);
        self.store_pos(pos);
        let scratch = self.scratch;
        // SAFETY: the masks keep both writes inside the SCRATCH_BYTES value.
        unsafe {
            *scratch.add((pos & MASK) as usize) = b'/';
            // The length read back once more for the helper: 6.12's
            // verifier links `len` to the registers derived from it
            // (`pos - (len + 1)`) and loses its unsigned bound on the way
            // ("R2 unbounded memory access"); a fresh masked load has one.
            generated::bpf_probe_read_kernel(
                scratch.add(((pos + 1) & MASK) as usize).cast(),
                self.load_len() & NAME_MAX as u32,
                d.name.cast(),
            );
        }
        if d.parent == self.dentry {
            // A root dentry below its mount's root: escaped from the mount
            // (the file system's root, named "/", is dropped again), or a
            // pseudo file such as a memfd (its name, `memfd:NAME`, stays).
            self.unreachable = true;
            // SAFETY: masked into the scratch value, written just above.
            if len == 1 && unsafe { *scratch.add(((pos + 1) & MASK) as usize) } == b'/' {
                self.store_pos(pos + 2);
            }
            return Ok(true);
        }
        self.dentry = d.parent;
        Ok(false)
    }
}

impl Steps for PathWalk {
    #[inline(always)]
    fn step(&mut self) -> bool {
        self.try_step().unwrap_or_else(|e| {
            self.failed = e;
            true
        })
    }
}

/// [`walk`]s `(vfsmnt, dentry)` in `task`'s mount namespace and copies the path into `ev.data` after
/// the argument (so `path_len` must be final), setting
/// [`flags::RESOLVED_PRESENT`], and [`flags::RESOLVED_TRUNCATED`] when cut
/// short or [`flags::RESOLVED_UNREACHABLE`] when it ended at another root.
#[inline(always)]
pub fn resolve_into(kind: Scratch, ev: &mut ChrootEvent, task: &Task, vfsmnt: *const u8, dentry: *const u8) -> Result<Walk, Error> {
    let w = walk(kind, ns_root_mount(task.nsproxy), vfsmnt, dentry)?;
    let at = u32::from(ev.path_len) & MASK;
    ev.resolved_len = copy_walk(ev, at, &w);
    ev.flags |= flags::RESOLVED_PRESENT;
    if w.unreachable {
        ev.flags |= flags::RESOLVED_UNREACHABLE;
    } else if !w.complete {
        ev.flags |= flags::RESOLVED_TRUNCATED;
    }
    Ok(w)
}

/// Copies the path of `w` into `ev.data` at `at` and returns its length.
/// `at` must be masked by the caller (so the verifier knows its bound), to
/// at most `DATA_BYTES - EXE_MAX`.
#[inline(always)]
fn copy_walk(ev: &mut ChrootEvent, at: u32, w: &Walk) -> u16 {
    // SAFETY: `at` is masked by the caller, so the copy ends inside
    // `ev.data` (see `DATA_BYTES`).
    copy_path(unsafe { ev.data.as_mut_ptr().add(at as usize) }, w)
}

/// Copies the path of `w` to `dst` and returns its length (at most
/// [`MASK`]). `dst` must have `MASK` bytes of room, provably to the
/// verifier: a map value pointer whose offset the caller masked.
#[inline(always)]
pub fn copy_path(dst: *mut u8, w: &Walk) -> u16 {
    let len = w.len();
    // SAFETY: see above; the source is the scratch value.
    unsafe {
        generated::bpf_probe_read_kernel(dst.cast(), len, w.scratch.add((w.pos & MASK) as usize).cast());
    }
    len as u16
}

/// `ERR_PTR(-EINVAL)`: the `mount.mnt_ns` of the kernel's internal mounts
/// (`kern_mount()`), `MNT_NS_INTERNAL` in `fs/mount.h`.
const MNT_NS_INTERNAL: usize = -22isize as usize;

/// Walks `task`'s executable (`task->mm->exe_file->f_path`) in the task's
/// own mount namespace: the walk and its [`exe_flags`] bits. `Err` when
/// the task has no executable or a read failed.
#[inline(always)]
pub fn exe_walk(kind: Scratch, task: &Task) -> Result<(Walk, u16), Error> {
    let file = exe_file(task.mm)?;
    let (w, bits) = exe_walk_at(kind, ns_root_mount(task.nsproxy), file)?;
    Ok((w, bits | exe_deleted(file)))
}

/// [`exe_walk`] of the executable `file` in the namespace whose root mount
/// is `ns_root`, without [`exe_flags::DELETED`] (see [`exe_deleted`]).
#[inline(always)]
fn exe_walk_at(kind: Scratch, ns_root: *const u8, file: *const u8) -> Result<(Walk, u16), Error> {
    let (vfsmnt, dentry) = path_parts(file.wrapping_add(off!(file_f_path)))?;
    let w = walk(kind, ns_root, vfsmnt, dentry)?;
    let mut bits = exe_flags::PRESENT;
    if w.unreachable {
        bits |= exe_flags::UNREACHABLE;
    } else if !w.complete {
        bits |= exe_flags::TRUNCATED;
    }
    // A memfd lives on an internal mount, outside every namespace, so its
    // walk is never complete: only then is the mount's namespace read.
    if w.unreachable {
        let d = read::<DentryWindow>(dentry, off!(dentry_parent))?;
        let mnt_ns = read_ptr(vfsmnt.wrapping_sub(off!(mount_mnt)), off!(mount_mnt_ns))? as usize;
        if mnt_ns == MNT_NS_INTERNAL && read::<[u8; 6]>(d.name, 0)? == *b"memfd:" {
            bits |= exe_flags::MEMFD;
        }
    }
    Ok((w, bits))
}

/// [`exe_flags::DELETED`] when the executable `file` (a BTF-typed
/// `struct file *`) has been unlinked: its dentry is unhashed and not a
/// root, what `/proc/PID/exe` marks `(deleted)`. Plain loads only.
#[inline(always)]
fn exe_deleted(file: *const u8) -> u16 {
    let dentry = load::<*const u8>(file, off!(file_f_path) + off!(path_dentry));
    let parent = load::<*const u8>(dentry, off!(dentry_parent));
    if parent != dentry && load::<*const u8>(dentry, off!(dentry_hash_pprev)).is_null() {
        exe_flags::DELETED
    } else {
        0
    }
}

/// What an executable's walk depends on, as one thread caches it
/// ([`ExeCached`]): the task (and when it started, so a reused
/// `task_struct` does not match), its `self_exec_id` (one more on each
/// execve), its `mm->exe_file`, that file's identity (device and inode:
/// `prctl(PR_SET_MM_MAP)`, open to root in a user namespace, swaps
/// `exe_file` without an exec, and the new `struct file` may reuse the
/// old one's address) and its mount namespace's root mount.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExeWalkKey {
    task: u64,
    start: u64,
    exec_id: u64,
    file: u64,
    ino: u64,
    dev: u64,
    ns_root: u64,
}

impl ExeWalkKey {
    /// Field by field: a derived `PartialEq` may become a `memcmp` call,
    /// which the BPF target does not have.
    #[inline(always)]
    fn same(&self, o: &ExeWalkKey) -> bool {
        self.task == o.task
            && self.start == o.start
            && self.exec_id == o.exec_id
            && self.file == o.file
            && self.ino == o.ino
            && self.dev == o.dev
            && self.ns_root == o.ns_root
    }
}

/// One executable path as a thread last walked it: the key it was walked
/// for, its [`exe_flags`] bits but `DELETED` (read fresh each time) and
/// the path, when shorter than [`EXE_CACHE_BYTES`] (longer ones are walked
/// every time). Empty while `len` is 0 (a walk writes at least `/`). The
/// path is the one walked first for that key: like Tetragon's exec-time
/// binary, a rename or a mount change after it is not seen until the task
/// next execs, changes executable, mount namespace or parent (a walk that
/// raced a rename and read a mix of old and new names stays as long). In a
/// mount namespace of a user's own, where any path of the executable is
/// the user's to arrange, a path that is stale is no less true than one
/// arranged on purpose; policies match the executable by device and inode,
/// read fresh every call.
#[repr(C)]
pub struct ExeCached {
    key: ExeWalkKey,
    len: u16,
    bits: u16,
    _pad: u32,
    path: [u8; EXE_CACHE_BYTES],
}

/// What a thread keeps between its chroot(2) calls (`CG_CALLER_CACHE`) so
/// that a repeated call reads its caller's ids and executables instead of
/// walking for them: in tracepoint mode on the development host the exit
/// program went from about 2,600 to 1,400 ns a call (bench/README.md).
#[repr(C)]
pub struct CallerCache {
    /// The caller's pid namespace ids ([`pid_ns_ids`]).
    pub ids: IdsCached,
    /// The caller's executable path.
    pub own: ExeCached,
    /// Its `real_parent`'s.
    pub parent: ExeCached,
}

/// A thread's [`pid_ns_ids`] and what they were read for: its own and its
/// group leader's `thread_pid` (`struct pid`s are immutable while held)
/// and its `self_exec_id` (an execve by a non-leader thread swaps pids with
/// the leader). Empty while `exec_id` is 0 (never an exec id: a task's
/// starts at its parent's, and init's first exec makes it 1).
#[repr(C)]
pub struct IdsCached {
    pid: u64,
    leader_pid: u64,
    exec_id: u64,
    ids: (u32, u32, u32),
    _pad: u32,
}

/// [`pid_ns_ids`], from `cache` when it was read for the same pids and
/// exec (plain loads: three where the reads take six helper calls), else
/// read and kept there.
#[inline(always)]
pub fn pid_ns_ids_cached(task: &Task, cache: Option<&mut IdsCached>) -> Result<(u32, u32, u32), Error> {
    let task = task.ptr;
    let leader = load::<*const u8>(task, off!(task_group_leader));
    let pid = load::<u64>(task, off!(task_thread_pid));
    let leader_pid = load::<u64>(leader, off!(task_thread_pid));
    let exec_id = load::<u64>(task, off!(task_self_exec_id));
    match cache {
        Some(c) if c.exec_id != 0 && c.exec_id == exec_id && c.pid == pid && c.leader_pid == leader_pid => Ok(c.ids),
        cache => {
            let ids = pid_ns_ids(task, leader)?;
            if let Some(c) = cache {
                (c.pid, c.leader_pid, c.exec_id, c.ids) = (pid, leader_pid, exec_id, ids);
            }
            Ok(ids)
        }
    }
}

/// Appends `task`'s executable path to `ev.data` after the paths before
/// it: the caller's (`parent` false, into `exe_len`) or, once that is
/// final, its parent's (`parent` true, into `parent_exe_len`), and sets its
/// [`exe_flags`] bits, shifted for the parent. From `cache` when its key
/// matches, else walked ([`exe_walk`]) and kept there when it fits. `Err`
/// when the task has no executable or a read failed; nothing is then
/// recorded.
#[inline(always)]
pub fn exe_into(kind: Scratch, ev: &mut ChrootEvent, owner: ExeOwner, parent: bool, cache: Option<&mut ExeCached>) -> Result<(), Error> {
    let task = owner.task;
    let file = exe_file(owner.mm)?;
    let ns_root = ns_root_mount(owner.nsproxy);
    let (dev, ino) = file_identity(file);
    let key = ExeWalkKey {
        task: task as u64,
        start: start_boottime(task),
        exec_id: load::<u64>(task, off!(task_self_exec_id)),
        file: file as u64,
        ino,
        dev: u64::from(dev),
        ns_root: ns_root as u64,
    };
    let before = u32::from(ev.path_len) + u32::from(ev.resolved_len);
    let at = if parent {
        (before + u32::from(ev.exe_len)) & (4 * EXE_MAX as u32 - 1)
    } else {
        before & (2 * EXE_MAX as u32 - 1)
    };
    // SAFETY: `at` is masked, so `MASK` bytes from it stay inside `ev.data`
    // (see `DATA_BYTES`).
    let dst = unsafe { ev.data.as_mut_ptr().add(at as usize) };
    const CACHE_MASK: u32 = EXE_CACHE_BYTES as u32 - 1;
    let (len, bits) = match cache {
        Some(c) if c.len != 0 && c.key.same(&key) => {
            let len = u32::from(c.len) & CACHE_MASK;
            // SAFETY: `len` bytes of the cached path into `dst`, see above.
            unsafe { generated::bpf_probe_read_kernel(dst.cast(), len, c.path.as_ptr().cast()) };
            (len as u16, c.bits)
        }
        cache => {
            let (w, bits) = exe_walk_at(kind, ns_root, file)?;
            let len = copy_path(dst, &w);
            if let Some(c) = cache {
                c.len = 0;
                if u32::from(len) <= CACHE_MASK {
                    let n = u32::from(len) & CACHE_MASK;
                    // SAFETY: `n` bytes from the walk's buffer into the
                    // cache's `EXE_CACHE_BYTES`.
                    unsafe { generated::bpf_probe_read_kernel(c.path.as_mut_ptr().cast(), n, w.scratch.add((w.pos & MASK) as usize).cast()) };
                    (c.key, c.bits, c.len) = (key, bits, n as u16);
                }
            }
            (len, bits)
        }
    };
    let bits = bits | exe_deleted(file);
    if parent {
        ev.parent_exe_len = len;
        ev.exe_flags |= bits << exe_flags::PARENT_SHIFT;
    } else {
        ev.exe_len = len;
        ev.exe_flags |= bits;
    }
    Ok(())
}

/// Whether `(vfsmnt, dentry)` is the root of the mount namespace whose root
/// mount is `ns_root`, seen through any mounts stacked on `/`: only mount
/// roots, each mounted on its parent's root, up to `ns_root` itself. The
/// root of a detached tree or of another namespace is not it.
#[inline(always)]
fn is_root_of(ns_root: *const u8, vfsmnt: *const u8, dentry: *const u8) -> Result<bool, Error> {
    let mut mnt = vfsmnt.wrapping_sub(off!(mount_mnt));
    let mut dentry = dentry;
    for _ in 0..8 {
        let m = read::<MountWindow>(mnt, off!(mount_parent))?;
        if dentry != m.root {
            return Ok(false);
        }
        if mnt == ns_root {
            return Ok(true);
        }
        if m.parent == mnt {
            return Ok(false);
        }
        dentry = m.mountpoint;
        mnt = m.parent;
    }
    Ok(false)
}

/// `nsproxy->mnt_ns->root`: the root mount of a task's mount namespace (a
/// `struct mount *`), from its `nsproxy`.
#[inline(always)]
pub fn ns_root_mount(nsproxy: *const u8) -> *const u8 {
    let mnt_ns = load::<*const u8>(nsproxy, off!(nsproxy_mnt_ns));
    load::<*const u8>(mnt_ns, off!(mnt_ns_root))
}

/// Whose executable [`exe_into`] records: the task, its `mm` and its
/// `nsproxy` (the caller's from its [`Task`], the parent's loaded once).
#[derive(Clone, Copy)]
pub struct ExeOwner {
    /// The `struct task_struct *`.
    pub task: *const u8,
    /// `task->mm`.
    pub mm: *const u8,
    /// `task->nsproxy`.
    pub nsproxy: *const u8,
}

impl ExeOwner {
    /// The task of `task` itself.
    #[inline(always)]
    pub fn own(task: &Task) -> ExeOwner {
        ExeOwner { task: task.ptr, mm: task.mm, nsproxy: task.nsproxy }
    }

    /// `task->real_parent`, its `mm` and `nsproxy` loaded now.
    #[inline(always)]
    pub fn parent(task: &Task) -> ExeOwner {
        let parent = task.real_parent;
        ExeOwner { task: parent, mm: load::<*const u8>(parent, off!(task_mm)), nsproxy: load::<*const u8>(parent, off!(task_nsproxy)) }
    }
}

/// Whether the task's root is not its mount namespace's root, as the
/// kernel's `current_chrooted()` decides it: a root inside a chroot, in a
/// detached tree or in another namespace is chrooted. (One difference: a
/// mount stacked on `/` after the task's root was set leaves the kernel
/// counting the task as chrooted and this walk not; the task then still
/// sees its namespace's whole root file system.)
#[inline(always)]
pub fn is_chrooted(task: &Task) -> Result<bool, Error> {
    is_chrooted_at(task, fs_root(task)?)
}

/// [`is_chrooted`] for a root already read ([`fs_root`] of `task`).
#[inline(always)]
pub fn is_chrooted_at(task: &Task, root: (*const u8, *const u8)) -> Result<bool, Error> {
    Ok(!is_root_of(ns_root_mount(task.nsproxy), root.0, root.1)?)
}

/// The identity of `task->mm->exe_file`: `(f_inode->i_sb->s_dev,
/// f_inode->i_ino)`. `Err` for a task without an executable (a kernel
/// thread, or an `mm` without `exe_file`).
#[inline(always)]
pub fn exe_identity(task: &Task) -> Result<(u32, u64), Error> {
    Ok(file_identity(exe_file(task.mm)?))
}

/// `(f_inode->i_sb->s_dev, f_inode->i_ino)` of a BTF-typed `struct file *`.
#[inline(always)]
fn file_identity(file: *const u8) -> (u32, u64) {
    let inode = load::<*const u8>(file, off!(file_f_inode));
    let sb = load::<*const u8>(inode, off!(inode_sb));
    (load::<u32>(sb, off!(sb_dev)), load::<u64>(inode, off!(inode_ino)))
}

/// `mm->exe_file` of a task's `mm`; `Err` for a task without one (a
/// kernel thread, an exiting task, or an `mm` without `exe_file`).
#[inline(always)]
fn exe_file(mm: *const u8) -> Result<*const u8, Error> {
    if mm.is_null() {
        return Err(0);
    }
    let file = load::<*const u8>(mm, off!(mm_exe_file));
    if file.is_null() {
        return Err(0);
    }
    Ok(file)
}

/// `fs->pwd`, the working directory, as `(vfsmount, dentry)`, from a
/// task's `fs` ([`Task::fs`]).
#[inline(always)]
pub fn fs_pwd(fs: *const u8) -> Result<(*const u8, *const u8), Error> {
    path_parts(fs.wrapping_add(off!(fs_pwd)))
}

/// Whether walking up from `(vfsmnt, dentry)`, across mounts, passes
/// `(root_mnt, root_dentry)` (all `struct vfsmount` and `struct dentry`
/// pointers), as `d_path()` decides whether a path is under a task's root:
/// `Some(false)` when the walk reached the top of its mount tree first (a
/// detached tree's or another namespace's top included), `None` when
/// [`MAX_PATH_DEPTH`] steps were not enough to tell. One helper read per
/// step: a mount's [`MountWindow`] is read once, when the walk enters it.
#[inline(always)]
pub fn is_below(
    root_mnt: *const u8,
    root_dentry: *const u8,
    vfsmnt: *const u8,
    dentry: *const u8,
) -> Result<Option<bool>, Error> {
    let root_mount = root_mnt.wrapping_sub(off!(mount_mnt));
    let mount = vfsmnt.wrapping_sub(off!(mount_mnt));
    if mount == root_mount && dentry == root_dentry {
        return Ok(Some(true));
    }
    // The first mount's window is read before the steps: an initial value
    // the first step would overwrite is one LLVM may leave in a stack
    // slot never written, and 5.10's verifier refuses to read such a slot
    // ("invalid read from stack").
    let mut w = BelowWalk {
        root_mount,
        root_dentry,
        mount,
        m: read::<MountWindow>(mount, off!(mount_parent))?,
        entered: false,
        dentry,
        answer: ANSWER_UNKNOWN,
        failed: 0,
    };
    steps(&mut w);
    match w.answer {
        ANSWER_BELOW => Ok(Some(true)),
        ANSWER_NOT_BELOW => Ok(Some(false)),
        ANSWER_FAILED => Err(w.failed),
        _ => Ok(None),
    }
}

/// [`BelowWalk::answer`]: no step has decided (yet, or in 64 steps).
const ANSWER_UNKNOWN: u32 = 0;
/// The walk met the root: at or below it.
const ANSWER_BELOW: u32 = 1;
/// The walk reached the top of its tree first.
const ANSWER_NOT_BELOW: u32 = 2;
/// A read failed ([`BelowWalk::failed`]).
const ANSWER_FAILED: u32 = 3;

/// [`is_below`]'s state.
struct BelowWalk {
    root_mount: *const u8,
    root_dentry: *const u8,
    /// The `struct mount` the walk is in, and its window (read at the
    /// step after the walk `entered` it).
    mount: *const u8,
    m: MountWindow,
    entered: bool,
    dentry: *const u8,
    /// One of the `ANSWER_` values: unknown until a step finds it.
    answer: u32,
    /// With `ANSWER_FAILED`: the failed read's error.
    failed: Error,
}

impl BelowWalk {
    #[inline(always)]
    fn try_step(&mut self) -> Result<Option<u32>, Error> {
        if self.mount == self.root_mount && self.dentry == self.root_dentry {
            return Ok(Some(ANSWER_BELOW));
        }
        // Read here, not where the walk crosses into the mount: a helper
        // call right before the loop's back-edge can leave LLVM a loop
        // whose back-edge is a fallthrough, which 6.1's verifier refuses
        // ("back-edge from insn …").
        if self.entered {
            self.m = read::<MountWindow>(self.mount, off!(mount_parent))?;
            self.entered = false;
        }
        if self.dentry == self.m.root {
            if self.m.parent == self.mount {
                return Ok(Some(ANSWER_NOT_BELOW));
            }
            self.dentry = self.m.mountpoint;
            self.mount = self.m.parent;
            self.entered = true;
            return Ok(None);
        }
        let parent = read_ptr(self.dentry, off!(dentry_parent))?;
        if parent == self.dentry {
            return Ok(Some(ANSWER_NOT_BELOW));
        }
        self.dentry = parent;
        Ok(None)
    }
}

impl Steps for BelowWalk {
    #[inline(always)]
    fn step(&mut self) -> bool {
        match self.try_step() {
            Ok(None) => false,
            Ok(Some(a)) => {
                self.answer = a;
                true
            }
            Err(e) => {
                (self.answer, self.failed) = (ANSWER_FAILED, e);
                true
            }
        }
    }
}

/// [`is_below`] as one number: 0 at or below, 1 not below, 2 unknown.
/// The legacy object calls it as a BPF subprogram. Inlined, LLVM reloads
/// the walk's spilled values where its paths join, also on the paths that
/// never stored them (a failed read), and 5.8 to 5.11's verifiers refuse
/// any read of a stack slot not written on the path ("invalid read from
/// stack"); a subprogram's spills stay in its own frame.
#[cfg_attr(feature = "legacy", inline(never))]
#[cfg_attr(not(feature = "legacy"), inline(always))]
fn below_code(root_mnt: *const u8, root_dentry: *const u8, vfsmnt: *const u8, dentry: *const u8) -> u32 {
    match is_below(root_mnt, root_dentry, vfsmnt, dentry) {
        Ok(Some(true)) => 0,
        Ok(Some(false)) => 1,
        _ => 2,
    }
}

/// [`below_code`] of `task`'s working directory (`task->fs->pwd`) under
/// `(root_mnt, root_dentry)`; 2 (unknown) when it cannot be read. A BPF
/// subprogram in the legacy object, as [`below_code`]: the cwd's read,
/// inlined, left its result in stack slots only the successful path
/// wrote.
#[cfg_attr(feature = "legacy", inline(never))]
#[cfg_attr(not(feature = "legacy"), inline(always))]
fn cwd_below_code(root_mnt: *const u8, root_dentry: *const u8, fs: *const u8) -> u32 {
    match fs_pwd(fs) {
        Ok((mnt, dentry)) => below_code(root_mnt, root_dentry, mnt, dentry),
        Err(_) => 2,
    }
}

/// The escape facts of a chroot to `new_root` by `task`, whose root was
/// `old_root` (both `(vfsmount, dentry)`), as event [`flags`]:
/// [`flags::ROOTS_COMPARED`], then [`flags::ESCAPES_ROOT`] when the new
/// root is not at or below the old one and [`flags::CWD_OUTSIDE_ROOT`]
/// when the task's cwd (`task->fs->pwd`) is not at or below the new root,
/// each replaced by its `_UNKNOWN` bit when [`is_below`] could not tell
/// (or the cwd could not be read). Two bounded walks up from the new root
/// and from the cwd: a few helper reads for the usual shallow paths, at
/// most 2 × [`MAX_PATH_DEPTH`] steps.
#[inline(always)]
pub fn root_facts(old_root: (*const u8, *const u8), new_root: (*const u8, *const u8), task: &Task) -> u32 {
    let escapes = match below_code(old_root.0, old_root.1, new_root.0, new_root.1) {
        0 => 0,
        1 => flags::ESCAPES_ROOT,
        _ => flags::ESCAPES_ROOT_UNKNOWN,
    };
    let cwd = match cwd_below_code(new_root.0, new_root.1, task.fs) {
        0 => 0,
        1 => flags::CWD_OUTSIDE_ROOT,
        _ => flags::CWD_OUTSIDE_ROOT_UNKNOWN,
    };
    flags::ROOTS_COMPARED | escapes | cwd
}

/// The caller's ids as `bpf_get_current_pid_tgid()` and
/// `bpf_get_current_uid_gid()` return them (`tgid << 32 | pid`,
/// `gid << 32 | uid`), loaded from `task` (`current`) and `cred`
/// (`current->cred`): four loads instead of two helper calls, the second of
/// which maps both ids through the initial user namespace, where they are
/// the kernel's own values (together about 80 ns a call on the development
/// host). In the legacy object, whose loads are helper reads, the helpers.
#[inline(always)]
pub fn current_ids(task: &Task, cred: *const u8) -> (u64, u64) {
    #[cfg(not(feature = "legacy"))]
    {
        let (pid, tgid) = (load::<u32>(task.ptr, off!(task_pid)), load::<u32>(task.ptr, off!(task_tgid)));
        let (uid, gid) = (real_uid(cred), load::<u32>(cred, off!(cred_gid)));
        (u64::from(tgid) << 32 | u64::from(pid), u64::from(gid) << 32 | u64::from(uid))
    }
    #[cfg(feature = "legacy")]
    {
        let _ = (task, cred);
        (aya_ebpf::helpers::bpf_get_current_pid_tgid(), aya_ebpf::helpers::bpf_get_current_uid_gid())
    }
}

/// `cred->uid`: the real uid, as the initial user namespace sees it.
#[inline(always)]
pub fn real_uid(cred: *const u8) -> u32 {
    load::<u32>(cred, off!(cred_uid))
}

/// `task->start_boottime`: when the task started, ns since boot
/// (CLOCK_BOOTTIME).
#[inline(always)]
pub fn start_boottime(task: *const u8) -> u64 {
    load::<u64>(task, off!(task_start_boottime))
}

/// `task->tgid`.
#[inline(always)]
pub fn tgid(task: *const u8) -> u32 {
    load::<u32>(task, off!(task_tgid))
}

/// `task->group_leader`.
#[inline(always)]
pub fn group_leader(task: *const u8) -> *const u8 {
    load::<*const u8>(task, off!(task_group_leader))
}

/// `task->cgroups->dfl_cgrp->kn->id`: the task's cgroup v2 id, what
/// `bpf_get_current_cgroup_id()` reads for `current`. `cgroups` is an RCU
/// pointer, so the chain is read with [`read`].
#[inline(always)]
pub fn cgroup_id(task: *const u8) -> Result<u64, Error> {
    let css_set = read_ptr(task, off!(task_cgroups))?;
    let cgroup = read_ptr(css_set, off!(css_set_dfl_cgrp))?;
    let kn = read_ptr(cgroup, off!(cgroup_kn))?;
    read::<u64>(kn, off!(kernfs_node_id))
}

/// `cred->user_ns->ns.inum`.
#[inline(always)]
pub fn user_ns_inum(cred: *const u8) -> u32 {
    let ns = load::<*const u8>(cred, off!(cred_user_ns));
    load::<u32>(ns, off!(user_ns_inum))
}

/// The first syscall argument from a user `struct pt_regs *` (what the
/// `__x64_sys_*` wrappers receive).
#[inline(always)]
pub fn syscall_arg0(regs: *const u8) -> Result<*const u8, Error> {
    read_ptr(regs, off!(pt_regs_arg0))
}

/// The first argument of a 32-bit compat syscall from a user `struct
/// pt_regs *` (what `__ia32_sys_*` receive, and `sys_enter` for a compat
/// call): `bx` on x86_64, `regs[0]` (AArch32's r0) on arm64. The value is
/// a 32-bit user address.
#[inline(always)]
pub fn syscall_compat_arg0(regs: *const u8) -> Result<*const u8, Error> {
    Ok(read::<u64>(regs, off!(pt_regs_compat_arg0))? as u32 as usize as *const u8)
}

/// The syscall number in a user `struct pt_regs *`: x86_64's `orig_ax`.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
pub fn syscall_nr(regs: *const u8) -> Result<i64, Error> {
    read::<i64>(regs, off!(pt_regs_syscall_nr))
}

/// The syscall number in a user `struct pt_regs *`: arm64's `s32
/// syscallno` (the 32 bits after it are another field).
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn syscall_nr(regs: *const u8) -> Result<i64, Error> {
    Ok(i64::from(read::<i32>(regs, off!(pt_regs_syscall_nr))?))
}

/// The compat bit in the `thread_info` word at `task_ti_compat`: x86_64's
/// `TS_COMPAT` in `status`, set on entry to a 32-bit syscall (`int $0x80`,
/// `sysenter`, 32-bit `syscall`), also one a 64-bit process makes.
#[cfg(not(bpf_target_arch = "aarch64"))]
const COMPAT_BIT: u32 = 0x0002;

/// The compat bit in the `thread_info` word at `task_ti_compat`: arm64's
/// `TIF_32BIT` (bit 22 of `flags`, in its low 32 bits), set for an AArch32
/// task, which can make no other syscall. A `#define`, so not in BTF: 22
/// from 3.7 through 6.12 at least.
#[cfg(bpf_target_arch = "aarch64")]
const COMPAT_BIT: u32 = 1 << 22;

/// Whether the current task is in a 32-bit compat syscall.
#[inline(always)]
pub fn in_compat_syscall() -> Result<bool, Error> {
    Ok(read::<u32>(current_task(), off!(task_ti_compat))? & COMPAT_BIT != 0)
}

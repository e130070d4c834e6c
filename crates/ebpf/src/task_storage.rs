//! `BPF_MAP_TYPE_TASK_STORAGE`: one value per thread, kept in the
//! `task_struct` itself and freed when the thread exits (or the map goes).
//! aya-ebpf 0.2 has no wrapper for it, so this is the BTF map definition
//! its `btf_map_def!` would write (field names and `*const [i32; N]`
//! encodings are what loaders read from BTF), plus the two helpers.
//!
//! Why the programs keep per-call state here rather than in a hash map
//! keyed by thread id: a hash entry is created per call by copying a whole
//! value in (20 KiB for an event, about 1 µs a call on the development
//! host, `bench/README.md`), while task storage is allocated zeroed once per
//! thread and then only looked up. The price is memory that lives as long as
//! the thread: see [`TaskStorage`].
//!
//! The legacy object (feature `legacy`, for kernels before 5.12 that have
//! no task storage for tracing programs) builds the same interface on that
//! hash map instead: see the `legacy` module below.

#[cfg(feature = "legacy")]
pub use legacy::TaskStorage;

#[cfg(not(feature = "legacy"))]
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated,
};

#[cfg(not(feature = "legacy"))]
/// How long [`TaskStorage::current_waiting`] keeps trying at least (ns):
/// far above a scheduler time slice, so the preempted holder of the busy
/// mark has run.
const BUSY_WAIT_NS: u64 = 50_000_000;
#[cfg(not(feature = "legacy"))]
/// Tries it makes at least, whatever the clock says: time the thread did
/// not run (its CPU lent to a holder or to other threads, or a virtual
/// CPU stalled by its host) passes the deadline without a try, and the
/// holder only runs while this thread lets the CPU go. Some 4 ms of
/// lookups on the development host (estimated at 30 ns a try, under the
/// 50 ms), a few of this thread's time slices under emulation. Not more:
/// a holder that still has not run is one the scheduler starves (a
/// `SCHED_IDLE` thread beside busy ones), which waiting longer only
/// starves further (docs/platform.md).
const BUSY_WAIT_MIN_TRIES: u64 = 1 << 17;
#[cfg(not(feature = "legacy"))]
/// Upper bound on its tries (`bpf_loop`'s own limit is 1 << 23).
const BUSY_WAIT_TRIES: u32 = 1 << 23;
#[cfg(not(feature = "legacy"))]
/// Of its tries, one in this many may create the value; the others only
/// look it up. A busy storage fails either kind at once, but a failing
/// allocation (a `NULL` where nothing holds the mark: on 6.2+, or on a
/// kernel that does not preempt the helper) costs a microsecond or more
/// a try, and the wait does not let the CPU go where the kernel does not
/// preempt it.
const BUSY_WAIT_CREATE_EVERY: u64 = 1024;

#[cfg(not(feature = "legacy"))]
/// A task storage map holding one `T` per thread. Needs 5.11+ (task storage
/// for tracing programs, `bpf_get_current_task_btf`); the kernel requires
/// `BPF_F_NO_PREALLOC`, `max_entries` 0 and an `int` key, and charges each
/// value to the memory cgroup of the process that created the map.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader replaces with a map fd;
// nothing dereferences them.
#[cfg(not(feature = "legacy"))]
unsafe impl<T> Sync for TaskStorage<T> {}

#[cfg(not(feature = "legacy"))]
impl<T> TaskStorage<T> {
    /// The placeholder definition the loader fills in.
    pub const fn new() -> Self {
        TaskStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current thread's value, created zeroed if `create` and there is
    /// none yet. `None` when absent (and not created), or when the kernel
    /// could not allocate it or found the storage busy (a BPF program
    /// using task storage interrupted on this CPU).
    #[inline(always)]
    pub fn current(&self, create: bool) -> Option<*mut T> {
        get(core::ptr::from_ref(self), create)
    }

    /// [`current`](Self::current) for a program that must not take a
    /// spurious `None` (the BPF LSM program, which then denies, and the
    /// fentry/fexit programs, which then lose the call): up to 6.1 the
    /// helper only try-locks a per-CPU busy mark, and on a preemptible
    /// kernel a thread preempted inside it on this CPU makes every other
    /// thread's call there fail, which any
    /// local user can arrange with a few threads. So on `None` this tries
    /// again in a `bpf_loop` (5.17+) until the holder has run (the program
    /// itself is preemptible, so the scheduler lets it): at least
    /// `BUSY_WAIT_MIN_TRIES` tries and `BUSY_WAIT_NS`, at most
    /// `BUSY_WAIT_TRIES`. `None` then means the kernel could not allocate
    /// the value, or a holder that did not run for all that time. 6.2+
    /// takes the mark unconditionally for LSM programs.
    #[inline(always)]
    pub fn current_waiting(&self, create: bool) -> Option<*mut T> {
        if let Some(p) = self.current(create) {
            return Some(p);
        }
        let mut w = Wait::<T> {
            map: core::ptr::from_ref(self),
            create,
            // SAFETY: a helper without preconditions.
            deadline: unsafe { generated::bpf_ktime_get_ns() } + BUSY_WAIT_NS,
            got: core::ptr::null_mut(),
        };
        // SAFETY: the callback and its context live for the call.
        unsafe {
            generated::bpf_loop(BUSY_WAIT_TRIES, wait_cb::<T> as *mut core::ffi::c_void, (&raw mut w).cast(), 0);
        }
        (!w.got.is_null()).then_some(w.got)
    }

    /// The thread's call is over: nothing to do, the value stays for the
    /// thread's next call (the legacy object deletes its entry here).
    #[inline(always)]
    pub fn release(&self) {}
}

#[cfg(not(feature = "legacy"))]
#[inline(always)]
fn get<T>(map: *const TaskStorage<T>, create: bool) -> Option<*mut T> {
    let flags = if create { u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE) } else { 0 };
    // SAFETY: the map is a `TaskStorage` definition; the task pointer
    // comes from the helper that returns the verifier's BTF-typed `current`.
    let p = unsafe {
        generated::bpf_task_storage_get(map.cast_mut().cast(), generated::bpf_get_current_task_btf().cast(), core::ptr::null_mut(), flags)
    };
    (!p.is_null()).then_some(p.cast::<T>())
}

/// State of [`TaskStorage::current_waiting`]'s loop.
#[cfg(not(feature = "legacy"))]
struct Wait<T> {
    map: *const TaskStorage<T>,
    create: bool,
    deadline: u64,
    got: *mut T,
}

/// Try `index`: 1 (stop) once the value is had, or once both the tries
/// and the time are up.
#[cfg(not(feature = "legacy"))]
#[inline(never)]
extern "C" fn wait_cb<T>(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Wait` on the caller's stack.
    let w = unsafe { &mut *ctx.cast::<Wait<T>>() };
    if let Some(p) = get(w.map, w.create && index % BUSY_WAIT_CREATE_EVERY == 0) {
        w.got = p;
        return 1;
    }
    // SAFETY: a helper without preconditions.
    i64::from(index >= BUSY_WAIT_MIN_TRIES && unsafe { generated::bpf_ktime_get_ns() } >= w.deadline)
}

/// The legacy object's per-thread state, for 5.8 to 5.12 kernels: a
/// preallocated `BPF_MAP_TYPE_HASH` keyed by thread id (the kernel's pid),
/// at most [`LEGACY_THREADS_MAX`] threads with a value at once.
///
/// A value is created by copying [`ZERO_BYTES`] zeroes in (about a
/// microsecond for an event) and deleted by [`TaskStorage::release`] when
/// the call is over, so the map holds only calls in flight. Preallocated:
/// 5.10 warns (`WARN_ONCE`, a stack trace in the kernel log) when a
/// tracing program uses a hash map that allocates at run time. An exit the
/// programs never see (a kretprobe miss, itself counted) leaves its entry
/// until the thread's next chroot reuses it; a full map makes the next new
/// call a `PendingFull` loss, counted like every other.
#[cfg(feature = "legacy")]
mod legacy {
    use aya_ebpf::{
        bindings::{bpf_map_type::BPF_MAP_TYPE_HASH, BPF_NOEXIST},
        btf_maps::Array,
        helpers::{bpf_get_current_pid_tgid, generated},
        macros::btf_map,
    };
    pub use chroot_guard_common::LEGACY_THREADS_MAX;

    /// Bytes of zeroes new values are copied from: the largest value kept
    /// per thread in the legacy object (`event::Pending`).
    pub const ZERO_BYTES: usize = core::mem::size_of::<crate::event::Pending>();

    /// Never written: array maps start zeroed.
    #[btf_map]
    static CG_ZERO: Array<[u8; ZERO_BYTES], 1> = Array::new();

    /// A hash map holding one `T` per thread id (the BTF definition
    /// `btf_map_def!` would write).
    #[repr(C)]
    pub struct TaskStorage<T> {
        r#type: *const [i32; BPF_MAP_TYPE_HASH as usize],
        key: *const u32,
        value: *const T,
        max_entries: *const [i32; LEGACY_THREADS_MAX as usize],
    }

    // SAFETY: placeholders the loader replaces with a map fd.
    unsafe impl<T> Sync for TaskStorage<T> {}

    impl<T> TaskStorage<T> {
        /// The placeholder definition the loader fills in.
        pub const fn new() -> Self {
            TaskStorage {
                r#type: core::ptr::null(),
                key: core::ptr::null(),
                value: core::ptr::null(),
                max_entries: core::ptr::null(),
            }
        }

        /// The current thread's value, created zeroed if `create` and
        /// absent. `None` when absent (and not created) or the map is full.
        #[inline(always)]
        pub fn current(&self, create: bool) -> Option<*mut T> {
            const { assert!(core::mem::size_of::<T>() <= ZERO_BYTES) };
            let map = core::ptr::from_ref(self).cast_mut().cast();
            let tid = bpf_get_current_pid_tgid() as u32;
            // SAFETY: the map is this definition, the key a u32 on the stack.
            let p = unsafe { generated::bpf_map_lookup_elem(map, (&raw const tid).cast()) };
            if !p.is_null() {
                return Some(p.cast());
            }
            if !create {
                return None;
            }
            let zero = CG_ZERO.get_ptr(0)?;
            // SAFETY: `zero` holds ZERO_BYTES >= size_of::<T>() bytes.
            unsafe {
                if generated::bpf_map_update_elem(map, (&raw const tid).cast(), zero.cast(), u64::from(BPF_NOEXIST)) != 0 {
                    return None;
                }
                let p = generated::bpf_map_lookup_elem(map, (&raw const tid).cast());
                (!p.is_null()).then_some(p.cast())
            }
        }

        /// The thread's call is over: its entry is deleted, so the map
        /// holds calls in flight only.
        #[inline(always)]
        pub fn release(&self) {
            let map = core::ptr::from_ref(self).cast_mut().cast();
            let tid = bpf_get_current_pid_tgid() as u32;
            // SAFETY: as in `current`.
            unsafe { generated::bpf_map_delete_elem(map, (&raw const tid).cast()) };
        }
    }
}

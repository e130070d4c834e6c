//! `chroot-guard ps`: the `iter/task` program. Reading the iterator's file
//! runs it once per task of the host (threads included), then once more
//! with no task; it writes one [`TaskRecord`] with `bpf_seq_write` for each
//! thread-group leader whose root is not its mount namespace's root.
//!
//! aya-ebpf 0.2 has no iterator macro, so the program is declared by hand:
//! its section names the iterator (`iter/task`, attached by BTF id to
//! `bpf_iter_task`), and its context is `struct bpf_iter__task`, a
//! `struct bpf_iter_meta *` then a `struct task_struct *` (NULL on the last
//! call). Iterators run non-sleepable with migration off, and this
//! object's maps belong to the one `ps` that loaded it and reads its file
//! from one thread: the per-CPU walk buffer and record are its own.

use core::ffi::c_void;

use aya_ebpf::{btf_maps::PerCpuArray, helpers::generated, macros::btf_map};
use chroot_guard_common::tasks::{task_flags, TaskRecord, TASK_PATH_MAX};

use crate::kernel::{self, copy_path, Error, Scratch, MASK};

/// The record being built (12 KiB, too big for the 512-byte stack).
#[btf_map]
static CG_TASK_RECORD: PerCpuArray<TaskRecord, 1> = PerCpuArray::new();

/// One call per task; writes a record for chrooted leaders. Always 0:
/// a task it cannot read is skipped, and the iteration goes on.
#[no_mangle]
#[link_section = "iter/task"]
pub fn cg_iter_task(ctx: *mut c_void) -> i32 {
    let _ = report(ctx.cast_const().cast());
    0
}

#[inline(always)]
fn report(ctx: *const *const u8) -> Result<(), Error> {
    // SAFETY: the context is `struct bpf_iter__task`, two pointers; the
    // verifier types each load (meta, then task, which may be NULL).
    let (meta, task) = unsafe { (core::ptr::read_volatile(ctx), core::ptr::read_volatile(ctx.add(1))) };
    if task.is_null() || meta.is_null() || kernel::group_leader(task) != task {
        return Ok(());
    }
    let task = kernel::Task::of(task);
    if !kernel::is_chrooted(&task)? {
        return Ok(());
    }
    let rec = CG_TASK_RECORD.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: a map value of this CPU, see the module comment.
    let rec = unsafe { &mut *rec };
    rec.tgid = kernel::tgid(task.ptr);
    rec.ppid = kernel::parent_tgid(&task);
    rec.uid = kernel::real_uid(kernel::cred(&task));
    rec.mnt_ns = kernel::mnt_ns_inum(&task);
    rec.start_ns = kernel::start_boottime(task.ptr);
    rec.cgroup_id = kernel::cgroup_id(task.ptr).unwrap_or(0);
    rec.comm = kernel::comm(task.ptr)?;
    rec.flags = 0;
    rec.cwd_len = 0;
    rec.exe_len = 0;
    rec.exe_flags = 0;

    let ns_root = kernel::ns_root_mount(task.nsproxy);
    let (root_mnt, root_dentry) = kernel::fs_root(&task)?;
    let w = kernel::walk(Scratch::PerCpu, ns_root, root_mnt, root_dentry)?;
    rec.root_len = copy_path(rec.data.as_mut_ptr(), &w);
    if w.unreachable {
        rec.flags |= task_flags::ROOT_UNREACHABLE;
    } else if !w.complete {
        rec.flags |= task_flags::ROOT_TRUNCATED;
    }

    if let Ok((pwd_mnt, pwd_dentry)) = kernel::fs_pwd(task.fs) {
        match kernel::is_below(root_mnt, root_dentry, pwd_mnt, pwd_dentry) {
            Ok(Some(false)) => rec.flags |= task_flags::CWD_OUTSIDE_ROOT,
            Ok(Some(true)) => {}
            _ => rec.flags |= task_flags::CWD_BELOW_UNKNOWN,
        }
        if let Ok(w) = kernel::walk(Scratch::PerCpu, ns_root, pwd_mnt, pwd_dentry) {
            let at = u32::from(rec.root_len) & MASK;
            // SAFETY: `at` is masked to TASK_PATH_MAX - 1, and the path is
            // at most that long: inside `data` (see TASK_DATA_BYTES).
            rec.cwd_len = copy_path(unsafe { rec.data.as_mut_ptr().add(at as usize) }, &w);
            rec.flags |= task_flags::CWD_PRESENT;
            if w.unreachable {
                rec.flags |= task_flags::CWD_UNREACHABLE;
            } else if !w.complete {
                rec.flags |= task_flags::CWD_TRUNCATED;
            }
        }
    }

    // A task without an executable (its mm gone while it exits) gets none.
    if let Ok((w, bits)) = kernel::exe_walk(Scratch::PerCpu, &task) {
        let at = (u32::from(rec.root_len) + u32::from(rec.cwd_len)) & (2 * TASK_PATH_MAX as u32 - 1);
        // SAFETY: as above, at most 2 * TASK_PATH_MAX - 1 plus a path.
        rec.exe_len = copy_path(unsafe { rec.data.as_mut_ptr().add(at as usize) }, &w);
        rec.exe_flags = bits;
    }

    let len = rec.record_len() as u32;
    // SAFETY: `meta` is the verifier-typed `struct bpf_iter_meta *`, whose
    // first field is `struct seq_file *seq`; the record is `len` bytes of
    // a map value.
    unsafe {
        let seq = core::ptr::read_volatile(meta.cast::<*mut aya_ebpf::bindings::seq_file>());
        generated::bpf_seq_write(seq, (rec as *const TaskRecord).cast(), len);
    }
    Ok(())
}

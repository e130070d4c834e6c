//! Tracepoint mode: `syscalls:sys_enter_chroot` and `syscalls:sys_exit_chroot`.
//! Needs only `CONFIG_FTRACE_SYSCALLS`, so it is the fallback where kprobes
//! are missing and fentry is refused. No hook sees the resolved `struct path`
//! here: the exit hook reads the new root from `current->fs->root` after a
//! successful call.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use chroot_guard_common::{
    probes::{TP_ENTER_FILENAME_OFFSET, TP_EXIT_RET_OFFSET},
    Mode,
};

use crate::{
    event,
    kernel::{self, Scratch},
};

/// `syscalls:sys_enter_chroot`: `filename` is a user pointer in the record.
#[tracepoint]
pub fn cg_tp_enter(ctx: TracePointContext) -> u32 {
    let _ = try_cg_tp_enter(&ctx);
    0
}

fn try_cg_tp_enter(ctx: &TracePointContext) -> Result<(), kernel::Error> {
    // SAFETY: the offset is inside the tracepoint record.
    let filename: *const u8 = unsafe { ctx.read_at(TP_ENTER_FILENAME_OFFSET) }?;
    event::begin(filename, Mode::Tracepoint)
}

/// `syscalls:sys_exit_chroot`: `ret` is a `long` in the record.
#[tracepoint]
pub fn cg_tp_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset is inside the tracepoint record.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(TP_EXIT_RET_OFFSET) } {
        let _ = event::finish(Scratch::PerCpu, ret);
    }
    0
}

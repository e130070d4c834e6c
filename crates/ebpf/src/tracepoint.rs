//! Tracepoint mode: `syscalls:sys_enter_chroot` and `syscalls:sys_exit_chroot`.
//! Needs only `CONFIG_FTRACE_SYSCALLS`, so it is the fallback where kprobes
//! are missing and fentry is refused. No hook sees the resolved `struct path`
//! here: the exit hook reads the new root from `current->fs->root` after a
//! successful call.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use chroot_guard_common::{
    probes::{COMPAT_CHROOT_NR, TP_ENTER_FILENAME_OFFSET, TP_EXIT_RET_OFFSET, X32_CHROOT_NR},
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

/// Raw `sys_enter` (every syscall of every task): the syscall tracepoints do
/// not fire for 32-bit compat calls (x86_64's ia32, arm64's AArch32) or
/// x32 ones, so these are caught here, filtered in the kernel to a compat
/// chroot (the task's compat bit and number 61) or an x32 one (x86_64) before
/// anything else is read.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn cg_raw_enter32(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    let regs: *const u8 = ctx.arg(0);
    let filename = if id == X32_CHROOT_NR {
        kernel::syscall_arg0(regs)
    } else if id == COMPAT_CHROOT_NR && kernel::in_compat_syscall().unwrap_or(false) {
        kernel::syscall_compat_arg0(regs)
    } else {
        return 0;
    };
    if let Ok(filename) = filename {
        let _ = event::begin(filename, Mode::Tracepoint);
    }
    0
}

/// Raw `sys_exit`: the result of a compat or x32 chroot [`cg_raw_enter32`]
/// began.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn cg_raw_exit32(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let nr = kernel::syscall_nr(regs).unwrap_or(-1);
    if nr == X32_CHROOT_NR || (nr == COMPAT_CHROOT_NR && kernel::in_compat_syscall().unwrap_or(false)) {
        let ret: i64 = ctx.arg(1);
        let _ = event::finish(Scratch::PerCpu, ret);
    }
    0
}

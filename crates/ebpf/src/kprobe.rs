//! kprobe/kretprobe mode: the same two functions as fentry mode, for kernels
//! with `CONFIG_KPROBES` but without ftrace direct calls or BTF.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use chroot_guard_common::Mode;

use crate::{
    event,
    kernel::{self, Scratch},
};

/// kprobe on the syscall wrapper: its first argument is the user call's
/// `struct pt_regs *`.
#[kprobe]
pub fn cg_kprobe_sys(ctx: ProbeContext) -> u32 {
    let _ = try_cg_kprobe_sys(&ctx);
    0
}

fn try_cg_kprobe_sys(ctx: &ProbeContext) -> Result<(), kernel::Error> {
    let regs: *const u8 = ctx.arg(0).ok_or(0)?;
    let filename = kernel::syscall_arg0(regs)?;
    event::begin(filename, Mode::Kprobe)
}

/// kprobe on `security_path_chroot(const struct path *path)`.
#[kprobe]
pub fn cg_kprobe_lsm(ctx: ProbeContext) -> u32 {
    if let Some(path) = ctx.arg::<*const u8>(0) {
        let _ = event::resolve(Scratch::PerCpu, path);
    }
    0
}

/// kretprobe on `security_path_chroot`: the verdict.
#[kretprobe]
pub fn cg_kret_lsm(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    let _ = event::lsm_return(Scratch::PerCpu, ret as i32);
    0
}

/// kretprobe on the syscall wrapper: the result.
#[kretprobe]
pub fn cg_kret_sys(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    let _ = event::finish(Scratch::PerCpu, ret);
    0
}

/// kprobe on the 32-bit compat syscall wrapper (`__ia32_sys_chroot`).
#[kprobe]
pub fn cg_kprobe_sys32(ctx: ProbeContext) -> u32 {
    if let Some(regs) = ctx.arg::<*const u8>(0) {
        if let Ok(filename) = kernel::syscall_compat_arg0(regs) {
            let _ = event::begin(filename, Mode::Kprobe);
        }
    }
    0
}

/// kretprobe on the 32-bit compat syscall wrapper: the result.
#[kretprobe]
pub fn cg_kret_sys32(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    let _ = event::finish(Scratch::PerCpu, ret);
    0
}

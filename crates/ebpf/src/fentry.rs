//! fentry/fexit mode (`BPF_PROG_TYPE_TRACING`): the syscall entry
//! (`__x64_sys_chroot`) and `security_path_chroot`. The loader picks the
//! syscall symbol for the architecture; BTF gives the arguments as `u64`s.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use chroot_guard_common::Mode;

use crate::{
    event,
    kernel::{self, Scratch},
};

/// fentry on the syscall wrapper: `arg0` is the `struct pt_regs *` of the
/// user call, whose first argument register holds `filename`.
#[fentry]
pub fn cg_fentry_sys(ctx: FEntryContext) -> i32 {
    let _ = try_cg_fentry_sys(&ctx);
    0
}

fn try_cg_fentry_sys(ctx: &FEntryContext) -> Result<(), kernel::Error> {
    let regs: *const u8 = ctx.arg(0);
    let filename = kernel::syscall_arg0(regs)?;
    event::begin(filename, Mode::Fentry)
}

/// fentry on `security_path_chroot(const struct path *path)`.
#[fentry]
pub fn cg_fentry_lsm(ctx: FEntryContext) -> i32 {
    let _ = event::resolve(Scratch::PerThread, ctx.arg(0));
    0
}

/// fexit on `security_path_chroot`: the `int` verdict follows the one
/// argument in the context.
#[fexit]
pub fn cg_fexit_lsm(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    let _ = event::lsm_return(Scratch::PerThread, ret as i32);
    0
}

/// fexit on the syscall wrapper: the `long` result follows the one argument.
#[fexit]
pub fn cg_fexit_sys(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    let _ = event::finish(Scratch::PerThread, ret);
    0
}

/// fentry on the 32-bit compat syscall wrapper (`__ia32_sys_chroot`): as
/// [`cg_fentry_sys`], the argument in the compat register.
#[fentry]
pub fn cg_fentry_sys32(ctx: FEntryContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    if let Ok(filename) = kernel::syscall_compat_arg0(regs) {
        let _ = event::begin(filename, Mode::Fentry);
    }
    0
}

/// fexit on the 32-bit compat syscall wrapper: the result.
#[fexit]
pub fn cg_fexit_sys32(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    let _ = event::finish(Scratch::PerThread, ret);
    0
}

//! Kernel stacks at the chroot hooks, for `chroot-guard stacks` (the typed
//! `bpftrace -e 'k:*chroot* { @[kstack] = count(); }'`), and the minimal
//! programs `chroot-guard doctor` loads to learn what the kernel allows.
//!
//! The loader loads one instance of the object per hook, so each instance's
//! `CG_STACK_COUNTS` belongs to one hook.

use aya_ebpf::{
    btf_maps::{HashMap, StackTrace},
    macros::{btf_map, fentry, kprobe, lsm, tracepoint},
    programs::{tracing::StackIdContext, FEntryContext, LsmContext, ProbeContext, TracePointContext},
};
use chroot_guard_common::StackKey;

/// Kernel stacks seen at the hook, by stack id (`bpf_get_stackid`).
#[btf_map]
static CG_STACKS: StackTrace<1024> = StackTrace::new();

/// How often each stack (id and, at an arm64 kprobe, link register) was seen.
#[btf_map]
static CG_STACK_COUNTS: HashMap<StackKey, u64, 1024> = HashMap::new();

/// Key of the hits that got no kernel stack: at syscall tracepoints some
/// kernels (6.1) hand the program the user-mode registers, and
/// `bpf_get_stackid` then has no kernel frames to walk.
const NO_STACK: u32 = u32::MAX;

#[inline(always)]
fn count_stack<C: StackIdContext>(ctx: &C, lr: u64) {
    let id = ctx.get_stackid(&CG_STACKS, 0).map_or(NO_STACK, |id| id as u32);
    // Hits without a stack count as one, whatever the link register held.
    let key = StackKey { id, _pad: 0, lr: if id == NO_STACK { 0 } else { lr } };
    match CG_STACK_COUNTS.get_ptr_mut(&key) {
        // SAFETY: a map value; a lost increment under a race only undercounts.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = CG_STACK_COUNTS.insert(&key, &1, 0);
        }
    }
}

/// The link register at an arm64 kprobe ([`StackKey::lr`]); 0 elsewhere
/// (x86-64's `call` pushes the return address where the unwinder finds it).
#[inline(always)]
fn kprobe_lr(ctx: &ProbeContext) -> u64 {
    // SAFETY: a kprobe's context is the probed function's `pt_regs`, which
    // the verifier lets the program read.
    #[cfg(bpf_target_arch = "aarch64")]
    return unsafe { (*ctx.regs).regs[30] };
    #[cfg(not(bpf_target_arch = "aarch64"))]
    {
        let _ = ctx;
        0
    }
}

/// Stack counter for tracepoints (`syscalls:sys_enter_chroot`, `sys_exit_chroot`).
#[tracepoint]
pub fn cg_stk_tp(ctx: TracePointContext) -> u32 {
    count_stack(&ctx, 0);
    0
}

/// Stack counter for kprobes (any `*chroot*` function).
#[kprobe]
pub fn cg_stk_kprobe(ctx: ProbeContext) -> u32 {
    count_stack(&ctx, kprobe_lr(&ctx));
    0
}

/// Stack counter for fentry (any `*chroot*` function).
#[fentry]
pub fn cg_stk_fentry(ctx: FEntryContext) -> i32 {
    count_stack(&ctx, 0);
    0
}

/// The `lsm/path_chroot` check program: allows everything (returns 0).
/// `doctor` loads and attaches it to learn whether the BPF LSM runs here.
#[lsm]
pub fn cg_chk_lsm(_ctx: LsmContext) -> i32 {
    0
}

//! The guard: `lsm/path_chroot` decides every chroot(2) by policy, on the
//! `struct path` the kernel resolved (no second read of user memory, so no
//! time-of-check/time-of-use gap), and reports each decision on the ring
//! buffer. Needs `CONFIG_BPF_LSM` and `bpf` in the active LSM list (5.7+).
//!
//! The policy lives in two slots (see `chroot_guard_common::policy`); the
//! program reads `CG_ACTIVE` once and uses that slot throughout.

use aya_ebpf::{
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
    macros::{btf_map, lsm},
    programs::LsmContext,
};
use chroot_guard_common::{
    flags,
    policy::{
        cond, hash_step, policy_flags, PathKey, PathMasks, PolicyHeader, PolicyRule, ACTION_DENY, MAX_RULES,
        MODE_ENFORCE, NO_RULE,
    },
    ChrootEvent, Counter, EventKind,
};

use crate::{
    event::{count, fill_identity, read_argument},
    kernel::{self, Error, Walk, MASK},
    CG_EVENTS, CG_ZERO,
};

/// The active slot (0 or 1), flipped by user space after the other slot is
/// fully written.
#[btf_map]
static CG_ACTIVE: Array<u32, 1> = Array::new();

/// Per-slot policy headers.
#[btf_map]
static CG_POLICY: Array<PolicyHeader, 2> = Array::new();

/// Per-slot rules: entry `slot * MAX_RULES + index`.
#[btf_map]
static CG_RULES: Array<PolicyRule, { 2 * MAX_RULES }> = Array::new();

/// Hashed rule paths (`path`, `subtree`) of both slots.
#[btf_map]
static CG_PATHS: HashMap<PathKey, PathMasks, 2048> = HashMap::new();

/// Hashed rule executables (`exe`) of both slots: the rules naming each.
#[btf_map]
static CG_EXES: HashMap<PathKey, u64, 1024> = HashMap::new();

/// Per-CPU buffer where the decision event is built.
#[btf_map]
static CG_DECISION: PerCpuArray<ChrootEvent, 1> = PerCpuArray::new();

/// `lsm/path_chroot`: `security_path_chroot(const struct path *path)`; the
/// second context argument is the verdict of the BPF LSM programs before
/// this one. Internal failures allow the call and count `LsmError`.
#[lsm(hook = "path_chroot")]
pub fn cg_lsm_chroot(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    match try_cg_lsm_chroot(&ctx) {
        Ok(ret) => ret,
        Err(_) => {
            count(Counter::LsmError);
            0
        }
    }
}

/// State of one hashing pass over a walked path in the scratch buffer,
/// shared with [`hash_step_cb`] through `bpf_loop`.
#[repr(C)]
struct HashPass {
    /// Start of the path in the scratch buffer.
    pos: u32,
    /// Policy slot, for the prefix lookups.
    slot: u32,
    /// 1: look every prefix ending before a `/` up in `CG_PATHS`.
    prefixes: u32,
    /// Explicit padding.
    _pad: u32,
    /// Running hash.
    hash: u64,
    /// `subtree` masks of the prefixes found.
    subtree: u64,
}

/// One byte of a [`HashPass`]. `bpf_loop` (5.17+) has the verifier check
/// this body once instead of once per byte, which keeps the LSM program
/// far under the 1M-instruction limit.
#[inline(never)]
extern "C" fn hash_step_cb(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `HashPass` on the caller's stack.
    let pass = unsafe { &mut *ctx.cast::<HashPass>() };
    let Some(scratch) = crate::CG_SCRATCH.get_ptr(0) else { return 1 };
    let k = index as u32;
    // SAFETY: masked into the scratch value.
    let c = unsafe { *scratch.cast::<u8>().add(((pass.pos + k) & MASK) as usize) };
    if pass.prefixes != 0 && c == b'/' && k > 0 {
        if let Some(m) = CG_PATHS.get_ptr(&PathKey { slot: pass.slot, len: k, hash: pass.hash }) {
            // SAFETY: a map value.
            pass.subtree |= unsafe { (*m).subtree };
        }
    }
    pass.hash = hash_step(pass.hash, c);
    0
}

/// Hashes the walked path with the policy's seed; with `prefixes`, also
/// collects the `subtree` masks of every directory it lies below (each
/// prefix ending before a `/`).
#[inline(always)]
fn hash_walk(slot: u32, seed: u64, w: &Walk, prefixes: bool) -> HashPass {
    let mut pass = HashPass { pos: w.pos, slot, prefixes: u32::from(prefixes), _pad: 0, hash: seed, subtree: 0 };
    // SAFETY: the callback and its context live for the call.
    unsafe {
        generated::bpf_loop(
            w.len(),
            hash_step_cb as *mut core::ffi::c_void,
            (&raw mut pass).cast(),
            0,
        );
    }
    pass
}

/// Masks of the rules whose `path` / `subtree` match the walked path.
#[inline(always)]
fn path_masks(slot: u32, seed: u64, w: &Walk) -> (u64, u64) {
    let pass = hash_walk(slot, seed, w, true);
    let (mut exact, mut subtree) = (0u64, pass.subtree);
    if let Some(m) = CG_PATHS.get_ptr(&PathKey { slot, len: w.len(), hash: pass.hash }) {
        // SAFETY: a map value.
        unsafe {
            exact |= (*m).exact;
            subtree |= (*m).subtree;
        }
    }
    (exact, subtree)
}

fn try_cg_lsm_chroot(ctx: &LsmContext) -> Result<i32, Error> {
    let slot = *CG_ACTIVE.get(0).ok_or(0)? & 1;
    let header = *CG_POLICY.get(slot).ok_or(0)?;
    let ev_ptr = CG_DECISION.get_ptr_mut(0).ok_or(0)?;
    let zero = CG_ZERO.get_ptr(0).ok_or(0)?;
    // SAFETY: both are whole ChrootEvent map values.
    unsafe {
        generated::bpf_probe_read_kernel(ev_ptr.cast(), core::mem::size_of::<ChrootEvent>() as u32, zero.cast());
    }
    // SAFETY: this CPU's value; nothing else runs on it meanwhile.
    let ev = unsafe { &mut *ev_ptr };
    ev.kind = EventKind::Decision as u8;
    ev.policy_gen = header.generation;
    let comm = bpf_get_current_comm().map_err(Error::from)?;
    fill_identity(ev, bpf_get_current_pid_tgid(), bpf_get_current_uid_gid(), comm);
    let task = kernel::current_task();
    // The argument as passed, from the syscall's saved user registers
    // (`bpf_task_pt_regs` wants the BTF-typed task pointer, 5.15+).
    // SAFETY: helpers without preconditions beyond a BTF task pointer.
    let regs = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) } as *const u8;
    if let Ok(filename) = kernel::syscall_arg0(regs) {
        read_argument(ev, filename);
    }

    let path: *const u8 = ctx.arg(0);
    let (vfsmnt, dentry) = kernel::path_parts(path)?;
    let w = kernel::resolve_into(ev, vfsmnt, dentry)?;
    let truncated = !w.complete;
    let (exact, subtree) = path_masks(slot, header.seed, &w);

    let mut exe_mask = 0u64;
    if header.flags & policy_flags::USES_EXE != 0 {
        if let Ok((m, d)) = kernel::exe_path(task) {
            let e = kernel::walk(m, d)?;
            let hash = hash_walk(slot, header.seed, &e, false).hash;
            if let Some(m) = CG_EXES.get_ptr(&PathKey { slot, len: e.len(), hash }) {
                // SAFETY: a map value.
                exe_mask = unsafe { *m };
            }
        }
    } else {
        ev.flags |= flags::EXE_ABSENT;
    }
    let chrooted = ev.flags & flags::CALLER_CHROOTED != 0;

    let mut action = header.default_action;
    let mut rule = NO_RULE;
    let base = slot * MAX_RULES as u32;
    for i in 0..MAX_RULES as u32 {
        if i >= header.rule_count {
            break;
        }
        let Some(r) = CG_RULES.get(base + i) else { break };
        let bit = 1u64 << i;
        let c = r.conds;
        // A path condition on a path cut short by the walk bounds is
        // unknown: it holds for deny rules (fail closed) and not for others.
        let unknown_path = truncated && c & (cond::PATH | cond::SUBTREE) != 0;
        let path_ok = if unknown_path {
            r.action == ACTION_DENY
        } else {
            (c & cond::PATH == 0 || exact & bit != 0) && (c & cond::SUBTREE == 0 || subtree & bit != 0)
        };
        if !path_ok
            || (c & cond::UID != 0 && r.uid != ev.uid)
            || (c & cond::EUID != 0 && r.euid != ev.euid)
            || (c & cond::GID != 0 && r.gid != ev.gid)
            || (c & cond::EGID != 0 && r.egid != ev.egid)
            || (c & cond::COMM != 0 && r.comm != ev.comm)
            || (c & cond::EXE != 0 && exe_mask & bit == 0)
            || (c & cond::CGROUP != 0 && r.cgroup_id != ev.cgroup_id)
            || (c & cond::CHROOTED != 0 && (r.chrooted != 0) != chrooted)
        {
            continue;
        }
        action = r.action;
        rule = i as u16;
        break;
    }

    let deny = action == ACTION_DENY && header.mode == MODE_ENFORCE;
    ev.rule = rule;
    ev.flags |= (u32::from(action) & flags::ACTION_MASK) << flags::ACTION_SHIFT;
    if header.mode == MODE_ENFORCE {
        ev.flags |= flags::ENFORCING;
    }
    let ret = if deny { -1 } else { 0 }; // -EPERM
    if deny {
        ev.flags |= flags::DENIED;
    }
    ev.ret = i64::from(ret);
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { generated::bpf_ktime_get_boot_ns() };
    if CG_EVENTS.output(&*ev, 0).is_err() {
        count(Counter::RingBufFull);
    }
    Ok(ret)
}

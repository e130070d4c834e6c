//! The guard: `lsm/path_chroot` decides every chroot(2) by policy, on the
//! `struct path` the kernel resolved (no second read of user memory, so no
//! time-of-check/time-of-use gap), and reports each decision on the ring
//! buffer. Needs `CONFIG_BPF_LSM` with `bpf` in the active LSM list, and
//! 5.17+ (`bpf_loop`; `bpf_task_pt_regs` is 5.15).
//!
//! The policy lives in two slots (see `chroot_guard_common::policy`). The
//! program reads `CG_ACTIVE` once, copies that slot's header, and checks at
//! the end that the slot's generation did not change meanwhile (user space
//! zeroes it before rewriting a slot): a torn read applies the default
//! action, flags the event and counts `LsmError`. Everything the decision
//! builds lives in per-thread map entries: LSM programs run under
//! `migrate_disable()` only, so on a preemptible kernel per-CPU buffers
//! could be shared by two chroots.

use aya_ebpf::{
    btf_maps::{Array, HashMap},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
    macros::{btf_map, lsm},
    programs::LsmContext,
};
use chroot_guard_common::{
    flags,
    policy::{
        cond, hash_step, policy_flags, PathKey, PathMasks, PolicyHeader, PolicyRule, ACTION_DENY, MAX_RULES,
        MODE_ENFORCE, NO_RULE, RULE_ID_BYTES,
    },
    ChrootEvent, Counter, EventKind,
};

use crate::{
    event::{count, fill_identity, read_argument, send},
    kernel::{self, Error, Scratch, Walk, MASK},
    CG_ZERO,
};

/// The active slot (0 or 1), flipped by user space after the other slot is
/// fully written.
#[btf_map]
static CG_ACTIVE: Array<u32, 1> = Array::new();

/// Per-slot policy headers; `generation` 0 while user space rewrites a slot.
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

/// Rule id of each compiled rule, entry `slot * MAX_RULES + index`,
/// zero-padded. The program never reads it: it is there so a pinned guard
/// (`enforce --pin`) carries its rule ids in bpffs for `chroot-guard status`
/// and for updates from a later process.
#[btf_map]
static CG_RULE_IDS: Array<[u8; RULE_ID_BYTES], { 2 * MAX_RULES }> = Array::new();

/// Decision events being built, by thread id (allocated on use).
#[btf_map]
static CG_DECISIONS: HashMap<u32, ChrootEvent, 10240, { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

/// `-EPERM`.
const EPERM: i32 = -1;

/// `lsm/path_chroot`: `security_path_chroot(const struct path *path)`; the
/// second context argument is the verdict of the BPF LSM programs before
/// this one, kept when it already denies.
#[lsm(hook = "path_chroot")]
pub fn cg_lsm_chroot(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    let Some(slot) = CG_ACTIVE.get(0).map(|s| *s & 1) else { return 0 };
    let Some(header) = CG_POLICY.get(slot).copied() else { return 0 };
    let tid = bpf_get_current_pid_tgid() as u32;
    let ret = match decide(&ctx, slot, &header, tid) {
        Ok(ret) => ret,
        Err(_) => {
            // Could not evaluate (a map or helper failed): the default
            // action decides, and the failure is counted.
            count(Counter::LsmError);
            if header.mode == MODE_ENFORCE && header.default_action == ACTION_DENY {
                EPERM
            } else {
                0
            }
        }
    };
    let _ = CG_DECISIONS.remove(&tid);
    Scratch::PerThread.release();
    ret
}

/// State of one hashing pass over a walked path, shared with
/// [`hash_step_cb`] through `bpf_loop`.
#[repr(C)]
struct HashPass {
    /// Start of the path in the thread's scratch buffer.
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
    let Some(scratch) = Scratch::PerThread.existing() else { return 1 };
    let k = index as u32;
    // SAFETY: masked into the scratch value.
    let c = unsafe { *scratch.add(((pass.pos + k) & MASK) as usize) };
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
/// prefix ending before a `/`). Consumes the walk: the scratch buffer is
/// reused by the next one.
#[inline(always)]
fn hash_walk(slot: u32, seed: u64, w: Walk, prefixes: bool) -> HashPass {
    let mut pass = HashPass { pos: w.pos, slot, prefixes: u32::from(prefixes), _pad: 0, hash: seed, subtree: 0 };
    // SAFETY: the callback and its context live for the call.
    unsafe {
        generated::bpf_loop(w.len(), hash_step_cb as *mut core::ffi::c_void, (&raw mut pass).cast(), 0);
    }
    pass
}

/// Masks of the rules whose `path` / `subtree` match the walked path.
#[inline(always)]
fn path_masks(slot: u32, seed: u64, w: Walk) -> (u64, u64) {
    let len = w.len();
    let pass = hash_walk(slot, seed, w, true);
    let (mut exact, mut subtree) = (0u64, pass.subtree);
    if let Some(m) = CG_PATHS.get_ptr(&PathKey { slot, len, hash: pass.hash }) {
        // SAFETY: a map value.
        unsafe {
            exact |= (*m).exact;
            subtree |= (*m).subtree;
        }
    }
    (exact, subtree)
}

/// Rules naming the caller's executable; `None` when it cannot be known
/// (no executable, or its path was cut short).
#[inline(always)]
fn exe_mask(slot: u32, seed: u64, task: *const u8) -> Option<u64> {
    let (m, d) = kernel::exe_path(task).ok()?;
    let w = kernel::walk(Scratch::PerThread, m, d).ok()?;
    if !w.complete {
        return None;
    }
    let len = w.len();
    let hash = hash_walk(slot, seed, w, false).hash;
    // SAFETY: a map value.
    Some(CG_EXES.get_ptr(&PathKey { slot, len, hash }).map_or(0, |m| unsafe { *m }))
}

fn decide(ctx: &LsmContext, slot: u32, header: &PolicyHeader, tid: u32) -> Result<i32, Error> {
    let zero = CG_ZERO.get(0).ok_or(0)?;
    CG_DECISIONS.insert(&tid, zero, 0).map_err(Error::from)?;
    // SAFETY: this thread's entry; nothing else writes it.
    let ev = unsafe { &mut *CG_DECISIONS.get_ptr_mut(&tid).ok_or(0)? };
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
    let w = kernel::resolve_into(Scratch::PerThread, ev, vfsmnt, dentry)?;
    let path_known = w.complete;
    let (exact, subtree) = path_masks(slot, header.seed, w);

    let exe = if header.flags & policy_flags::USES_EXE != 0 { exe_mask(slot, header.seed, task) } else { None };
    if exe.is_none() {
        ev.flags |= flags::EXE_UNKNOWN;
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
        // A condition that cannot be judged (a path or executable cut short
        // by the walk bounds) holds for deny rules and not for others.
        let unknown_holds = r.action == ACTION_DENY;
        let path_ok = if c & (cond::PATH | cond::SUBTREE) == 0 {
            true
        } else if !path_known {
            unknown_holds
        } else {
            (c & cond::PATH == 0 || exact & bit != 0) && (c & cond::SUBTREE == 0 || subtree & bit != 0)
        };
        let exe_ok = c & cond::EXE == 0 || exe.map_or(unknown_holds, |m| m & bit != 0);
        if !path_ok
            || !exe_ok
            || (c & cond::UID != 0 && r.uid != ev.uid)
            || (c & cond::EUID != 0 && r.euid != ev.euid)
            || (c & cond::GID != 0 && r.gid != ev.gid)
            || (c & cond::EGID != 0 && r.egid != ev.egid)
            || (c & cond::COMM != 0 && r.comm != ev.comm)
            || (c & cond::CGROUP != 0 && r.cgroup_id != ev.cgroup_id)
            || (c & cond::MNT_NS != 0 && r.mnt_ns != ev.mnt_ns)
            || (c & cond::CHROOTED != 0 && (r.chrooted != 0) != chrooted)
        {
            continue;
        }
        action = r.action;
        rule = i as u16;
        break;
    }

    // Seqlock check: the slot must not have been rewritten while we read it.
    // SAFETY: a map value; volatile so the compiler re-reads it here.
    let now_gen = CG_POLICY.get_ptr(slot).map(|h| unsafe { core::ptr::read_volatile(&(*h).generation) });
    if header.generation == 0 || now_gen != Some(header.generation) {
        count(Counter::LsmError);
        ev.flags |= flags::POLICY_TORN;
        action = header.default_action;
        rule = NO_RULE;
    }

    let deny = action == ACTION_DENY && header.mode == MODE_ENFORCE;
    ev.rule = rule;
    ev.flags |= (u32::from(action) & flags::ACTION_MASK) << flags::ACTION_SHIFT;
    if header.mode == MODE_ENFORCE {
        ev.flags |= flags::ENFORCING;
    }
    let ret = if deny { EPERM } else { 0 };
    if deny {
        ev.flags |= flags::DENIED;
    }
    ev.ret = i64::from(ret);
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { generated::bpf_ktime_get_boot_ns() };
    if send(ev).is_err() {
        count(Counter::RingBufFull);
    }
    Ok(ret)
}

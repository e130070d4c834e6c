//! The guard: `lsm/path_chroot` decides every chroot(2) by policy, on the
//! `struct path` the kernel resolved (no second read of user memory, so no
//! time-of-check/time-of-use gap), and reports each decision on the ring
//! buffer. Needs `CONFIG_BPF_LSM` with `bpf` in the active LSM list, and
//! 5.17+ (`bpf_loop`; `bpf_task_pt_regs` is 5.15).
//!
//! The policy lives in two slots (see `chroot_guard_common::policy`). The
//! program reads `CG_ACTIVE` once, copies that slot's header, and checks at
//! the end that the slot's generation did not change meanwhile (user space
//! zeroes it before rewriting a slot). Whatever stops a decision (a torn
//! read, a failed kernel read) applies the policy's fail action
//! (`failMode`), but a decision without its per-thread memory denies
//! (`failure_action`); each counts `LsmError` and is reported as a decision
//! with its own flag. Everything the decision builds lives in task storage
//! (per thread): LSM programs run under `migrate_disable()` only, so on a
//! preemptible kernel per-CPU buffers could be shared by two chroots.
//!
//! Decisions share the ring buffer by action: allow records are written only
//! while it is less than half full, so a flood of allowed calls never pushes
//! out a deny or audit record; every record not written is counted per
//! action.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE},
    btf_maps::{Array, HashMap},
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
    macros::{btf_map, lsm},
    programs::LsmContext,
};
use chroot_guard_common::{
    flags,
    policy::{
        cond, hash_step, policy_flags, rule_flags, ExeKey, PathKey, PathMasks, PolicyHeader, PolicyRule,
        ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, INIT_USER_NS_INUM, MAX_EXES, MAX_PATHS, MAX_RULES, MODE_ENFORCE,
        NO_RULE, RULE_ID_BYTES,
    },
    ChrootEvent, Counter, EventKind, COMM_LEN, EVENT_HEADER_BYTES,
};

use crate::{
    event::{attribute, caller_cache, clear_header, clear_header_at, count, fill_identity, read_argument, send},
    kernel::{self, Error, Scratch, Walk, MASK},
    task_storage::TaskStorage,
    CG_EVENTS, CG_THREAD_SCRATCH,
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
static CG_PATHS: HashMap<PathKey, PathMasks, { 2 * MAX_PATHS }> = HashMap::new();

/// Rule executables (`exe`) of both slots, by identity: the rules naming
/// each.
#[btf_map]
static CG_EXES: HashMap<ExeKey, u64, { 2 * MAX_EXES }> = HashMap::new();

/// Rule id of each compiled rule, entry `slot * MAX_RULES + index`,
/// zero-padded. The program never reads it: it is there so a pinned guard
/// (`enforce --pin`) carries its rule ids in bpffs for `chroot-guard status`
/// and for updates from a later process.
#[btf_map]
static CG_RULE_IDS: Array<[u8; RULE_ID_BYTES], { 2 * MAX_RULES }> = Array::new();

/// The decision event each thread builds (task storage: allocated on the
/// thread's first decision, reused, freed when the thread exits).
#[btf_map]
static CG_DECISIONS: TaskStorage<ChrootEvent> = TaskStorage::new();

/// `-EPERM`.
const EPERM: i32 = -1;

/// What a decision amounts to: `-EPERM` for a deny in enforce mode, else 0.
#[inline(always)]
fn verdict(header: &PolicyHeader, action: u8) -> i32 {
    if action == ACTION_DENY && header.mode == MODE_ENFORCE {
        EPERM
    } else {
        0
    }
}

/// The `flags` bits of a decision: action, mode, denied.
#[inline(always)]
fn decision_flags(header: &PolicyHeader, action: u8) -> u32 {
    let mut f = (u32::from(action) & flags::ACTION_MASK) << flags::ACTION_SHIFT;
    if header.mode == MODE_ENFORCE {
        f |= flags::ENFORCING;
    }
    if verdict(header, action) != 0 {
        f |= flags::DENIED;
    }
    f
}

/// The counter of a decision record that was not written.
#[inline(always)]
fn lost_counter(action: u8) -> Counter {
    match action {
        ACTION_DENY => Counter::DenyLost,
        ACTION_AUDIT => Counter::AuditLost,
        _ => Counter::AllowLost,
    }
}

/// Whether an allow record may take ring buffer space: only while the
/// ring buffer is less than half full, the other half being kept for deny
/// and audit records.
#[inline(always)]
fn room_for_allow() -> bool {
    let ring = core::ptr::from_ref(&CG_EVENTS).cast_mut().cast();
    // SAFETY: helpers without preconditions beyond a ring buffer map.
    let (avail, size) = unsafe {
        (
            generated::bpf_ringbuf_query(ring, u64::from(BPF_RB_AVAIL_DATA)),
            generated::bpf_ringbuf_query(ring, u64::from(BPF_RB_RING_SIZE)),
        )
    };
    avail.saturating_mul(2) < size
}

/// Sends a finished decision, or counts it lost by action.
#[inline(always)]
fn emit(ev: &ChrootEvent, action: u8) {
    if (action == ACTION_ALLOW && !room_for_allow()) || send(ev).is_err() {
        count(lost_counter(action));
    }
}

/// `lsm/path_chroot`: `security_path_chroot(const struct path *path)`; the
/// second context argument is the verdict of the BPF LSM programs before
/// this one, kept when it already denies.
#[lsm(hook = "path_chroot")]
pub fn cg_lsm_chroot(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return lsm_ret(earlier);
    }
    let Some(slot) = CG_ACTIVE.get(0).map(|s| *s & 1) else { return 0 };
    let Some(header) = CG_POLICY.get(slot).copied() else { return 0 };
    let ret = match decide(&ctx, slot, &header) {
        Ok(ret) => ret,
        Err(e) => {
            count(Counter::LsmError);
            let action = failure_action(&header, e);
            report_failure(&header, action, e);
            verdict(&header, action)
        }
    };
    lsm_ret(ret)
}

/// A decision's per-thread values could not be had (`-ENOMEM`).
const NO_MEMORY: Error = -12;

/// The action of a decision that could not be made: the policy's
/// `failMode`, except without per-thread memory, which denies. Any local
/// user can bring that about: each new thread's first decision allocates
/// its values atomically (an order-3 allocation that fails while memory is
/// fragmented), and up to 6.1 with full preemption a thread of theirs
/// preempted inside the task storage helper keeps it busy for every other
/// thread on that CPU (`TaskStorage::current_waiting`). An allowing
/// `failMode` would then be a way around every deny rule; the other
/// failures (a kernel read, a torn policy) are no caller's to cause.
#[inline(always)]
fn failure_action(header: &PolicyHeader, error: Error) -> u8 {
    if error == NO_MEMORY {
        ACTION_DENY
    } else {
        header.fail_action
    }
}

/// `r` as the hook returns it: 0, or `-EPERM` for anything else (a
/// verdict here is one of the two; an earlier BPF LSM program's denial is
/// passed on as `-EPERM`). 6.12's verifier checks that the 64-bit return
/// register holds `-4095..=0` and tracks no range through the negation
/// LLVM makes of `verdict`'s select, nor for the earlier programs' verdict
/// (a zero-extended `int`); two constants pass. The volatile read keeps
/// LLVM, which knows the range, from folding the branch away.
#[inline(always)]
fn lsm_ret(r: i32) -> i32 {
    // SAFETY: a read of a local.
    if unsafe { core::ptr::read_volatile(&r) } == 0 {
        0
    } else {
        EPERM
    }
}

/// Reports a decision that could not be made, decided by `action`, as a
/// header-only record ([`flags::INTERNAL_ERROR`], `lsm_ret` = the error):
/// it needs no map entry (the failure may be that one could not be
/// allocated), only ring buffer space and the identity BPF helpers give.
#[inline(always)]
fn report_failure(header: &PolicyHeader, action: u8, error: Error) {
    let Some(mut entry) = CG_EVENTS.reserve_untyped::<[u8; EVENT_HEADER_BYTES]>(0) else {
        count(lost_counter(action));
        return;
    };
    let ev = entry.as_mut_ptr().cast::<ChrootEvent>();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let comm = kernel::current_comm().unwrap_or([0; 16]);
    // SAFETY: every field written lies in the header, inside the reserved
    // EVENT_HEADER_BYTES; `data` is not touched.
    unsafe {
        clear_header_at(ev.cast::<u64>());
        (*ev).kind = EventKind::Decision as u8;
        (*ev).rule = NO_RULE;
        (*ev).flags = flags::INTERNAL_ERROR | decision_flags(header, action);
        (*ev).policy_gen = header.generation;
        (*ev).lsm_ret = error as i32;
        (*ev).ret = i64::from(verdict(header, action));
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).tid = pid_tgid as u32;
        (*ev).uid = uid_gid as u32;
        (*ev).gid = (uid_gid >> 32) as u32;
        (*ev).comm = comm;
        (*ev).cgroup_id = generated::bpf_get_current_cgroup_id();
        (*ev).ts_ns = generated::bpf_ktime_get_boot_ns();
        (*ev).enter_ns = (*ev).ts_ns;
    }
    entry.submit(0);
}

/// State of one hashing pass over a walked path, shared with
/// [`hash_step_cb`] through `bpf_loop`.
#[repr(C)]
struct HashPass {
    /// The thread's scratch buffer, held for the whole decision.
    scratch: *const u8,
    /// Start of the path in it.
    pos: u32,
    /// Policy slot, for the prefix lookups.
    slot: u32,
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
    let scratch = pass.scratch;
    let k = index as u32;
    // SAFETY: masked into the scratch value.
    let c = unsafe { *scratch.add(((pass.pos + k) & MASK) as usize) };
    if c == b'/' && k > 0 {
        if let Some(m) = CG_PATHS.get_ptr(&PathKey { slot: pass.slot, len: k, hash: pass.hash }) {
            // SAFETY: a map value.
            pass.subtree |= unsafe { (*m).subtree };
        }
    }
    pass.hash = hash_step(pass.hash, c);
    0
}

/// Masks of the rules whose `path` / `subtree` match the walked path:
/// hashes it with the policy's seed, collecting the `subtree` masks of
/// every directory it lies below (each prefix ending before a `/`), then
/// looks the whole path up. Consumes the walk: the scratch buffer is
/// reused by the next one.
#[inline(always)]
fn path_masks(scratch: *const u8, slot: u32, seed: u64, w: Walk) -> (u64, u64) {
    let len = w.len();
    let mut pass = HashPass { scratch, pos: w.pos, slot, hash: seed, subtree: 0 };
    // SAFETY: the callback and its context live for the call.
    unsafe {
        generated::bpf_loop(len, hash_step_cb as *mut core::ffi::c_void, (&raw mut pass).cast(), 0);
    }
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

/// What the rules test, gathered once per decision.
struct Facts {
    /// The resolved path is whole and reachable from the caller's root.
    path_known: bool,
    /// Rules whose `path` names the new root.
    exact: u64,
    /// Rules whose `subtree` holds the new root.
    subtree: u64,
    /// The executable's identity is known.
    exe_known: bool,
    /// Rules naming the executable (zero when unknown).
    exe: u64,
    /// The caller is in the initial user and mount namespaces.
    init_ns: bool,
    /// The caller is already chrooted.
    chrooted: bool,
    /// The new root escapes the caller's root; `None` when unknown.
    escapes_root: Option<bool>,
    /// The caller's cwd is outside the new root; `None` when unknown.
    cwd_outside_root: Option<bool>,
    /// The caller's ids, comm, cgroup and mount namespace, as values: the
    /// rule scan's `bpf_loop` body reads them from its context, where the
    /// verifier keeps values but not every pointer.
    uid: u32,
    euid: u32,
    gid: u32,
    egid: u32,
    comm: [u8; COMM_LEN],
    cgroup_id: u64,
    mnt_ns: u32,
}

/// A fact of the decision's `flags` (see `flags::ROOTS_COMPARED`): `None`
/// when unknown (every decision compares the roots, so never absent here).
#[inline(always)]
fn fact(f: u32, yes: u32, unknown: u32) -> Option<bool> {
    if f & flags::ROOTS_COMPARED == 0 || f & unknown != 0 {
        None
    } else {
        Some(f & yes != 0)
    }
}

/// Whether a condition on an escape fact holds: `want` against the fact,
/// or `unknown_holds` when the fact is unknown.
#[inline(always)]
fn fact_holds(fact: Option<bool>, want: u8, unknown_holds: bool) -> bool {
    match fact {
        Some(v) => v == (want != 0),
        None => unknown_holds,
    }
}

/// Whether every condition of rule `r` (compiled index `i`) holds. A
/// condition that cannot be judged holds when the rule says so
/// ([`rule_flags::UNKNOWN_HOLDS`]).
#[inline(always)]
fn holds(r: &PolicyRule, i: u32, f: &Facts) -> bool {
    let bit = 1u64 << (i & 63);
    let c = r.conds;
    let unknown_holds = r.flags & rule_flags::UNKNOWN_HOLDS != 0;
    let path_ok = if c & (cond::PATH | cond::SUBTREE) == 0 {
        true
    } else if !f.path_known {
        unknown_holds
    } else {
        (c & cond::PATH == 0 || f.exact & bit != 0) && (c & cond::SUBTREE == 0 || f.subtree & bit != 0)
    };
    let exe_ok = if c & cond::EXE == 0 {
        true
    } else if !f.exe_known {
        unknown_holds
    } else {
        f.exe & bit != 0
    };
    path_ok
        && exe_ok
        && (c & cond::UID == 0 || r.uid == f.uid)
        && (c & cond::EUID == 0 || r.euid == f.euid)
        && (c & cond::GID == 0 || r.gid == f.gid)
        && (c & cond::EGID == 0 || r.egid == f.egid)
        && (c & cond::COMM == 0 || r.comm == f.comm)
        && (c & cond::CGROUP == 0 || r.cgroup_id == f.cgroup_id)
        && (c & cond::MNT_NS == 0 || r.mnt_ns == f.mnt_ns)
        && (c & cond::CHROOTED == 0 || (r.chrooted != 0) == f.chrooted)
        && (c & cond::INIT_NS == 0 || (r.init_ns != 0) == f.init_ns)
        && (c & cond::ESCAPES_ROOT == 0 || fact_holds(f.escapes_root, r.escapes_root, unknown_holds))
        && (c & cond::CWD_OUTSIDE_ROOT == 0 || fact_holds(f.cwd_outside_root, r.cwd_outside_root, unknown_holds))
}

/// State of the rule scan, shared with [`rule_step_cb`] through `bpf_loop`.
struct RuleScan {
    /// The slot's first rule in `CG_RULES`.
    base: u32,
    /// The `source` of the rule whose `not` block matched: its other
    /// compiled rules are skipped.
    skipped: u32,
    /// The action decided: the default until a rule matches.
    action: u8,
    /// The compiled index of the rule that matched, or `NO_RULE`.
    rule: u16,
    facts: Facts,
}

/// Rule `index` of a [`RuleScan`]: 1 (stop) once a rule decides. Through
/// `bpf_loop` (5.17+) the verifier checks this body once instead of once
/// per rule, which is most of what loading the program cost.
#[inline(never)]
extern "C" fn rule_step_cb(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `RuleScan` on the caller's stack.
    let scan = unsafe { &mut *ctx.cast::<RuleScan>() };
    let i = index as u32;
    if i >= MAX_RULES as u32 {
        return 1;
    }
    let Some(r) = CG_RULES.get(scan.base + i) else { return 1 };
    if u32::from(r.source) == scan.skipped || !holds(r, i, &scan.facts) {
        return 0;
    }
    if r.flags & rule_flags::SKIP != 0 {
        // The rule's `not` block matched: the rule does not apply.
        scan.skipped = u32::from(r.source);
        return 0;
    }
    scan.action = r.action;
    scan.rule = i as u16;
    1
}

fn decide(ctx: &LsmContext, slot: u32, header: &PolicyHeader) -> Result<i32, Error> {
    // Before any branch: see `kernel::Task`.
    let task = kernel::Task::current();
    let parent = kernel::ExeOwner::parent(&task);
    let cred = kernel::cred(&task);
    // The decision's two per-thread values are taken once, waiting out a
    // busy task storage: a lookup that failed later would change the
    // decision. No value reads as NO_MEMORY (see `failure_action`). The
    // caller cache (`caller_cache`, below) is one try: no decision reads
    // it, and without it the record's ids and paths are read and walked
    // instead.
    // SAFETY: this thread's value; nothing else writes it.
    let ev = unsafe { &mut *CG_DECISIONS.current_waiting(true).ok_or(NO_MEMORY)? };
    let held: *mut u8 = CG_THREAD_SCRATCH.current_waiting(true).ok_or(NO_MEMORY)?.cast();
    let scratch = Scratch::Held(held);
    clear_header(ev);
    ev.kind = EventKind::Decision as u8;
    ev.policy_gen = header.generation;
    let comm = kernel::current_comm()?;
    // Read once, here: a task without a root cannot be judged, and a root
    // kept as a Result across the walk costs the verifier states.
    let root = kernel::fs_root(&task)?;
    let mut cache = caller_cache();
    let (pid_tgid, uid_gid) = kernel::current_ids(&task, cred);
    fill_identity(ev, &task, cred, pid_tgid, uid_gid, comm, Ok(root), cache.as_mut().map(|c| &mut c.ids));
    // The argument as passed, from the syscall's saved user registers
    // (`bpf_task_pt_regs` wants the BTF-typed task pointer, 5.15+).
    // SAFETY: helpers without preconditions beyond a BTF task pointer.
    let regs = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) } as *const u8;
    if let Ok(filename) = kernel::syscall_arg0(regs) {
        read_argument(ev, filename);
    }

    let path: *const u8 = ctx.arg(0);
    let (vfsmnt, dentry) = kernel::path_parts(path)?;
    // The escape facts: the hook's path against the caller's root and cwd,
    // which the call changes only after this hook allows it.
    ev.flags |= kernel::root_facts(root, (vfsmnt, dentry), &task);
    let w = kernel::resolve_into(scratch, ev, &task, vfsmnt, dentry)?;
    let path_known = w.complete;
    let (exact, subtree) = path_masks(held.cast_const(), slot, header.seed, w);

    let exe_known = ev.flags & flags::EXE_UNKNOWN == 0;
    let mut exe = 0u64;
    if exe_known && header.flags & policy_flags::USES_EXE != 0 {
        if let Some(m) = CG_EXES.get_ptr(&ExeKey { slot, dev: ev.exe_dev, ino: ev.exe_ino }) {
            // SAFETY: a map value.
            exe = unsafe { *m };
        }
    }
    let init_ns = ev.user_ns == INIT_USER_NS_INUM && ev.mnt_ns == header.init_mnt_ns;
    if init_ns {
        ev.flags |= flags::INITIAL_NAMESPACES;
    }
    let facts = Facts {
        path_known,
        exact,
        subtree,
        exe_known,
        exe,
        init_ns,
        chrooted: ev.flags & flags::CALLER_CHROOTED != 0,
        escapes_root: fact(ev.flags, flags::ESCAPES_ROOT, flags::ESCAPES_ROOT_UNKNOWN),
        cwd_outside_root: fact(ev.flags, flags::CWD_OUTSIDE_ROOT, flags::CWD_OUTSIDE_ROOT_UNKNOWN),
        uid: ev.uid,
        euid: ev.euid,
        gid: ev.gid,
        egid: ev.egid,
        comm: ev.comm,
        cgroup_id: ev.cgroup_id,
        mnt_ns: ev.mnt_ns,
    };

    let mut scan = RuleScan { base: slot * MAX_RULES as u32, skipped: u32::MAX, action: header.default_action, rule: NO_RULE, facts };
    // SAFETY: the callback and its context live for the call.
    unsafe {
        generated::bpf_loop(header.rule_count.min(MAX_RULES as u32), rule_step_cb as *mut core::ffi::c_void, (&raw mut scan).cast(), 0);
    }
    let (mut action, mut rule) = (scan.action, scan.rule);

    // Seqlock check: the slot must not have been rewritten while we read it.
    // SAFETY: a map value; volatile so the compiler re-reads it here.
    let now_gen = CG_POLICY.get_ptr(slot).map(|h| unsafe { core::ptr::read_volatile(&(*h).generation) });
    if header.generation == 0 || now_gen != Some(header.generation) {
        count(Counter::LsmError);
        ev.flags |= flags::POLICY_TORN;
        action = header.fail_action;
        rule = NO_RULE;
    }

    let ret = verdict(header, action);
    ev.rule = rule;
    ev.flags |= decision_flags(header, action);
    ev.ret = i64::from(ret);
    // The walk buffer is free again: `path_masks` consumed the resolved path.
    attribute(scratch, ev, &task, parent, cache);
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { generated::bpf_ktime_get_boot_ns() };
    emit(ev, action);
    Ok(ret)
}

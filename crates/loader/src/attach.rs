//! Loads the object and attaches one mode's programs, best mode first.
//!
//! Each attempt loads the object afresh; a refused attempt drops it, which
//! closes every program, link and map fd it created, so nothing is left in
//! the kernel.

use std::{
    os::fd::AsFd,
    sync::{Mutex, OnceLock},
    thread::JoinHandle,
};

use aya::{
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use chroot_guard_common::{
    probes::{probes_for, ProbeSpec, ProgramKind, Role, TRACEPOINT_CATEGORY},
    Filter, KernelOffsets, Mode, DEFAULT_RING_BUFFER_BYTES,
};

use crate::{
    btf,
    error::{errno_name, Error, Refusal},
    features::{self, Need},
    kretprobe::{self, Kretprobes},
    memory::{self, Memory, Outcome},
    object::Object,
    sys,
};

/// Which mode to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeRequest {
    /// fentry, then kprobe, then tracepoint: the first the kernel allows.
    Auto,
    /// This mode or an error.
    Only(Mode),
}

impl std::str::FromStr for ModeRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(ModeRequest::Auto),
            _ => Mode::ALL
                .into_iter()
                .find(|m| m.name() == s)
                .map(ModeRequest::Only)
                .ok_or_else(|| {
                    let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                    Error::InvalidArgument(format!("unknown mode {s:?}: expected auto, {}", or_list(&names)))
                }),
        }
    }
}

/// `a, b or c`.
fn or_list(items: &[&str]) -> String {
    match items.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// What to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Attach mode.
    pub mode: ModeRequest,
    /// In-kernel filter.
    pub filter: Filter,
    /// Size of the `CG_EVENTS` ring buffer in bytes: a power of two, at least
    /// the page size.
    pub ring_buffer_bytes: u32,
    /// In tracepoint mode, also attach the raw `sys_enter`/`sys_exit`
    /// programs that see 32-bit compat and x32 calls. Off unless asked:
    /// they run on every syscall of the host, which the bench measures
    /// (`bench/RESULTS.md`, raw-syscall coverage; see
    /// [`COMPAT_OFF_REASON`]). fentry and kprobe modes see compat calls at
    /// no such cost.
    pub compat: bool,
}

impl Default for LoadOptions {
    /// What `chrootWatch()` and `chroot-guard watch` load with no options:
    /// [`ModeRequest::Auto`], no filter, a
    /// [`DEFAULT_RING_BUFFER_BYTES`]-byte ring buffer, compat off.
    fn default() -> Self {
        LoadOptions {
            mode: ModeRequest::Auto,
            filter: Filter::default(),
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            compat: false,
        }
    }
}

/// Why compat calls go unseen in tracepoint mode when [`LoadOptions::compat`]
/// is off.
pub const COMPAT_OFF_REASON: &str = "32-bit compat and x32 calls reach no syscall tracepoint; seeing them in tracepoint mode takes raw sys_enter/sys_exit programs, which run on every syscall of the host: in bench/RESULTS.md they add about 185 ns to every syscall (with them a getpid takes 2.7x its time with no probe, against 1.4x with them off), so they are off unless asked for (compat: true, --compat)";

/// An object with one mode's programs loaded and attached.
pub struct Loaded {
    /// Owns every program, link and map; dropping it detaches all.
    pub ebpf: Ebpf,
    /// kprobe mode's tracefs kretprobes ([`kretprobe`]); dropping them
    /// detaches and removes them. Empty in other modes.
    pub kretprobes: Kretprobes,
    /// The mode that attached.
    pub mode: Mode,
    /// Why each better mode was refused (empty when the best one worked or a
    /// mode was forced).
    pub refusals: Vec<Refusal>,
    /// Programs of the mode the kernel refused that only see 32-bit compat
    /// calls ([`ProbeSpec::compat`]): the mode runs, blind to those calls.
    /// Also, code [`MISSES_UNCOUNTED`]: kprobe mode's exit kretprobes that
    /// had to be attached through the perf PMU, whose missed returns
    /// cannot be counted.
    pub blind_spots: Vec<Refusal>,
}

/// What [`try_mode`] attached: the object and, in kprobe mode, its tracefs
/// kretprobes.
pub struct Programs {
    /// Owns every program, link and map.
    pub ebpf: Ebpf,
    /// The tracefs kretprobes (kprobe mode).
    pub kretprobes: Kretprobes,
}

/// Blind-spot code of an exit kretprobe attached through the perf kprobe
/// PMU because tracefs `kprobe_events` could not take it: it runs at the
/// kernel's default `maxactive`, and the returns it misses (calls with no
/// event) cannot be counted.
pub const MISSES_UNCOUNTED: &str = "MISSES_UNCOUNTED";

/// What one mode attempt can end in besides success.
pub enum Failure {
    /// The kernel refused the mode: try the next.
    Refused(Refusal),
    /// Something no other mode would fix.
    Fatal(Error),
}

/// Ring buffer sizes the kernel accepts: a power of two and a multiple of
/// the page size. The upper bound keeps one session from pinning more than
/// 1 GiB of kernel memory.
pub fn check_ring_buffer_bytes(bytes: u64) -> Result<u32, Error> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    if bytes.is_power_of_two() && bytes >= page && bytes <= 1 << 30 {
        Ok(bytes as u32)
    } else {
        Err(Error::InvalidArgument(format!(
            "ringBufferBytes {bytes} must be a power of two between {page} and {} bytes",
            1u64 << 30
        )))
    }
}

/// The environment variable that picks the object: `auto` (the default:
/// the full object where the kernel has what it needs, else the legacy
/// one), `full`, or `legacy`, which runs the legacy object on a kernel
/// that could run the full one (how the tests cover it on every kernel).
pub const OBJECT_ENV: &str = "CHROOT_GUARD_OBJECT";

/// Everything a mode attempt needs from the running kernel.
pub struct KernelContext {
    /// Field offsets from BTF.
    pub offsets: KernelOffsets,
    /// Kernel BTF as aya needs it, parsed on first use: see
    /// [`KernelContext::aya_btf`].
    aya_btf: OnceLock<Option<aya::Btf>>,
    /// Kernel BTF as parsed for offsets (also answers "is this function in
    /// BTF").
    pub btf: btf::KernelBtf,
    /// Programs [`prewarm`] loaded before the options were known, for the
    /// [`try_mode`] whose mode and inputs they match.
    speculated: Mutex<Option<Speculated>>,
    /// The object this kernel gets: [`Object::Legacy`] where it lacks a
    /// feature of [`Need::FullObject`].
    pub object: Object,
    /// Why the legacy object (the missing features, as
    /// [`features::describe`] says it), or `None` for the full one.
    pub legacy_reason: Option<String>,
}

impl KernelContext {
    /// Kernel BTF as aya needs it to load fentry/fexit and LSM programs (they
    /// attach by BTF id); `None` when `/sys/kernel/btf/vmlinux` is
    /// unreadable. Parsed on the first call: tracepoint and kprobe modes
    /// never need it, and aya's parse of it is a sizeable part of start-up
    /// (about 14 ms of CPU on the development host).
    pub fn aya_btf(&self) -> Option<&aya::Btf> {
        self.aya_btf.get_or_init(|| aya::Btf::from_sys_fs().ok()).as_ref()
    }

    /// Creates the maps of [`KernelContext::object`] (programs load later,
    /// one by one) with this kernel's offsets and `filter` as frozen
    /// globals, and a `ring_buffer_bytes` ring buffer.
    ///
    /// # Errors
    /// [`Error::Maps`].
    pub fn load_object(&self, filter: &Filter, ring_buffer_bytes: u32) -> Result<Ebpf, Error> {
        // aya 0.14's `EbpfLoader::new()` always reads and parses the
        // kernel's BTF, which the `.btf(None)` below drops: made where no
        // file can be opened, its read fails at once.
        let mut loader = sys::without_file_opens(EbpfLoader::new);
        Ok(loader
            // No target BTF: the object has no CO-RE relocations (field
            // offsets come from `OFFSETS` below; a test asserts it), and
            // fentry/LSM programs get it when they load.
            .btf(None)
            // aya 0.14 creates task storage maps (`CG_PENDING`, the walk
            // and decision buffers) but has no user-space type for them:
            // nothing here reads them.
            .allow_unsupported_maps()
            .override_global("OFFSETS", &self.offsets, true)
            .override_global("FILTER", filter, true)
            .map_max_entries("CG_EVENTS", ring_buffer_bytes)
            .load(self.object.bytes())?)
    }

    /// Checks privileges, mounts tracefs/bpffs, reads BTF, checks that it
    /// shows every feature both objects need ([`features::FEATURES`],
    /// [`Need::Object`]) and picks the object: the legacy one where a
    /// feature of [`Need::FullObject`] is missing. The BTF part is the one
    /// [`prewarm`] started, when it did (waited for), so each probe after
    /// that one reads BTF afresh.
    ///
    /// # Errors
    /// [`Error::Privileges`], [`Error::Mount`], [`Error::NoBtf`],
    /// [`Error::MissingFeature`], [`Error::BtfField`].
    pub fn probe() -> Result<Self, Error> {
        // Taken first: on an error below it is dropped (its thread's result,
        // speculated programs included, is freed when the thread ends).
        let started = PREWARMED.lock().ok().and_then(|mut p| p.take());
        sys::check_privileges()?;
        sys::ensure_tracing_mounts()?;
        match started.map(JoinHandle::join) {
            Some(Ok(probed)) => probed,
            _ => Self::from_btf(),
        }
    }

    /// The part of [`KernelContext::probe`] that needs no privilege and
    /// changes nothing: the kernel's BTF read and checked, the object picked.
    fn from_btf() -> Result<Self, Error> {
        let btf = btf::KernelBtf::read()?;
        let missing = features::missing(&btf, Need::Object);
        if !missing.is_empty() {
            return Err(Error::MissingFeature { reason: features::describe(&missing) });
        }
        let missing = features::missing(&btf, Need::FullObject);
        let (object, legacy_reason) = match (std::env::var(OBJECT_ENV).as_deref(), missing.is_empty()) {
            (Err(_) | Ok("auto"), true) | (Ok("full"), true) => (Object::Full, None),
            (Err(_) | Ok("auto") | Ok("legacy"), false) => (Object::Legacy, Some(features::describe(&missing))),
            (Ok("legacy"), true) => (Object::Legacy, Some(format!("{OBJECT_ENV}=legacy"))),
            (Ok("full"), false) => return Err(Error::MissingFeature { reason: features::describe(&missing) }),
            (Ok(other), _) => {
                return Err(Error::InvalidArgument(format!("{OBJECT_ENV}={other:?}: expected auto, full or legacy")))
            }
        };
        let offsets = btf::kernel_offsets(&btf)?;
        Ok(KernelContext {
            offsets,
            aya_btf: OnceLock::new(),
            btf,
            speculated: Mutex::new(None),
            object,
            legacy_reason,
        })
    }
}

/// The probe [`prewarm`] started, for the next [`KernelContext::probe`].
static PREWARMED: Mutex<Option<JoinHandle<Result<KernelContext, Error>>>> = Mutex::new(None);

/// Starts the BTF part of a [`KernelContext::probe`] on a thread now, for
/// the next probe to take: a command that will load programs calls it
/// first thing, so that reading and parsing the kernel's BTF (the largest
/// part of start-up after Node.js's own) runs while the rest of the command
/// line loads. That part needs no privilege and changes nothing (the probe
/// checks privileges and mounts tracefs and bpffs itself, first). Does
/// nothing when one is already started; a result that no one takes is
/// dropped.
///
/// With `speculate`, the thread then also does the slowest step of a
/// [`load`] with the default options ([`LoadOptions::default`]):
/// it creates the maps and loads the programs (the verifier runs) of the
/// mode `auto` would try first, unattached. A load with those options and
/// that mode takes them ([`try_mode`]); otherwise they are dropped with the
/// context, which closes every fd, and the load starts afresh. Without the
/// privilege to create maps the speculation ends there, leaving nothing.
pub fn prewarm(speculate: bool) {
    if let Ok(mut started) = PREWARMED.lock() {
        if started.is_none() {
            *started = std::thread::Builder::new()
                .name("cg-probe".into())
                .spawn(move || {
                    let kernel = KernelContext::from_btf()?;
                    if speculate {
                        kernel.speculate(&LoadOptions::default());
                    }
                    Ok(kernel)
                })
                .ok();
        }
    }
}

/// An object with one mode's programs loaded, not yet attached: what
/// [`try_mode`] attaches, made by [`prepare`].
struct Prepared {
    ebpf: Ebpf,
    /// The mode's programs in attach order (exit hooks first).
    specs: Vec<&'static ProbeSpec>,
    /// Each program's load, in `specs` order.
    loaded: Vec<Result<(), Step>>,
}

/// A [`Prepared`] made before the options were known ([`prewarm`]), and
/// what it was made for.
struct Speculated {
    mode: Mode,
    /// [`memory::inputs`] of the options it assumed.
    inputs: String,
    prepared: Prepared,
}

impl KernelContext {
    /// Prepares the mode an `auto` load with `opts` would try first: the
    /// first of [`Mode::ALL`] that [`Memory`] does not remember refused and
    /// [`precheck`] passes. Best effort: a failure leaves nothing.
    fn speculate(&self, opts: &LoadOptions) {
        let inputs = memory::inputs(&opts.filter, opts.ring_buffer_bytes, opts.compat);
        let memory = Memory::recall();
        let Some(mode) = Mode::ALL.into_iter().find(|&m| memory.refusal(m, &inputs).is_none() && precheck(m).is_ok())
        else {
            return;
        };
        if let Ok(prepared) = prepare(mode, self, &opts.filter, opts.ring_buffer_bytes, opts.compat) {
            if let Ok(mut s) = self.speculated.lock() {
                *s = Some(Speculated { mode, inputs, prepared });
            }
        }
    }

    /// The speculated programs, if they were made for `mode` and `inputs`.
    fn take_speculated(&self, mode: Mode, inputs: &str) -> Option<Prepared> {
        let mut s = self.speculated.lock().ok()?;
        if s.as_ref().is_some_and(|s| s.mode == mode && s.inputs == inputs) {
            SPECULATIONS_TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.take().map(|s| s.prepared)
        } else {
            None
        }
    }
}

static SPECULATIONS_TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many mode attempts of this process took the programs a
/// [`prewarm`] loaded ahead (`crates/loader/tests/speculate.rs` checks
/// that a load with the default options does, and one with others does
/// not).
pub fn speculations_taken() -> u64 {
    SPECULATIONS_TAKEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Loads the object and attaches the requested mode, or the best one the
/// kernel allows for [`ModeRequest::Auto`].
///
/// `auto` skips a mode whose refusal [`Memory`] remembers for this boot,
/// kernel, object and capability set, without loading anything, and reports
/// that refusal with [`Refusal::remembered`] set; when no mode attaches
/// then, it tries the skipped ones for real before giving up, so a
/// remembered refusal never makes `auto` fail. A forced mode is always
/// tried. What the attempts find is remembered ([`Memory::learn`]); the
/// memory is best effort, and never fails a load.
///
/// # Errors
/// [`Error::ModeUnavailable`] for a refused forced mode, [`Error::NoMode`]
/// when `auto` found nothing, [`Error::Maps`] or [`Error::Object`] when the
/// maps cannot be created or the object is inconsistent, and the errors of
/// [`KernelContext::probe`].
pub fn load(opts: &LoadOptions) -> Result<Loaded, Error> {
    check_ring_buffer_bytes(u64::from(opts.ring_buffer_bytes))?;
    let kernel = KernelContext::probe()?;
    let inputs = memory::inputs(&opts.filter, opts.ring_buffer_bytes, opts.compat);
    let (modes, memory): (&[Mode], Memory) = match &opts.mode {
        ModeRequest::Auto => (&Mode::ALL, Memory::recall()),
        ModeRequest::Only(m) => (std::slice::from_ref(m), Memory::empty()),
    };
    // Each mode's refusal, fresh or remembered, at its place in Mode::ALL.
    let mut refused: Vec<Option<Refusal>> = vec![None; Mode::ALL.len()];
    // What the real attempts ended in: `None` for attached.
    let mut tried: Vec<(Mode, Option<Refusal>)> = Vec::new();
    let mut attached = None;
    let mut pending = modes.to_vec();
    let mut recall = true;
    'passes: loop {
        let mut skipped = Vec::new();
        for mode in pending {
            if recall {
                if let Some(r) = memory.refusal(mode, &inputs) {
                    refused[mode_index(mode)] = Some(r);
                    skipped.push(mode);
                    continue;
                }
            }
            match attempt(mode, &kernel, opts) {
                Ok(loaded) => {
                    tried.push((mode, None));
                    attached = Some((mode, loaded));
                    break 'passes;
                }
                Err(Failure::Refused(r)) => {
                    tried.push((mode, Some(r.clone())));
                    refused[mode_index(mode)] = Some(r);
                }
                Err(Failure::Fatal(e)) => {
                    learn(&tried, &memory, &inputs, opts.mode);
                    return Err(e);
                }
            }
        }
        if skipped.is_empty() || !recall {
            break;
        }
        // Nothing attached: the remembered refusals are tried for real.
        recall = false;
        pending = skipped;
    }
    learn(&tried, &memory, &inputs, opts.mode);
    match (attached, opts.mode) {
        (Some((mode, (Programs { ebpf, kretprobes }, blind_spots))), _) => {
            let refusals = refused.into_iter().take(mode_index(mode)).flatten().collect();
            Ok(Loaded { ebpf, kretprobes, mode, refusals, blind_spots })
        }
        (None, ModeRequest::Only(_)) => Err(Error::ModeUnavailable {
            refusal: refused
                .into_iter()
                .flatten()
                .next_back()
                .ok_or_else(|| Error::Object("no refusal recorded".into()))?,
        }),
        (None, ModeRequest::Auto) => Err(Error::NoMode { refusals: refused.into_iter().flatten().collect() }),
    }
}

/// Where `mode` is in [`Mode::ALL`].
fn mode_index(mode: Mode) -> usize {
    Mode::ALL.iter().position(|m| *m == mode).unwrap_or(0)
}

/// One real attempt at `mode`: [`precheck`], then [`try_mode`].
fn attempt(mode: Mode, kernel: &KernelContext, opts: &LoadOptions) -> Result<(Programs, Vec<Refusal>), Failure> {
    precheck(mode).map_err(Failure::Refused)?;
    try_mode(mode, kernel, &opts.filter, opts.ring_buffer_bytes, opts.compat)
}

/// What refuses `mode` without loading the object: no kprobe PMU or
/// `kprobe_events` (no kprobe can attach; `doctor` still tries for real),
/// or [`preemption_refusal`].
fn precheck(mode: Mode) -> Result<(), Refusal> {
    if mode == Mode::Kprobe && !sys::has_kprobes() {
        if let Some(spec) = probes_for(mode).next() {
            return Err(Refusal {
                code: "NO_KPROBES",
                reason: NO_KPROBES_REASON.into(),
                ..base_refusal(spec, "attach")
            });
        }
    }
    preemption_refusal(mode).map_or(Ok(()), Err)
}

/// Code `PREEMPT_FULL` for fentry mode where the kernel preempts kernel
/// code at any point ([`sys::full_preemption`]): the kernel would skip the
/// programs uncounted. Checked on each load, never remembered (the switch
/// can change at run time); `doctor` reports it in place of the attempt.
pub fn preemption_refusal(mode: Mode) -> Option<Refusal> {
    if mode != Mode::Fentry {
        return None;
    }
    let evidence = sys::full_preemption()?;
    let spec = probes_for(mode).next()?;
    Some(Refusal {
        code: "PREEMPT_FULL",
        reason: format!("{evidence}: {PREEMPT_FULL_REASON}"),
        ..base_refusal(spec, "attach")
    })
}

/// Code `PREEMPT_FULL` and the reason for the guard's `lsm/path_chroot`
/// where the kernel preempts kernel code ([`sys::full_preemption`]) and
/// its BPF trampoline still keeps LSM programs from running twice on one
/// CPU: 5.17 to 6.1 before the change that left that check to tracing
/// programs (`__bpf_prog_enter_recur`, 6.2 and 6.1 stable). There a
/// decision preempted on a CPU makes the kernel skip the program, so
/// allow, every other chroot on that CPU, which any local user can bring
/// about; `None` elsewhere. Reads `/proc/kallsyms` only on a fully
/// preemptible kernel.
pub fn lsm_preemption_refusal() -> Option<(&'static str, String)> {
    let evidence = sys::full_preemption()?;
    if sys::kallsyms_has("__bpf_prog_enter_recur") {
        return None;
    }
    Some(("PREEMPT_FULL", format!("{evidence}: {LSM_PREEMPT_FULL_REASON}")))
}

/// Why the guard is refused by [`lsm_preemption_refusal`].
const LSM_PREEMPT_FULL_REASON: &str = "this kernel's BPF trampoline skips an LSM program entered on a CPU where it is already running, which a preempted decision is, and the skipped chroot is allowed: boot with preempt=voluntary (or echo voluntary > /sys/kernel/debug/sched/preempt), or use a kernel with __bpf_prog_enter_recur in /proc/kallsyms (6.2+, or 6.1 stable)";

/// Hands what the attempts found to [`Memory::learn`] when it can change
/// what is remembered: a forced mode (its memory was not read), a refusal
/// certain to repeat, or a remembered mode that attached after all. A
/// start that only skipped what was remembered writes nothing.
fn learn(tried: &[(Mode, Option<Refusal>)], memory: &Memory, inputs: &str, request: ModeRequest) {
    let news = |(mode, r): &(Mode, Option<Refusal>)| match r {
        Some(r) => memory::lasting(r),
        None => memory.refusal(*mode, inputs).is_some(),
    };
    if request == ModeRequest::Auto && !tried.iter().any(news) {
        return;
    }
    let outcomes: Vec<(Mode, Outcome<'_>)> =
        tried.iter().map(|(m, r)| (*m, r.as_ref().map_or(Outcome::Attached, Outcome::Refused))).collect();
    let _ = Memory::learn(&outcomes, inputs, false);
}

/// Creates the maps (with the offsets and filter as frozen globals) and
/// loads and attaches every program of `mode` (the raw tracepoint ones only
/// with `compat`). Returns the object and the refusals of compat-only
/// programs, which leave the mode running blind to
/// 32-bit compat calls (after one is refused, the mode's other compat
/// programs are not attached: an entry hook without its exit would leave
/// events in flight in `CG_PENDING`), and the [`MISSES_UNCOUNTED`] notes of
/// exit kretprobes that fell back to the perf PMU. In kprobe mode the
/// kretprobes are created through tracefs ([`kretprobe::attach`]) where it
/// can, after removing the events of dead sessions
/// ([`kretprobe::remove_stale`]).
///
/// # Errors
/// [`Failure::Refused`] when the kernel refuses a program of the mode;
/// [`Failure::Fatal`] when the maps cannot be created.
pub fn try_mode(
    mode: Mode,
    kernel: &KernelContext,
    filter: &Filter,
    ring_buffer_bytes: u32,
    compat: bool,
) -> Result<(Programs, Vec<Refusal>), Failure> {
    let inputs = memory::inputs(filter, ring_buffer_bytes, compat);
    let Prepared { mut ebpf, specs, loaded } = match kernel.take_speculated(mode, &inputs) {
        Some(prepared) => prepared,
        None => prepare(mode, kernel, filter, ring_buffer_bytes, compat)?,
    };
    let mut kretprobes = Kretprobes::default();
    let mut uncounted: Vec<Refusal> = Vec::new();
    if mode == Mode::Kprobe {
        let _ = kretprobe::remove_stale();
    }
    let off = compat_off(compat);
    let mut blind: Vec<Refusal> = probes_for(mode)
        .filter(off)
        .last()
        .map(|spec| Refusal { code: "COMPAT_OFF", reason: COMPAT_OFF_REASON.into(), ..base_refusal(spec, "attach") })
        .into_iter()
        .collect();
    for (spec, load) in specs.into_iter().zip(loaded) {
        if spec.compat && !blind.is_empty() {
            continue;
        }
        match load.and_then(|()| attach_one(&mut ebpf, spec, &mut kretprobes, &mut uncounted)) {
            Ok(()) => {}
            Err(Step::Refused(r)) if spec.compat => blind.push(r),
            Err(Step::Refused(r)) => return Err(Failure::Refused(r)),
            Err(Step::Object(msg)) => return Err(Failure::Fatal(Error::Object(msg))),
        }
    }
    // The programs' refusals first: `blind` is also what stops the other
    // compat programs above, which a note on counting must not.
    blind.append(&mut uncounted);
    Ok((Programs { ebpf, kretprobes }, blind))
}

/// Without `compat` the raw tracepoint programs are not loaded, and the
/// exit one, as the first compat program refused, names the blind spot.
fn compat_off(compat: bool) -> impl Fn(&&'static ProbeSpec) -> bool {
    move |spec| !compat && spec.compat && spec.kind == ProgramKind::RawTracePoint
}

/// Creates the maps and loads `mode`'s programs (the verifier runs), in
/// attach order: exit hooks first, so that a call that enters after its
/// entry hook is attached surely exits after its exit hook is, and leaves
/// no orphan entry in `CG_PENDING`.
fn prepare(
    mode: Mode,
    kernel: &KernelContext,
    filter: &Filter,
    ring_buffer_bytes: u32,
    compat: bool,
) -> Result<Prepared, Failure> {
    let mut ebpf = kernel.load_object(filter, ring_buffer_bytes).map_err(Failure::Fatal)?;
    let off = compat_off(compat);
    let mut specs: Vec<&'static ProbeSpec> = probes_for(mode).filter(|spec| !off(spec)).collect();
    specs.reverse();
    let loaded = load_all(&mut ebpf, &specs, kernel);
    Ok(Prepared { ebpf, specs, loaded })
}

enum Step {
    Refused(Refusal),
    Object(String),
}

/// Loads the programs of `specs` into the kernel, one thread each, and
/// returns each one's outcome in `specs` order. The verifier checks
/// privileged loads in parallel, and it is most of a start (about 60 ms of
/// the tracepoint mode's 136 on the development host, more for fentry's six
/// programs): a start now waits for the slowest program, not the sum.
/// Nothing is attached here, so the attach order stays [`try_mode`]'s.
fn load_all(ebpf: &mut Ebpf, specs: &[&'static ProbeSpec], kernel: &KernelContext) -> Vec<Result<(), Step>> {
    let mut programs: std::collections::HashMap<&str, &mut aya::programs::Program> = ebpf.programs_mut().collect();
    // What a load needs from the kernel context is taken here, once: the
    // threads get only `Sync` references.
    let needs_btf = specs.iter().any(|s| matches!(s.kind, ProgramKind::FEntry | ProgramKind::FExit));
    let aya_btf = if needs_btf { kernel.aya_btf() } else { None };
    let jobs: Vec<(&'static ProbeSpec, Result<&mut aya::programs::Program, Step>)> = specs
        .iter()
        .map(|&spec| {
            let prog = programs
                .remove(spec.program)
                .ok_or_else(|| Step::Object(format!("program {} missing from the object", spec.program)))
                .and_then(|prog| {
                    if matches!(spec.kind, ProgramKind::FEntry | ProgramKind::FExit)
                        && !btf::has_func(&kernel.btf, spec.target)
                    {
                        return Err(Step::Refused(Refusal {
                            code: "NO_BTF_FUNC",
                            reason: format!("{} is not a function in the kernel's BTF", spec.target),
                            ..base_refusal(spec, "load")
                        }));
                    }
                    Ok(prog)
                });
            (spec, prog)
        })
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            jobs.into_iter().map(|(spec, prog)| scope.spawn(move || load_one(prog?, spec, aya_btf))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Step::Object("a program load thread panicked".into()))))
            .collect()
    })
}

/// Loads one program (the verifier runs here); `aya_btf` is the kernel's
/// BTF for fentry/fexit programs, which attach by BTF id.
fn load_one(
    prog: &mut aya::programs::Program,
    spec: &'static ProbeSpec,
    aya_btf: Option<&aya::Btf>,
) -> Result<(), Step> {
    let wrong_type = |_| Step::Object(format!("program {} has the wrong type", spec.program));
    let load = |e| Step::Refused(refusal(spec, "load", e));
    match spec.kind {
        ProgramKind::FEntry | ProgramKind::FExit => {
            let Some(aya_btf) = aya_btf else {
                return Err(Step::Refused(Refusal {
                    code: "NO_BTF",
                    reason: format!("aya could not read {}", btf::VMLINUX_BTF),
                    ..base_refusal(spec, "load")
                }));
            };
            if spec.kind == ProgramKind::FEntry {
                let p: &mut FEntry = prog.try_into().map_err(wrong_type)?;
                p.load(spec.target, aya_btf).map_err(load)
            } else {
                let p: &mut FExit = prog.try_into().map_err(wrong_type)?;
                p.load(spec.target, aya_btf).map_err(load)
            }
        }
        ProgramKind::KProbe | ProgramKind::KRetProbe => {
            let p: &mut KProbe = prog.try_into().map_err(wrong_type)?;
            p.load().map_err(load)
        }
        ProgramKind::TracePoint => {
            let p: &mut TracePoint = prog.try_into().map_err(wrong_type)?;
            p.load().map_err(load)
        }
        ProgramKind::RawTracePoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(wrong_type)?;
            p.load().map_err(load)
        }
    }
}

/// Attaches one loaded program at its hook; kretprobes go to `kretprobes`
/// or, where they fall back to the perf PMU, note it in `uncounted`.
fn attach_one(
    ebpf: &mut Ebpf,
    spec: &'static ProbeSpec,
    kretprobes: &mut Kretprobes,
    uncounted: &mut Vec<Refusal>,
) -> Result<(), Step> {
    let prog = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| Step::Object(format!("program {} missing from the object", spec.program)))?;
    let wrong_type = |_| Step::Object(format!("program {} has the wrong type", spec.program));
    let attach = |e| Step::Refused(refusal(spec, "attach", e));
    match spec.kind {
        ProgramKind::FEntry => {
            let p: &mut FEntry = prog.try_into().map_err(wrong_type)?;
            p.attach().map(drop).map_err(attach)
        }
        ProgramKind::FExit => {
            let p: &mut FExit = prog.try_into().map_err(wrong_type)?;
            p.attach().map(drop).map_err(attach)
        }
        ProgramKind::KProbe => {
            let p: &mut KProbe = prog.try_into().map_err(wrong_type)?;
            p.attach(spec.target, 0).map(drop).map_err(attach)
        }
        ProgramKind::KRetProbe => {
            let p: &mut KProbe = prog.try_into().map_err(wrong_type)?;
            let exit = spec.role == Role::Exit;
            // Through tracefs for a maxactive of our own and a count of the
            // misses; where kprobe_events cannot take it, through the PMU
            // as before, and an exit hook's misses are then a blind spot.
            let traced = if kretprobe::available() {
                let fd = p.fd().map_err(attach)?;
                kretprobe::attach(fd.as_fd(), spec.program, spec.target)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no kprobe_events in {}", sys::TRACEFS)))
            };
            match traced {
                Ok(probe) => kretprobes.push(probe, exit),
                Err(e) => {
                    p.attach(spec.target, 0).map_err(attach)?;
                    if exit {
                        uncounted.push(Refusal {
                            code: MISSES_UNCOUNTED,
                            errno: e.raw_os_error().and_then(errno_name),
                            reason: format!(
                                "the kretprobe on {} is attached through the perf kprobe PMU, at the kernel's default maxactive, and the calls whose return it misses (more in flight at once than that) are not counted: tracefs kprobe_events could not take it ({e})",
                                spec.target
                            ),
                            ..base_refusal(spec, "attach")
                        });
                    }
                }
            }
            Ok(())
        }
        ProgramKind::TracePoint => {
            let p: &mut TracePoint = prog.try_into().map_err(wrong_type)?;
            p.attach(TRACEPOINT_CATEGORY, spec.target).map(drop).map_err(attach)
        }
        ProgramKind::RawTracePoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(wrong_type)?;
            p.attach(spec.target).map(drop).map_err(attach)
        }
    }
}

fn base_refusal(spec: &'static ProbeSpec, stage: &'static str) -> Refusal {
    Refusal {
        mode: spec.mode,
        program: spec.program,
        target: spec.target,
        stage,
        code: "ATTACH_FAILED",
        errno: None,
        reason: String::new(),
        verifier_log: None,
        remembered: false,
    }
}

fn kind_name(kind: ProgramKind) -> &'static str {
    match kind {
        ProgramKind::FEntry => "fentry",
        ProgramKind::FExit => "fexit",
        ProgramKind::KProbe => "kprobe",
        ProgramKind::KRetProbe => "kretprobe",
        ProgramKind::TracePoint => "tracepoint",
        ProgramKind::RawTracePoint => "raw tracepoint",
    }
}

fn first_errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return Some(n);
            }
        }
        source = err.source();
    }
    None
}

/// Why fentry/fexit are not used on a fully preemptible kernel. Measured
/// on Debian's 6.1 switched to `full` (docs/platform.md): 84,188 of 174,856
/// syscall entries skipped (`recursion_misses`). A session that sees the
/// switch change counts them ([`crate::recursion`]), but the calls are
/// gone.
const PREEMPT_FULL_REASON: &str = "the kernel skips a fentry/fexit program entered on a CPU where it is already running, which a preempted program is, and those calls would have no event (only a count, recursionMissed); kprobe programs run with preemption off (use kprobe mode)";
const NO_KPROBES_REASON: &str = "the kernel has no kprobe support (CONFIG_KPROBES is not set: no kprobe PMU in /sys/bus/event_source/devices and no kprobe_events in tracefs)";

/// Why the kernel said no to one program, classified.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Stable code, see [`Refusal::code`].
    pub code: &'static str,
    /// errno name, if any.
    pub errno: Option<&'static str>,
    /// A sentence for people.
    pub reason: String,
    /// Verifier log, when there is one.
    pub verifier_log: Option<String>,
}

/// Classifies a program error of a `kind` program (`"fentry"`, `"lsm"`, …)
/// on `target` into a [`Denial`] with a reason people can act on.
pub fn classify(kind: &str, program: &str, target: &str, stage: &str, e: &ProgramError) -> Denial {
    let errno = first_errno(e);
    let errno_str = errno.and_then(errno_name);
    let lockdown = sys::lockdown().map(|l| format!("; lockdown: {l}")).unwrap_or_default();
    let log = |l: &dyn std::fmt::Display| Some(l.to_string()).filter(|l| !l.trim().is_empty());
    let (code, reason, verifier_log) = match e {
        ProgramError::LoadError { verifier_log, .. } if errno == Some(libc::EPERM) => (
            "EPERM",
            format!("the kernel refused to load the {kind} program on {target} with EPERM: this kernel does not permit {kind} programs{lockdown}"),
            log(verifier_log as &dyn std::fmt::Display),
        ),
        ProgramError::LoadError { verifier_log, .. } => (
            "VERIFIER",
            format!(
                "the verifier rejected {program} ({kind} on {target}){}",
                errno_str.map(|e| format!(" with {e}")).unwrap_or_default()
            ),
            log(verifier_log as &dyn std::fmt::Display),
        ),
        ProgramError::Btf(_) => ("NO_BTF_FUNC", format!("{target} is not a function in the kernel's BTF"), None),
        _ if matches!(kind, "kprobe" | "kretprobe") && !sys::has_kprobes() => ("NO_KPROBES", NO_KPROBES_REASON.into(), None),
        ProgramError::TracePointError(_) => (
            "NO_TRACEPOINT",
            format!("tracepoint {TRACEPOINT_CATEGORY}:{target} is missing (CONFIG_FTRACE_SYSCALLS?): {e}"),
            None,
        ),
        // aya's message names the syscall, not the kernel's answer.
        _ => (
            "ATTACH_FAILED",
            format!(
                "{stage} of the {kind} program on {target} failed: {e}{}",
                match (errno_str, errno) {
                    (Some(name), _) => format!(" with {name}"),
                    (None, Some(n)) => format!(" with errno {n}"),
                    (None, None) => String::new(),
                }
            ),
            None,
        ),
    };
    Denial { code, errno: errno_str, reason, verifier_log }
}

/// Classifies a failure of an `lsm/path_chroot` program: as [`classify`],
/// but names an inactive BPF LSM (`LSM_INACTIVE`) when `bpf` is missing
/// from the active LSM list, whatever errno the kernel gave.
pub fn classify_lsm(program: &str, stage: &str, e: &ProgramError) -> Denial {
    let d = classify("lsm", program, "bpf_lsm_path_chroot", stage, e);
    if d.code != "VERIFIER" && !sys::active_lsms().is_some_and(|l| l.iter().any(|x| x == "bpf")) {
        return Denial {
            code: "LSM_INACTIVE",
            reason: "the BPF LSM is not in the active LSM list (/sys/kernel/security/lsm); boot with lsm=...,bpf"
                .into(),
            ..d
        };
    }
    d
}

/// Turns a program error of one of our probes into a [`Refusal`].
fn refusal(spec: &'static ProbeSpec, stage: &'static str, e: ProgramError) -> Refusal {
    let d = classify(kind_name(spec.kind), spec.program, spec.target, stage, &e);
    Refusal {
        code: d.code,
        errno: d.errno,
        reason: d.reason,
        verifier_log: d.verifier_log,
        ..base_refusal(spec, stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_objects_have_no_core_relocations_so_loads_need_no_target_btf() {
        for o in [Object::Full, Object::Legacy] {
            let object = aya_obj::Object::parse(o.bytes()).expect("the built object parses");
            assert!(
                !object.has_btf_relocations(),
                "the {} object has CO-RE relocations: load_object must pass the kernel's BTF again",
                o.name()
            );
        }
    }

    #[test]
    fn modes_parse_by_name_and_an_unknown_one_names_them_all() {
        assert_eq!("auto".parse::<ModeRequest>().ok(), Some(ModeRequest::Auto));
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<ModeRequest>().ok(), Some(ModeRequest::Only(m)));
        }
        let err = "lsm".parse::<ModeRequest>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("expected auto, fentry, kprobe or tracepoint"), "{err}");
    }
}

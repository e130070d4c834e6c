//! `doctor`: what this kernel allows on the chroot path, found by trying.
//!
//! For every attach point in `ATTACH_POINTS` and each mechanism that can
//! hook it, a minimal program (`cg_stk_*`, `cg_chk_lsm`) is loaded and
//! attached, then dropped; for every attach mode the real programs are
//! loaded and attached the way a session would. Each "no" carries a code
//! and a reason: no BTF, no CONFIG_KPROBES, EPERM at load, BPF LSM not in
//! the active LSM list, lockdown, missing capability.
//!
//! What the modes' attempts find refreshes the memory of refused modes
//! (`crate::memory`): `doctor` always tries for real, and the report says
//! what `auto` will skip from then on.

use aya::{
    programs::{FEntry, KProbe, Lsm, TracePoint},
    Ebpf,
};
use chroot_guard_common::{
    probes::{check_program, AttachPoint, Mechanism, PointKind, ATTACH_POINTS, LSM_HOOK, TRACEPOINT_CATEGORY},
    Filter, Mode,
};

use crate::{
    attach::{classify, classify_lsm, lsm_preemption_refusal, preemption_refusal, try_mode, Denial, Failure, KernelContext},
    btf,
    error::{Error, Refusal},
    features::{self, FeatureFact},
    memory::{self, Memory, Outcome, MEMORY_FILE},
    run_dir::RunDir,
    sys,
};

/// Facts about the running kernel and this process. The binding hands it
/// to JavaScript as it is (`BindingKernelFacts`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "napi", napi_derive::napi(object, js_name = "BindingKernelFacts"))]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// `uname -m`.
    pub machine: String,
    /// Whether `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// Lockdown mode (`none`, `integrity`, `confidentiality`), if the LSM is there.
    pub lockdown: Option<String>,
    /// Active LSMs in order (`/sys/kernel/security/lsm`).
    pub lsms: Option<Vec<String>>,
    /// Whether the kernel can create kprobes (kprobe PMU or `kprobe_events`).
    pub kprobes: bool,
    /// The BPF features the object needs and whether the kernel's BTF shows
    /// each ([`features::FEATURES`]); empty without BTF.
    pub features: Vec<FeatureFact>,
    /// `None` when the process may load BPF programs; else what is missing.
    pub missing_privileges: Option<String>,
}

/// One mechanism tried on one attach point.
#[derive(Debug, Clone)]
pub struct Check {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// `None` when it loaded and attached; else why not.
    pub denial: Option<Denial>,
}

/// An attach point and what can hook it.
#[derive(Debug, Clone)]
pub struct PointReport {
    /// The point, from `ATTACH_POINTS`.
    pub point: AttachPoint,
    /// Whether the kernel has it (tracefs event, kallsyms symbol, BTF
    /// func); `None` when it cannot be told (tracefs is readable by root
    /// only).
    pub present: Option<bool>,
    /// One check per mechanism of the point (empty when absent).
    pub checks: Vec<Check>,
}

/// One attach mode tried with the real programs.
#[derive(Debug, Clone)]
pub struct ModeReport {
    /// The mode.
    pub mode: Mode,
    /// `None` when the mode's programs loaded and attached.
    pub refusal: Option<Refusal>,
    /// Compat-only programs refused though the mode runs: 32-bit compat
    /// calls it would not see.
    pub blind_spots: Vec<Refusal>,
}

/// The memory of refused modes (`crate::memory`) after `doctor`.
#[derive(Debug, Clone)]
pub struct MemoryReport {
    /// Its file, `/run/chroot-guard/refused-modes.json`.
    pub file: String,
    /// The refusals remembered now ([`Refusal::remembered`] set), best mode
    /// first: the modes `auto` skips without loading anything.
    pub refusals: Vec<Refusal>,
    /// Whether `doctor` rewrote the file with what its attempts found
    /// (false when it could not try the modes, e.g. without privileges).
    pub refreshed: bool,
    /// What went wrong reading or writing it, if anything.
    pub problem: Option<String>,
}

/// Everything `doctor` found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Kernel and process facts.
    pub kernel: KernelFacts,
    /// Attach points, outermost first.
    pub points: Vec<PointReport>,
    /// Attach modes, best first.
    pub modes: Vec<ModeReport>,
    /// The mode `auto` would choose, if any.
    pub auto: Option<Mode>,
    /// The memory of refused modes, refreshed from [`Report::modes`].
    pub memory: MemoryReport,
}

fn uname() -> (String, String) {
    // SAFETY: uname fills the zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let s = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates its fields.
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }.to_string_lossy().into_owned()
    };
    (s(&u.release), s(&u.machine))
}

/// Whether the kernel has `point`; `None` when that cannot be told.
pub fn present(point: &AttachPoint, kernel_btf: Option<&btf_rs::Btf>) -> Option<bool> {
    match point.kind {
        PointKind::Tracepoint => {
            let dir = std::path::Path::new(sys::TRACEFS).join("events").join(TRACEPOINT_CATEGORY).join(point.name);
            match std::fs::metadata(&dir) {
                Ok(_) => Some(true),
                // tracefs is mode 0700: without privileges nothing can be told.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
                Err(_) => match std::fs::read_dir(sys::TRACEFS) {
                    Ok(_) => Some(false),
                    Err(_) => None,
                },
            }
        }
        PointKind::Function | PointKind::LsmHook => {
            Some(kernel_btf.is_some_and(|b| btf::has_func(b, point.name)) || sys::kallsyms_has(point.name))
        }
    }
}


/// Loads `program` and attaches it to `point` with `mechanism` in `ebpf`.
///
/// # Errors
/// The classified [`Denial`]; [`Error::Object`] is folded into a denial
/// with code `INTERNAL`.
pub fn attach_check(ebpf: &mut Ebpf, mechanism: Mechanism, target: &str, kernel: &KernelContext) -> Result<(), Denial> {
    let program = check_program(mechanism);
    let internal = |msg: String| Denial { code: "INTERNAL", errno: None, reason: msg, verifier_log: None };
    let prog = ebpf.program_mut(program).ok_or_else(|| internal(format!("program {program} missing")))?;
    let kind = mechanism.name();
    let d = |stage: &'static str| move |e| classify(kind, program, target, stage, &e);
    let no_btf = || Denial {
        code: "NO_BTF",
        errno: None,
        reason: format!("{} is unreadable: {kind} programs attach by BTF id", btf::VMLINUX_BTF),
        verifier_log: None,
    };
    let wrong = |_| internal(format!("program {program} has the wrong type"));
    match mechanism {
        Mechanism::Tracepoint => {
            let p: &mut TracePoint = prog.try_into().map_err(wrong)?;
            p.load().map_err(d("load"))?;
            p.attach(TRACEPOINT_CATEGORY, target).map_err(d("attach"))?;
        }
        Mechanism::Kprobe => {
            let p: &mut KProbe = prog.try_into().map_err(wrong)?;
            p.load().map_err(d("load"))?;
            p.attach(target, 0).map_err(d("attach"))?;
        }
        Mechanism::Fentry => {
            let b = kernel.aya_btf().ok_or_else(no_btf)?;
            let p: &mut FEntry = prog.try_into().map_err(wrong)?;
            p.load(target, b).map_err(d("load"))?;
            p.attach().map_err(d("attach"))?;
        }
        Mechanism::Lsm => {
            if let Some((code, reason)) = lsm_preemption_refusal() {
                return Err(Denial { code, errno: None, reason, verifier_log: None });
            }
            let b = kernel.aya_btf().ok_or_else(no_btf)?;
            let p: &mut Lsm = prog.try_into().map_err(wrong)?;
            p.load(LSM_HOOK, b).map_err(|e| classify_lsm(program, "load", &e))?;
            p.attach().map_err(|e| classify_lsm(program, "attach", &e))?;
        }
        // Not in Mechanism::ALL: no chroot attach point takes an iterator.
        Mechanism::Iterator => return Err(internal("an iterator hooks no attach point".into())),
    }
    Ok(())
}

fn check_one(mechanism: Mechanism, point: &AttachPoint, kernel: &KernelContext) -> Check {
    let denial = match kernel.load_object(&Filter::default(), 4096) {
        Ok(mut ebpf) => attach_check(&mut ebpf, mechanism, point.name, kernel).err(),
        Err(e) => Some(Denial { code: e.code(), errno: None, reason: e.to_string(), verifier_log: None }),
    };
    Check { mechanism, denial }
}

fn everything_denied(point: &AttachPoint, denial: &Denial) -> Vec<Check> {
    point.mechanisms.iter().map(|&mechanism| Check { mechanism, denial: Some(denial.clone()) }).collect()
}

/// Runs every check. Never fails: what cannot be tried is reported as a
/// denial with its reason.
pub fn doctor() -> Report {
    let (release, machine) = uname();
    let _ = sys::ensure_tracing_mounts();
    let kernel_btf = btf::kernel_btf().ok();
    let missing_privileges = match sys::check_privileges() {
        Ok(()) => None,
        Err(Error::Privileges { missing }) => Some(missing),
        Err(e) => Some(e.to_string()),
    };
    let facts = KernelFacts {
        release,
        machine,
        btf: kernel_btf.is_some(),
        lockdown: sys::lockdown(),
        lsms: sys::active_lsms(),
        kprobes: sys::has_kprobes(),
        features: kernel_btf.as_ref().map(features::facts).unwrap_or_default(),
        missing_privileges: missing_privileges.clone(),
    };
    let denial_of = |e: &Error| Denial { code: e.code(), errno: None, reason: e.to_string(), verifier_log: None };
    // Either a kernel context to try things with, or the one reason nothing
    // can be tried.
    let context: Result<KernelContext, Denial> = match &missing_privileges {
        Some(m) => Err(Denial {
            code: "NO_PRIVILEGES",
            errno: None,
            reason: format!("missing privileges ({m}): run as root, or with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"),
            verifier_log: None,
        }),
        None => KernelContext::probe().map_err(|e| match e {
            Error::NoBtf { .. } => Denial { code: "NO_BTF", ..denial_of(&e) },
            other => denial_of(&other),
        }),
    };
    let points = ATTACH_POINTS
        .iter()
        .map(|point| {
            let present = present(point, kernel_btf.as_ref());
            let checks = match (&context, present) {
                (_, Some(false)) => Vec::new(),
                (Err(d), _) => everything_denied(point, d),
                (Ok(k), _) => point.mechanisms.iter().map(|&m| check_one(m, point, k)).collect(),
            };
            PointReport { point: *point, present, checks }
        })
        .collect();
    // The modes' real attempts (refused or attached), for the memory;
    // failures to create the maps say nothing about the mode.
    let mut tried: Vec<(Mode, Option<Refusal>)> = Vec::new();
    let inputs = memory::inputs(&Filter::default(), 4096, true);
    let modes: Vec<ModeReport> = Mode::ALL
        .iter()
        .map(|&mode| {
            let mut blind_spots = Vec::new();
            let refusal = match &context {
                Err(d) => Some(mode_refusal(mode, d)),
                Ok(k) => match preemption_refusal(mode).map_or_else(|| try_mode(mode, k, &Filter::default(), 4096, true), |r| Err(Failure::Refused(r))) {
                    Ok((_, blind)) => {
                        blind_spots = blind;
                        tried.push((mode, None));
                        None
                    }
                    Err(Failure::Refused(r)) => {
                        tried.push((mode, Some(r.clone())));
                        Some(r)
                    }
                    Err(Failure::Fatal(e)) => Some(mode_refusal(mode, &denial_of(&e))),
                },
            };
            ModeReport { mode, refusal, blind_spots }
        })
        .collect();
    let auto = modes.iter().find(|m| m.refusal.is_none()).map(|m| m.mode);
    let learned = match &context {
        Ok(_) => {
            let outcomes: Vec<(Mode, Outcome<'_>)> =
                tried.iter().map(|(m, r)| (*m, r.as_ref().map_or(Outcome::Attached, Outcome::Refused))).collect();
            Memory::learn(&outcomes, &inputs, true)
        }
        Err(_) => Memory::peek(),
    };
    let memory = MemoryReport {
        file: RunDir::path(MEMORY_FILE).display().to_string(),
        refusals: learned.refusals,
        refreshed: learned.written,
        problem: learned.problem,
    };
    Report { kernel: facts, points, modes, auto, memory }
}

fn mode_refusal(mode: Mode, d: &Denial) -> Refusal {
    Refusal {
        mode,
        program: "",
        target: "",
        stage: "load",
        code: d.code,
        errno: d.errno,
        reason: d.reason.clone(),
        verifier_log: d.verifier_log.clone(),
        remembered: false,
    }
}

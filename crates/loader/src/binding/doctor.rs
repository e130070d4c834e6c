//! `doctor()` for `ts/doctor.ts`.

use napi::{bindgen_prelude::AsyncTask, Env, Task};
use napi_derive::napi;

use super::{binding_refusal, BindingRefusal};
use crate::{
    attach::Denial,
    doctor::{doctor as run_doctor, KernelFacts, Report},
};
use chroot_guard_common::probes::PointKind;

/// Why the kernel said no.
#[napi(object)]
pub struct BindingDenial {
    /// Stable code.
    pub code: String,
    /// errno name, if any.
    pub errno: Option<String>,
    /// Sentence for people.
    pub reason: String,
    /// Verifier log, if any.
    pub verifier_log: Option<String>,
}

/// One mechanism tried on one attach point.
#[napi(object)]
pub struct BindingCheck {
    /// `tracepoint`, `kprobe`, `fentry` or `lsm`.
    pub mechanism: String,
    /// Loaded and attached.
    pub ok: bool,
    /// Why not.
    pub denial: Option<BindingDenial>,
}

/// An attach point.
#[napi(object)]
pub struct BindingPoint {
    /// Tracepoint (`syscalls:…`) or function name.
    pub name: String,
    /// `tracepoint`, `function` or `lsm-hook`.
    pub kind: String,
    /// Whether the kernel has it; null when it cannot be told.
    pub present: Option<bool>,
    /// Checks, one per mechanism.
    pub checks: Vec<BindingCheck>,
}

/// One attach mode tried with the real programs.
#[napi(object)]
pub struct BindingModeReport {
    /// Mode name.
    pub mode: String,
    /// Attached.
    pub ok: bool,
    /// Why not.
    pub refusal: Option<BindingRefusal>,
    /// Compat-only programs refused though the mode runs.
    pub blind_spots: Vec<BindingRefusal>,
}

/// The memory of refused modes after `doctor` (see `doctor::MemoryReport`).
#[napi(object)]
pub struct BindingMemoryReport {
    /// Its file.
    pub file: String,
    /// The refusals remembered now: the modes `auto` skips.
    pub refusals: Vec<BindingRefusal>,
    /// Whether doctor rewrote it with what it found.
    pub refreshed: bool,
    /// What went wrong reading or writing it.
    pub problem: Option<String>,
}

/// Everything `doctor` found.
#[napi(object)]
pub struct BindingDoctorReport {
    /// Kernel facts.
    pub kernel: KernelFacts,
    /// Attach points.
    pub points: Vec<BindingPoint>,
    /// Modes, best first.
    pub modes: Vec<BindingModeReport>,
    /// The mode `auto` would choose.
    pub auto: Option<String>,
    /// The memory of refused modes.
    pub memory: BindingMemoryReport,
}

pub(super) fn denial(d: &Denial) -> BindingDenial {
    BindingDenial {
        code: d.code.into(),
        errno: d.errno.map(str::to_string),
        reason: d.reason.clone(),
        verifier_log: d.verifier_log.clone(),
    }
}

/// Runs the checks on the libuv pool.
pub struct DoctorTask;

impl Task for DoctorTask {
    type Output = Report;
    type JsValue = BindingDoctorReport;

    fn compute(&mut self) -> napi::Result<Report> {
        Ok(run_doctor())
    }

    fn resolve(&mut self, _env: Env, r: Report) -> napi::Result<BindingDoctorReport> {
        Ok(BindingDoctorReport {
            kernel: r.kernel,
            points: r
                .points
                .iter()
                .map(|p| BindingPoint {
                    name: match p.point.kind {
                        PointKind::Tracepoint => format!("syscalls:{}", p.point.name),
                        _ => p.point.name.to_string(),
                    },
                    kind: match p.point.kind {
                        PointKind::Tracepoint => "tracepoint",
                        PointKind::Function => "function",
                        PointKind::LsmHook => "lsm-hook",
                    }
                    .into(),
                    present: p.present,
                    checks: p
                        .checks
                        .iter()
                        .map(|c| BindingCheck {
                            mechanism: c.mechanism.name().into(),
                            ok: c.denial.is_none(),
                            denial: c.denial.as_ref().map(denial),
                        })
                        .collect(),
                })
                .collect(),
            modes: r
                .modes
                .iter()
                .map(|m| BindingModeReport {
                    mode: m.mode.name().into(),
                    ok: m.refusal.is_none(),
                    refusal: m.refusal.as_ref().map(binding_refusal),
                    blind_spots: m.blind_spots.iter().map(binding_refusal).collect(),
                })
                .collect(),
            auto: r.auto.map(|m| m.name().to_string()),
            memory: BindingMemoryReport {
                file: r.memory.file,
                refusals: r.memory.refusals.iter().map(binding_refusal).collect(),
                refreshed: r.memory.refreshed,
                problem: r.memory.problem,
            },
        })
    }
}

/// Tries every attach point and mode on this kernel (see `crate::doctor`).
#[napi(ts_return_type = "Promise<BindingDoctorReport>")]
pub fn doctor() -> AsyncTask<DoctorTask> {
    AsyncTask::new(DoctorTask)
}

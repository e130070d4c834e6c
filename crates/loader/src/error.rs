//! Errors of the loader, each with a stable `code` that the TypeScript layer
//! puts on `ChrootWatchError.code`.

use chroot_guard_common::Mode;

/// Why one attach mode could not be used on this kernel.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The mode that was refused.
    pub mode: Mode,
    /// Program that failed (a name from `PROBES`).
    pub program: &'static str,
    /// Kernel function or tracepoint it targets.
    pub target: &'static str,
    /// `"load"` (`BPF_PROG_LOAD`) or `"attach"` (link or perf event).
    pub stage: &'static str,
    /// Stable reason code: `EPERM` (the kernel refused the program type),
    /// `NO_KPROBES` (no `CONFIG_KPROBES`), `NO_BTF_FUNC` (target missing from
    /// kernel BTF), `NO_TRACEPOINT`, `VERIFIER` (rejected by the verifier:
    /// see `verifier_log`) or `ATTACH_FAILED`.
    pub code: &'static str,
    /// The errno name the kernel returned, when there was one (`"EPERM"`).
    pub errno: Option<&'static str>,
    /// A sentence for people: what failed and why.
    pub reason: String,
    /// The verifier's log when `code` is `VERIFIER`.
    pub verifier_log: Option<String>,
}

/// Errors of opening a session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process lacks the capabilities to load BPF programs.
    #[error("missing privileges ({missing})")]
    Privileges {
        /// Which capabilities are missing.
        missing: String,
    },
    /// The kernel has no BTF, so field offsets cannot be found.
    #[error("kernel BTF unavailable at {path}: {source}; chroot-guard needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf {
        /// Where BTF was looked for.
        path: &'static str,
        /// Why it could not be read.
        #[source]
        source: btf_rs::Error,
    },
    /// The kernel's BTF lacks a struct or field the programs read.
    #[error("kernel BTF has no {what}: this kernel's layout is not supported")]
    BtfField {
        /// `struct.field` that was looked for.
        what: String,
    },
    /// A mode was requested and the kernel refused it.
    #[error("{} mode is not available on this kernel: {}", .refusal.mode.name(), .refusal.reason)]
    ModeUnavailable {
        /// Why.
        refusal: Refusal,
    },
    /// `auto` tried every mode and none worked.
    #[error("no attach mode works on this kernel: {}", summarize(.refusals))]
    NoMode {
        /// One refusal per mode, best mode first.
        refusals: Vec<Refusal>,
    },
    /// A bad argument from the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The BPF LSM program cannot run on this kernel.
    #[error("the BPF LSM is not available on this kernel: {reason}")]
    LsmUnavailable {
        /// What `doctor` would say: `EPERM`, `LSM_INACTIVE`, `NO_BTF`, …
        code: &'static str,
        /// Why.
        reason: String,
    },
    /// The verifier rejected a program outside mode selection.
    #[error("{reason}")]
    Verifier {
        /// Program name.
        program: &'static str,
        /// Sentence for people.
        reason: String,
        /// The verifier's log.
        log: String,
    },
    /// A pseudo file system could not be mounted.
    #[error("could not mount {fstype} at {path}: {source}")]
    Mount {
        /// File system type.
        fstype: &'static str,
        /// Mount point.
        path: &'static str,
        /// The `mount(2)` error.
        #[source]
        source: std::io::Error,
    },
    /// Pinning a guard in bpffs, or opening, updating or removing a pinned
    /// one, failed.
    #[error("{path}: {reason}")]
    Pin {
        /// The pin directory or file.
        path: String,
        /// What failed, with the remedy when there is one.
        reason: String,
    },
    /// Creating the maps or parsing the object failed.
    #[error("could not create the BPF maps: {0}")]
    Maps(#[from] aya::EbpfError),
    /// A map of the object is missing or has the wrong type.
    #[error("the eBPF object is inconsistent: {0}")]
    Object(String),
    /// The ring-buffer thread could not be started.
    #[error("could not start the ring buffer reader: {0}")]
    Io(#[from] std::io::Error),
}

fn summarize(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(|r| format!("{}: {}", r.mode.name(), r.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The stable code for `ChrootWatchError.code`: `EPERM`,
    /// `UNSUPPORTED_KERNEL`, `MODE_UNAVAILABLE`, `LOAD_FAILED`,
    /// `INVALID_ARGUMENT`, `LSM_UNAVAILABLE`, `MOUNT_FAILED`, `PIN_FAILED` or
    /// `INTERNAL`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Privileges { .. } => "EPERM",
            Error::NoBtf { .. } | Error::BtfField { .. } => "UNSUPPORTED_KERNEL",
            Error::ModeUnavailable { refusal } if refusal.code == "VERIFIER" => "LOAD_FAILED",
            Error::ModeUnavailable { .. } => "MODE_UNAVAILABLE",
            Error::NoMode { refusals } if refusals.iter().any(|r| r.code == "VERIFIER") => "LOAD_FAILED",
            Error::NoMode { .. } => "UNSUPPORTED_KERNEL",
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::LsmUnavailable { .. } => "LSM_UNAVAILABLE",
            Error::Verifier { .. } => "LOAD_FAILED",
            Error::Mount { .. } => "MOUNT_FAILED",
            Error::Pin { .. } => "PIN_FAILED",
            Error::Maps(e) if is_eperm(e) => "EPERM",
            Error::Maps(_) => "LOAD_FAILED",
            Error::Object(_) | Error::Io(_) => "INTERNAL",
        }
    }

    /// Every refusal recorded on the way to this error.
    pub fn refusals(&self) -> &[Refusal] {
        match self {
            Error::ModeUnavailable { refusal } => std::slice::from_ref(refusal),
            Error::NoMode { refusals } => refusals,
            _ => &[],
        }
    }

    /// The verifier log of the rejected program, if any.
    pub fn verifier_log(&self) -> Option<&str> {
        match self {
            Error::Verifier { log, .. } => Some(log),
            _ => self.refusals().iter().find_map(|r| r.verifier_log.as_deref()),
        }
    }
}

fn is_eperm(e: &aya::EbpfError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(libc::EPERM);
        }
        source = err.source();
    }
    false
}

/// The symbolic name of an errno value (`"EPERM"`), for the few the kernel
/// answers BPF loads and attaches with.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::E2BIG => "E2BIG",
        libc::EBUSY => "EBUSY",
        libc::ENOMEM => "ENOMEM",
        libc::ENOTSUP => "ENOTSUP",
        libc::ESRCH => "ESRCH",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        524 => "ENOTSUPP",
        _ => return None,
    })
}

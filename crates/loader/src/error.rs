//! Errors of the loader, each with a stable `code` that the TypeScript layer
//! puts on `ChrootGuardError.code`.

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
    /// kernel BTF), `NO_BTF` (aya could not read the kernel's BTF),
    /// `NO_TRACEPOINT`, `VERIFIER` (rejected by the verifier: see
    /// `verifier_log`) or `ATTACH_FAILED`; `COMPAT_OFF` for a blind spot
    /// left on purpose.
    pub code: &'static str,
    /// The errno name the kernel returned, when there was one (`"EPERM"`).
    pub errno: Option<&'static str>,
    /// A sentence for people: what failed and why.
    pub reason: String,
    /// The verifier's log when `code` is `VERIFIER` (a remembered one keeps
    /// at most its last `memory::MAX_LOG_BYTES` bytes).
    pub verifier_log: Option<String>,
    /// `false` for an attempt made now; `true` when `auto` skipped the mode
    /// without loading anything because an earlier attempt, on this boot,
    /// kernel, eBPF object and capability set, was refused in a way certain
    /// to repeat ([`crate::memory`]): the other fields are that attempt's.
    pub remembered: bool,
}

/// A [`Refusal`] with owned strings, the mode by name: the shape in which a
/// refusal crosses to JavaScript (`BindingRefusal`, made the public
/// `Refusal` by `ts/session.ts`) and in which the memory of refused modes
/// stores it (`crate::memory`, without `remembered`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "napi", napi_derive::napi(object, js_name = "BindingRefusal"))]
pub struct RefusalRecord {
    /// Refused mode.
    pub mode: String,
    /// Program that failed.
    pub program: String,
    /// Its target function or tracepoint.
    pub target: String,
    /// `load` or `attach`.
    pub stage: String,
    /// Reason code (see `Refusal::code`).
    pub code: String,
    /// errno name, if any.
    pub errno: Option<String>,
    /// Sentence for people.
    pub reason: String,
    /// Verifier log, for `VERIFIER`.
    pub verifier_log: Option<String>,
    /// `auto` skipped the mode: an earlier attempt this boot was refused in
    /// a way certain to repeat (see `Refusal::remembered`). Not stored.
    #[serde(skip)]
    pub remembered: bool,
}

impl From<&Refusal> for RefusalRecord {
    fn from(r: &Refusal) -> Self {
        RefusalRecord {
            mode: r.mode.name().into(),
            program: r.program.into(),
            target: r.target.into(),
            stage: r.stage.into(),
            code: r.code.into(),
            errno: r.errno.map(str::to_string),
            reason: r.reason.clone(),
            verifier_log: r.verifier_log.clone(),
            remembered: r.remembered,
        }
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $text:literal,)*) => {
        /// A stable code of [`Error::code`]. The TypeScript layer has the
        /// same list (`CHROOT_GUARD_ERROR_CODES` in `ts/errors.ts`, plus the
        /// codes only it raises) and a test holds the two equal through the
        /// addon's `errorCodes()`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[$doc])* $name,)*
        }

        impl Code {
            /// Every code, in the order of the list.
            pub const ALL: &'static [Code] = &[$(Code::$name,)*];

            /// The code as `ChrootGuardError.code` spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $text,)*
                }
            }
        }
    };
}

codes! {
    /// The process may not load BPF programs.
    Eperm = "EPERM",
    /// No kernel BTF, or no attach mode works on this kernel.
    UnsupportedKernel = "UNSUPPORTED_KERNEL",
    /// The requested mode was refused.
    ModeUnavailable = "MODE_UNAVAILABLE",
    /// The verifier rejected a program, or the maps could not be created.
    LoadFailed = "LOAD_FAILED",
    /// A bad argument.
    InvalidArgument = "INVALID_ARGUMENT",
    /// The BPF LSM cannot run on this kernel.
    LsmUnavailable = "LSM_UNAVAILABLE",
    /// tracefs or bpffs could not be mounted.
    MountFailed = "MOUNT_FAILED",
    /// Pinning a guard, or reading, updating or removing a pinned one.
    PinFailed = "PIN_FAILED",
    /// A bug.
    Internal = "INTERNAL",
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
    /// The kernel lacks a feature every program needs
    /// ([`crate::features`], [`crate::features::Need::Object`]).
    #[error("{reason}")]
    MissingFeature {
        /// Which features, the releases that brought them, the remedy.
        reason: String,
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
    /// The handle was closed while it was opening (`close()` during
    /// `open()`). The TypeScript layer closed it, so it knows and does not
    /// report this; should it reach a caller, that is a bug (`INTERNAL`).
    #[error("the {what} was closed while it was opening")]
    Closed {
        /// What was closed: `session`, `guard`, `follower`.
        what: &'static str,
    },
    /// A method of a guard that is not running (closed, or not open yet).
    /// The TypeScript layer checks its own state first, so should it reach a
    /// caller, that is a bug (`INTERNAL`).
    #[error("the {what} is not running")]
    NotRunning {
        /// What was called on: `guard`.
        what: &'static str,
    },
    /// The kernel refused `ps`'s task iterator (`iter/task`): at load, at
    /// attach, or when its file was opened.
    #[error("the kernel refused the task iterator: {}", .denial.reason)]
    IteratorRefused {
        /// Why, classified like a refused attach mode.
        denial: crate::attach::Denial,
    },
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
    /// The stable code for `ChrootGuardError.code`: one of [`Code::ALL`].
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The [`Code`] of this error.
    pub fn kind(&self) -> Code {
        match self {
            Error::Privileges { .. } => Code::Eperm,
            Error::NoBtf { .. } | Error::BtfField { .. } | Error::MissingFeature { .. } => Code::UnsupportedKernel,
            Error::ModeUnavailable { refusal } if refusal.code == "VERIFIER" => Code::LoadFailed,
            Error::ModeUnavailable { .. } => Code::ModeUnavailable,
            Error::NoMode { refusals } if refusals.iter().any(|r| r.code == "VERIFIER") => Code::LoadFailed,
            Error::NoMode { .. } => Code::UnsupportedKernel,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::LsmUnavailable { .. } => Code::LsmUnavailable,
            Error::Verifier { .. } => Code::LoadFailed,
            Error::Mount { .. } => Code::MountFailed,
            Error::Pin { .. } => Code::PinFailed,
            Error::IteratorRefused { denial } if denial.code == "VERIFIER" => Code::LoadFailed,
            Error::IteratorRefused { denial } if denial.code == "EPERM" => Code::Eperm,
            Error::IteratorRefused { .. } => Code::UnsupportedKernel,
            Error::Maps(e) if is_eperm(e) => Code::Eperm,
            Error::Maps(_) => Code::LoadFailed,
            Error::Object(_) | Error::Closed { .. } | Error::NotRunning { .. } | Error::Io(_) => Code::Internal,
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
            Error::IteratorRefused { denial } => denial.verifier_log.as_deref(),
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

/// The errno values the kernel answers BPF loads and attaches with, by name.
const ERRNOS: [(i32, &str); 12] = [
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::EINVAL, "EINVAL"),
    (libc::EACCES, "EACCES"),
    (libc::E2BIG, "E2BIG"),
    (libc::EBUSY, "EBUSY"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::ENOTSUP, "ENOTSUP"),
    (libc::ESRCH, "ESRCH"),
    (libc::EEXIST, "EEXIST"),
    (libc::ENODEV, "ENODEV"),
    (524, "ENOTSUPP"),
];

/// The symbolic name of an errno value (`"EPERM"`), for the few the kernel
/// answers BPF loads and attaches with.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    ERRNOS.iter().find(|(n, _)| *n == errno).map(|(_, name)| *name)
}

/// The name of [`errno_name`]'s list equal to `name`, as a `'static` str
/// (for names read back from a file).
pub fn errno_named(name: &str) -> Option<&'static str> {
    ERRNOS.iter().find(|(_, n)| *n == name).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_screaming_snake_case() {
        let names: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(n.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{n}");
            assert!(!names[..i].contains(n), "{n} twice");
        }
    }

    #[test]
    fn closed_is_internal() {
        assert_eq!(Error::Closed { what: "session" }.code(), "INTERNAL");
        assert_eq!(Error::Closed { what: "session" }.to_string(), "the session was closed while it was opening");
    }
}

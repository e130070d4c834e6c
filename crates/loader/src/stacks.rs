//! `stacks`: distinct kernel stacks at each chroot hook, with counts, the
//! typed answer to `bpftrace -e 'k:*chroot* { @[kstack] = count(); }'`.
//!
//! One instance of the object per hook (`cg_stk_*` programs), each with its
//! own `CG_STACKS` stack trace map and `CG_STACK_COUNTS`; frames are
//! symbolized from /proc/kallsyms with blazesym.

use aya::{
    maps::{HashMap, MapData, StackTraceMap},
    Ebpf,
};
use blazesym::{
    symbolize::{
        source::{Kernel, Source},
        Input, Symbolized, Symbolizer,
    },
    MaybeDefault,
};
use chroot_guard_common::{
    probes::{Mechanism, PointKind, ATTACH_POINTS, TRACEPOINT_CATEGORY},
    Filter, Mode, StackKey,
};

use crate::{
    attach::{Denial, KernelContext, ModeRequest},
    doctor::{attach_check, present},
    error::{Error, Refusal},
};

/// One kernel stack frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Instruction address.
    pub address: u64,
    /// Kernel symbol from /proc/kallsyms, when found.
    pub symbol: Option<String>,
    /// Bytes from the symbol's start.
    pub offset: u64,
}

/// A distinct stack at one hook and how often it was seen.
#[derive(Debug, Clone)]
pub struct StackCount {
    /// The hook: a kernel function, or `syscalls:<tracepoint>`.
    pub hook: String,
    /// How many times.
    pub count: u64,
    /// Innermost first; empty when the kernel gave no kernel stack at this
    /// hook (syscall tracepoints on some kernels, e.g. 6.1, run with the
    /// user-mode registers).
    pub frames: Vec<Frame>,
}

struct Hook {
    name: String,
    ebpf: Ebpf,
}

/// Stack counters attached at every hook one mode can reach.
pub struct Stacks {
    hooks: Vec<Hook>,
    mode: Mode,
    refusals: Vec<Refusal>,
    skipped: Vec<(String, Denial)>,
}

fn hook_name(point: &str, kind: PointKind) -> String {
    match kind {
        PointKind::Tracepoint => format!("{TRACEPOINT_CATEGORY}:{point}"),
        _ => point.to_string(),
    }
}

fn refusal_of(mode: Mode, target: &'static str, d: &Denial) -> Refusal {
    Refusal {
        mode,
        program: chroot_guard_common::probes::check_program(Mechanism::of_mode(mode)),
        target,
        stage: "load",
        code: d.code,
        errno: d.errno,
        reason: d.reason.clone(),
        verifier_log: d.verifier_log.clone(),
        remembered: false,
    }
}

impl Stacks {
    /// Attaches a stack counter at every attach point the mode's mechanism
    /// can hook (for `auto`: the first mode where at least one attaches).
    ///
    /// # Errors
    /// The errors of [`KernelContext::probe`]; [`Error::ModeUnavailable`] or
    /// [`Error::NoMode`] when no hook attaches.
    pub fn start(request: ModeRequest) -> Result<Stacks, Error> {
        let kernel = KernelContext::probe()?;
        let modes: &[Mode] = match &request {
            ModeRequest::Auto => &Mode::ALL,
            ModeRequest::Only(m) => std::slice::from_ref(m),
        };
        let mut refusals = Vec::new();
        for &mode in modes {
            let mechanism = Mechanism::of_mode(mode);
            let mut hooks = Vec::new();
            let mut skipped = Vec::new();
            for point in ATTACH_POINTS.iter().filter(|p| p.mechanisms.contains(&mechanism)) {
                if present(point, Some(&kernel.btf)) == Some(false) {
                    continue;
                }
                let mut ebpf = kernel.load_object(&Filter::default(), 4096)?;
                match attach_check(&mut ebpf, mechanism, point.name, &kernel) {
                    Ok(()) => hooks.push(Hook { name: hook_name(point.name, point.kind), ebpf }),
                    Err(d) => skipped.push((hook_name(point.name, point.kind), d)),
                }
            }
            if !hooks.is_empty() {
                return Ok(Stacks { hooks, mode, refusals, skipped });
            }
            let first = skipped.first().map(|(_, d)| d.clone()).unwrap_or(Denial {
                code: "NO_TRACEPOINT",
                errno: None,
                reason: format!("no chroot attach point for {} exists in this kernel", mechanism.name()),
                verifier_log: None,
            });
            refusals.push(refusal_of(mode, "", &first));
        }
        match request {
            ModeRequest::Only(_) => Err(Error::ModeUnavailable {
                refusal: refusals.pop().ok_or_else(|| Error::Object("no refusal recorded".into()))?,
            }),
            ModeRequest::Auto => Err(Error::NoMode { refusals }),
        }
    }

    /// The mode the counters run in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why better modes were refused.
    pub fn refusals(&self) -> &[Refusal] {
        &self.refusals
    }

    /// The hooks counting stacks.
    pub fn hooks(&self) -> Vec<String> {
        self.hooks.iter().map(|h| h.name.clone()).collect()
    }

    /// Hooks of the mode that would not attach, and why.
    pub fn skipped(&self) -> &[(String, Denial)] {
        &self.skipped
    }

    /// Reads every hook's counts, symbolizes, and sorts most frequent first.
    ///
    /// # Errors
    /// [`Error::Object`] when a map is missing or unreadable.
    pub fn collect(&self) -> Result<Vec<StackCount>, Error> {
        // Per distinct stack: its hook, count, frames and link register.
        let mut raw: Vec<(String, u64, Vec<u64>, u64)> = Vec::new();
        for hook in &self.hooks {
            let map = |name: &str| {
                hook.ebpf.map(name).ok_or_else(|| Error::Object(format!("map {name} missing")))
            };
            let counts: HashMap<&MapData, StackKey, u64> =
                HashMap::try_from(map("CG_STACK_COUNTS")?).map_err(|e| Error::Object(e.to_string()))?;
            let traces = StackTraceMap::try_from(map("CG_STACKS")?).map_err(|e| Error::Object(e.to_string()))?;
            for entry in counts.iter() {
                let (key, count) = entry.map_err(|e| Error::Object(e.to_string()))?;
                if key.id == u32::MAX {
                    // Hits without a kernel stack (see crates/ebpf/src/stacks.rs).
                    raw.push((hook.name.clone(), count, Vec::new(), 0));
                    continue;
                }
                let Ok(trace) = traces.get(&key.id, 0) else { continue };
                raw.push((hook.name.clone(), count, trace.frames().iter().map(|f| f.ip).collect(), key.lr));
            }
        }
        // Each stack's frames, then its link register when there is one.
        let addrs: Vec<u64> =
            raw.iter().flat_map(|(_, _, ips, lr)| ips.iter().copied().chain((*lr != 0).then_some(*lr))).collect();
        let src = Source::Kernel(Kernel { vmlinux: MaybeDefault::None, debug_syms: false, ..Kernel::default() });
        let symbolizer = Symbolizer::new();
        let symbols = symbolizer.symbolize(&src, Input::AbsAddr(&addrs)).unwrap_or_default();
        let mut symbols = symbols.into_iter();
        let mut frame = |address: u64| match symbols.next() {
            Some(Symbolized::Sym(s)) => Frame { address, symbol: Some(s.name.into_owned()), offset: s.offset as u64 },
            _ => Frame { address, symbol: None, offset: 0 },
        };
        let mut out: Vec<StackCount> = raw
            .into_iter()
            .map(|(hook, count, ips, lr)| {
                let mut frames: Vec<Frame> = ips.into_iter().map(&mut frame).collect();
                if lr != 0 {
                    let lr = frame(lr);
                    // Only at a probe on the function's first instruction
                    // is the link register the caller the unwinder skipped
                    // (see `StackKey`).
                    if frames.first().is_some_and(|f| f.symbol.is_some() && f.offset == 0)
                        && frames.get(1).is_none_or(|f| f.address != lr.address)
                    {
                        frames.insert(1, lr);
                    }
                }
                StackCount { hook, count, frames }
            })
            .collect();
        // One row per distinct stack: a stack id seen with different link
        // registers where none was spliced in has the same frames.
        let mut seen: std::collections::HashMap<(String, Vec<u64>), usize> = std::collections::HashMap::new();
        out = out.into_iter().fold(Vec::new(), |mut rows, s| {
            let key = (s.hook.clone(), s.frames.iter().map(|f| f.address).collect());
            match seen.get(&key) {
                Some(&i) => rows[i].count += s.count,
                None => {
                    seen.insert(key, rows.len());
                    rows.push(s);
                }
            }
            rows
        });
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.hook.cmp(&b.hook)));
        Ok(out)
    }
}

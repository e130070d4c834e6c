//! The runs of fentry/fexit programs the kernel skipped.
//!
//! The BPF trampoline keeps a per-CPU guard for each tracing program and
//! skips a program entered on a CPU where it is already running, adding one
//! to its `recursion_misses` (`bpf_prog_info`, Linux 5.12+). A program
//! preempted mid-run is still running there, so on a kernel that preempts
//! fully every chroot(2) entering a preempted program's CPU is skipped.
//! fentry mode is refused where the kernel says it preempts fully
//! (`PREEMPT_FULL`, [`crate::attach`]), but the switch can change at run
//! time (`/sys/kernel/debug/sched/preempt`) and a kernel need not say it:
//! so the skips of the syscall's entry and exit programs, each losing one
//! call's own event, are counted here and reported with the losses
//! ([`crate::reader::Lost::recursion_missed`]).

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use aya::Ebpf;
use chroot_guard_common::{
    probes::{probes_for, ProgramKind, Role},
    Mode,
};

use crate::sys;

/// The counter of a session attached in `mode`: in fentry mode, over the
/// syscall entry and exit programs `ebpf` loaded (a compat program the
/// kernel refused is not among them); `None` in the other modes, whose
/// programs the kernel never skips this way: kprobe and tracepoint
/// programs run with preemption off (kprobe mode's missed returns are
/// another matter, [`crate::kretprobe::MissCounter`]).
pub fn for_session(ebpf: &Ebpf, mode: Mode) -> Option<RecursionCounter> {
    let programs = probes_for(mode)
        .filter(|p| {
            matches!(p.kind, ProgramKind::FEntry | ProgramKind::FExit) && matches!(p.role, Role::Enter | Role::Exit)
        })
        .filter_map(|p| ebpf.program(p.program)?.fd().ok()?.as_fd().try_clone_to_owned().ok())
        .collect::<Vec<_>>();
    (!programs.is_empty()).then(|| RecursionCounter::new(programs))
}

/// Sums the `recursion_misses` of a session's syscall entry and exit
/// programs.
#[derive(Debug)]
pub struct RecursionCounter {
    /// The programs, until [`RecursionCounter::release`]: their own
    /// descriptors, so a read never needs the object that loaded them.
    programs: Mutex<Vec<OwnedFd>>,
    /// The last sum read: a failed read or a released counter repeats it,
    /// so the total never goes down.
    last: AtomicU64,
}

impl RecursionCounter {
    /// Counts the skipped runs of `programs` (program descriptors).
    pub fn new(programs: Vec<OwnedFd>) -> Self {
        RecursionCounter { programs: Mutex::new(programs), last: AtomicU64::new(0) }
    }

    /// Runs skipped since load, summed over the programs: with the entry
    /// and exit programs both counted, a call skipped at both ends counts
    /// twice, so the sum is at most that many calls too many. One
    /// `BPF_OBJ_GET_INFO_BY_FD` per program; 0 where the kernel does not
    /// count skips (before 5.12).
    pub fn read(&self) -> u64 {
        let programs = self.programs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if programs.is_empty() {
            return self.last.load(Ordering::Relaxed);
        }
        let mut sum = 0u64;
        for p in programs.iter() {
            match sys::prog_recursion_misses(p.as_fd()) {
                Ok(n) => sum += n.unwrap_or(0),
                Err(_) => return self.last.load(Ordering::Relaxed),
            }
        }
        self.last.fetch_max(sum, Ordering::Relaxed).max(sum)
    }

    /// Reads one last time and closes the descriptors, which would keep
    /// the programs loaded after their session has detached them.
    pub fn release(&self) {
        self.read();
        self.programs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

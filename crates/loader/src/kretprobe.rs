//! kretprobes created through tracefs `kprobe_events`, with an explicit
//! `maxactive`, and the count of the returns they missed.
//!
//! A kretprobe sees the return of at most `maxactive` calls in flight at
//! once: each call takes an instance at entry and gives it back at return;
//! a call that finds none left is not seen returning, and the kernel only
//! adds one to the probe's `nmissed`. Kretprobes created through the perf
//! kprobe PMU (what aya's `KProbe::attach` does) get the kernel's default,
//! `max(10, 2 × possible CPUs)`, which nothing can raise
//! (`create_local_trace_kprobe` passes 0). Those created by writing
//! `rN:GROUP/EVENT SYMBOL` to `kprobe_events` get `N` (at most
//! [`KRETPROBE_MAXACTIVE_MAX`], the kernel's own bound), and their `nmissed`
//! is readable in `kprobe_profile`: so here the exit hooks of kprobe mode
//! get [`maxactive`] instances, and what they still miss is counted
//! ([`MissCounter`], reported as `kretprobeMissed`).
//!
//! An event is named `cg_kret_…_PID_N` in group [`GROUP`] (this process's
//! pid, a per-process counter): unique per session, and removed when the
//! session ends (the perf event is closed first: the kernel refuses to
//! remove an event in use with `EBUSY`). Events of a process that died
//! without removing them are removed at the next attach ([`remove_stale`]).

use std::{
    io::{self, Read, Write},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use crate::sys;

/// Group of chroot-guard's events in tracefs (`events/chroot_guard/`).
pub const GROUP: &str = "chroot_guard";

/// The kernel's bound on a kretprobe's `maxactive`
/// (`KRETPROBE_MAXACTIVE_MAX`, `kernel/trace/trace_kprobe.c`).
pub const KRETPROBE_MAXACTIVE_MAX: u32 = 4096;

/// Fewest instances each of our kretprobes gets, whatever the CPU count
/// (see [`maxactive`]).
pub const KRETPROBE_MAXACTIVE_MIN: u32 = 64;

/// Instances per possible CPU (see [`maxactive`]).
pub const KRETPROBE_MAXACTIVE_PER_CPU: u32 = 8;

/// `maxactive` of each kretprobe chroot-guard creates: calls of one probed
/// function that can be in flight at once and still be seen returning.
/// `max(64, 8 × possible CPUs)`, at most [`KRETPROBE_MAXACTIVE_MAX`]; 64 on
/// the 2-CPU test VM (the kernel's default there is 10). Calls in flight
/// are threads inside chroot(2), running or asleep in it, so no bound is
/// certain: this one covers the many threads per CPU a build farm runs, at
/// a few dozen bytes per instance, and every return missed beyond it is
/// counted (`kretprobeMissed`).
pub fn maxactive() -> u32 {
    possible_cpus()
        .saturating_mul(KRETPROBE_MAXACTIVE_PER_CPU)
        .clamp(KRETPROBE_MAXACTIVE_MIN, KRETPROBE_MAXACTIVE_MAX)
}

/// CPUs the kernel may bring up (`/sys/devices/system/cpu/possible`, e.g.
/// `0-1`): the count the kernel's own default is based on. Falls back to
/// the configured CPUs.
fn possible_cpus() -> u32 {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok().and_then(|s| {
        s.trim()
            .split(',')
            .map(|range| match range.split_once('-') {
                Some((a, b)) => Some(b.parse::<u32>().ok()? - a.parse::<u32>().ok()? + 1),
                None => range.parse::<u32>().ok().map(|_| 1),
            })
            .sum::<Option<u32>>()
    });
    // SAFETY: sysconf has no preconditions.
    parsed.unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32)
}

/// Whether kretprobes can be created here through tracefs: `kprobe_events`
/// exists on tracefs. Without it (a kernel with the perf kprobe PMU only)
/// kprobe mode attaches its kretprobes through the PMU, at the kernel's
/// default `maxactive`, and their misses cannot be counted.
pub fn available() -> bool {
    sys::open_tracefs("kprobe_events", libc::O_RDONLY).is_ok()
}

/// Numbers the events of this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One kretprobe event of ours with a BPF program attached through a perf
/// event. Dropping it closes the perf event (which detaches the program),
/// then removes the event from `kprobe_events`.
#[derive(Debug)]
pub struct TraceKretprobe {
    perf: Option<OwnedFd>,
    event: String,
}

impl TraceKretprobe {
    /// The event's name in [`GROUP`], as `kprobe_profile` lists it.
    pub fn event(&self) -> &str {
        &self.event
    }
}

impl Drop for TraceKretprobe {
    fn drop(&mut self) {
        self.perf.take();
        let _ = remove(&self.event);
    }
}

/// The tracefs kretprobes of one attached kprobe mode; dropping it detaches
/// and removes them all.
#[derive(Debug, Default)]
pub struct Kretprobes {
    probes: Vec<TraceKretprobe>,
    /// Events of the exit hooks: a return they miss is a call without an
    /// event.
    exits: Vec<String>,
}

impl Kretprobes {
    /// Keeps `probe`; `exit` when it ends events (its misses are calls
    /// lost).
    pub fn push(&mut self, probe: TraceKretprobe, exit: bool) {
        if exit {
            self.exits.push(probe.event.clone());
        }
        self.probes.push(probe);
    }

    /// The counter of the exit hooks' missed returns; `None` when no exit
    /// hook is a tracefs kretprobe (other modes, or the PMU fallback).
    pub fn miss_counter(&self) -> Option<MissCounter> {
        (!self.exits.is_empty()).then(|| MissCounter::new(self.exits.clone()))
    }
}

/// Creates the kretprobe `rN:chroot_guard/PROGRAM_PID_K SYMBOL` with
/// N = [`maxactive`] and attaches the loaded kprobe program `prog` to it:
/// `perf_event_open(2)` of the event's tracepoint id, then
/// `PERF_EVENT_IOC_SET_BPF` and `PERF_EVENT_IOC_ENABLE`, as aya does for a
/// perf-attached program. Nothing stays behind on failure.
///
/// # Errors
/// The failing step's error, with the step named: writing `kprobe_events`
/// (`ENOENT` for a symbol the kernel does not know, `EINVAL` for a refused
/// definition), reading the event's id, `perf_event_open(2)` or an `ioctl`.
pub fn attach(prog: BorrowedFd<'_>, program: &str, symbol: &str) -> io::Result<TraceKretprobe> {
    let event = format!("{program}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let define = format!("r{}:{GROUP}/{event} {symbol}", maxactive());
    match write_command(&define) {
        // Only a process that had our pid before and died without removing
        // its events can hold this name (the counter is ours): it is stale.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            remove(&event).map_err(|e| step("removing a stale event of the same name", e))?;
            write_command(&define)
        }
        other => other,
    }
    .map_err(|e| step(&format!("writing {define:?} to kprobe_events"), e))?;
    // From here on, dropping `probe` removes the event.
    let mut probe = TraceKretprobe { perf: None, event };
    let id = event_id(&probe.event).map_err(|e| step("reading the event's id", e))?;
    let perf = perf_event_open_tracepoint(id).map_err(|e| step("perf_event_open", e))?;
    // SAFETY: ioctls on a perf event descriptor we own; SET_BPF takes the
    // program's descriptor as its argument, ENABLE takes none.
    unsafe {
        if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) != 0 {
            return Err(step("PERF_EVENT_IOC_SET_BPF", io::Error::last_os_error()));
        }
        if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0 {
            return Err(step("PERF_EVENT_IOC_ENABLE", io::Error::last_os_error()));
        }
    }
    probe.perf = Some(perf);
    Ok(probe)
}

/// The error of one step of [`attach`], with the step named.
fn step(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Writes one command to `kprobe_events`, appending (a write without
/// `O_APPEND`, or with `O_TRUNC`, would clear every kprobe event of the
/// host).
fn write_command(command: &str) -> io::Result<()> {
    let mut f = sys::open_tracefs("kprobe_events", libc::O_WRONLY | libc::O_APPEND)?;
    f.write_all(format!("{command}\n").as_bytes())
}

/// Removes our event `event` (`-:chroot_guard/EVENT`).
fn remove(event: &str) -> io::Result<()> {
    write_command(&format!("-:{GROUP}/{event}"))
}

/// The tracepoint id of our event, from `events/chroot_guard/EVENT/id`.
fn event_id(event: &str) -> io::Result<u64> {
    let text = read_tracefs(&format!("events/{GROUP}/{event}/id"))?;
    text.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("not an id: {text:?}")))
}

fn read_tracefs(rel: &str) -> io::Result<String> {
    let mut text = String::new();
    sys::open_tracefs(rel, libc::O_RDONLY)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Removes the events of [`GROUP`] whose process is gone (a session that
/// crashed or was killed), from `kprobe_events`. Best effort: an event
/// still in use cannot be removed (`EBUSY`), so a live session's event is
/// never lost, even one of a process in another pid namespace whose pid
/// looks dead from here. Returns the events removed.
pub fn remove_stale() -> Vec<String> {
    let Ok(text) = read_tracefs("kprobe_events") else { return Vec::new() };
    stale_events(&text, sys::pid_alive).into_iter().filter(|event| remove(event).is_ok()).collect()
}

/// The events of [`GROUP`] listed in `kprobe_events` text (lines like
/// `r64:chroot_guard/cg_kret_sys_1234_0 __x64_sys_chroot`) whose pid is not
/// `alive`.
fn stale_events(kprobe_events: &str, alive: impl Fn(i32) -> bool) -> Vec<String> {
    kprobe_events
        .lines()
        .filter_map(|line| {
            let (_, name) = line.split_whitespace().next()?.split_once(':')?;
            let event = name.strip_prefix(GROUP)?.strip_prefix('/')?;
            let mut parts = event.rsplitn(3, '_');
            let (_, pid) = (parts.next()?.parse::<u32>().ok()?, parts.next()?.parse::<i32>().ok()?);
            (!alive(pid)).then(|| event.to_string())
        })
        .collect()
}

/// Counts the returns our exit kretprobes missed, from `kprobe_profile`
/// (`EVENT HITS NMISSED` per line; for a kretprobe, NMISSED is the returns
/// missed for want of an instance plus the entries the kprobe itself
/// missed, both calls whose end no program saw).
#[derive(Debug)]
pub struct MissCounter {
    events: Vec<String>,
    /// The last sum read: a failed read repeats it, so the total never
    /// goes down.
    last: AtomicU64,
}

impl MissCounter {
    /// Counts the misses of `events` (names in [`GROUP`]).
    pub fn new(events: Vec<String>) -> Self {
        MissCounter { events, last: AtomicU64::new(0) }
    }

    /// Returns missed by the events since they were created: calls that
    /// ended without an event.
    pub fn read(&self) -> u64 {
        let Ok(text) = read_tracefs("kprobe_profile") else { return self.last.load(Ordering::Relaxed) };
        let sum = nmissed(&text, &self.events);
        self.last.fetch_max(sum, Ordering::Relaxed).max(sum)
    }
}

/// The sum of the `nmissed` column of `events` in `kprobe_profile` text.
fn nmissed(kprobe_profile: &str, events: &[String]) -> u64 {
    kprobe_profile
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let name = cols.next()?;
            let missed = cols.nth(1)?.parse::<u64>().ok()?;
            events.iter().any(|e| e == name).then_some(missed)
        })
        .sum()
}

/// `PERF_TYPE_TRACEPOINT` (`include/uapi/linux/perf_event.h`).
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// The first 64 bytes of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER0`),
/// all a tracepoint event for a BPF program needs; the kernel takes the
/// fields after `size` bytes as zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// `perf_event_open(2)` of tracepoint `id` for every process, on CPU 0: a
/// BPF program attached to a trace event runs on every CPU (it hangs off
/// the event, not the perf event), as in aya and libbpf.
fn perf_event_open_tracepoint(id: u64) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: a valid attr of the size it states; pid -1, cpu 0, no group.
    let fd = unsafe {
        libc::syscall(libc::SYS_perf_event_open, &raw const attr, -1 as libc::pid_t, 0 as libc::c_int, -1 as libc::c_int, PERF_FLAG_FD_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor perf_event_open just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxactive_is_within_the_kernels_bounds() {
        let n = maxactive();
        assert!((KRETPROBE_MAXACTIVE_MIN..=KRETPROBE_MAXACTIVE_MAX).contains(&n), "{n}");
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64);
    }

    #[test]
    fn stale_events_are_ours_with_a_dead_pid() {
        let text = "r64:chroot_guard/cg_kret_sys_100_0 __x64_sys_chroot\n\
                    r64:chroot_guard/cg_kret_sys32_200_3 __ia32_sys_chroot\n\
                    r10:other/cg_kret_sys_100_1 __x64_sys_chroot\n\
                    p:chroot_guard/odd_name do_sys_open\n\
                    r64:chroot_guard_x/cg_kret_sys_100_2 __x64_sys_chroot\n";
        assert_eq!(stale_events(text, |pid| pid == 200), vec!["cg_kret_sys_100_0".to_string()]);
    }

    #[test]
    fn nmissed_sums_the_named_events() {
        let text = "  cg_kret_sys_100_0                                         2000               7\n\
                    \x20 cg_kret_sys32_100_1                                          0               0\n\
                    \x20 someone_else                                               10             99\n";
        let ours = vec!["cg_kret_sys_100_0".to_string(), "cg_kret_sys32_100_1".to_string()];
        assert_eq!(nmissed(text, &ours), 7);
    }
}

//! `ps`: every process whose root is not its mount namespace's root, now.
//!
//! Read from the kernel with the `iter/task` program (`cg_iter_task`,
//! `crates/ebpf/src/tasks.rs`): load the object, load and attach the
//! iterator, read its file to the end, parse the [`TaskRecord`]s, and drop
//! it all (program, link, maps: nothing stays loaded). Where the kernel
//! refuses the iterator, [`chrooted_tasks`] falls back to a `/proc` scan
//! ([`crate::proc_scan`]) and says why.

use std::{io::Read, mem::offset_of};

use aya::programs::Iter;
use chroot_guard_common::{
    probes::{PS_ITERATOR, PS_PROGRAM},
    tasks::{TaskRecord, TASK_HEADER_BYTES},
    Filter, COMM_LEN,
};

use crate::{
    attach::{classify, Denial, KernelContext},
    error::Error,
    proc_scan,
};

/// One chrooted process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChrootedTask {
    /// Process id (tgid).
    pub tgid: u32,
    /// Parent's process id (`real_parent->tgid`; `PPid` in `/proc`).
    pub ppid: u32,
    /// Real uid (`cred->uid`).
    pub uid: u32,
    /// Inode number of the mount namespace.
    pub mnt_ns: u32,
    /// [`chroot_guard_common::tasks::task_flags`] bits.
    pub flags: u32,
    /// [`chroot_guard_common::exe_flags`] bits of `exe` (low byte).
    pub exe_flags: u16,
    /// Process start, ns since boot (`task->start_boottime`; from `/proc`,
    /// `starttime` in clock ticks, so to 1/`CLK_TCK` s).
    pub start_ns: u64,
    /// cgroup v2 id; `None` when the `/proc` scan found no cgroup2 mount.
    pub cgroup_id: Option<u64>,
    /// `comm`, without its NUL padding.
    pub comm: Vec<u8>,
    /// The root, raw bytes.
    pub root: Vec<u8>,
    /// The working directory, raw bytes; `None` when unknown.
    pub cwd: Option<Vec<u8>>,
    /// The executable, raw bytes; `None` without one (or unreadable).
    pub exe: Option<Vec<u8>>,
}

/// Where [`chrooted_tasks`] reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The iterator, or `/proc` where the kernel refuses it.
    Auto,
    /// The `iter/task` iterator or an error.
    Iterator,
    /// `/proc` only (no BPF at all).
    Proc,
}

impl std::str::FromStr for Source {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(Source::Auto),
            "iterator" => Ok(Source::Iterator),
            "proc" => Ok(Source::Proc),
            _ => Err(Error::InvalidArgument(format!("unknown source {s:?}: expected auto, iterator or proc"))),
        }
    }
}

/// What [`chrooted_tasks`] found.
#[derive(Debug, Clone)]
pub struct PsReport {
    /// `true` when read by the iterator, `false` from `/proc`.
    pub from_iterator: bool,
    /// Why the iterator was not used, in `auto` when it fell back.
    pub iterator_refusal: Option<Denial>,
    /// The chrooted processes, by tgid.
    pub tasks: Vec<ChrootedTask>,
}

/// Every chrooted process now, from `source`.
///
/// # Errors
/// With [`Source::Iterator`], what [`read_iterator`] fails with; with
/// [`Source::Proc`] or a fallback, [`Error::Io`] when `/proc` cannot be
/// listed.
pub fn chrooted_tasks(source: Source) -> Result<PsReport, Error> {
    let (from_iterator, iterator_refusal, mut tasks) = match source {
        Source::Iterator => (true, None, read_iterator()?),
        Source::Proc => (false, None, proc_scan::scan()?),
        Source::Auto => match read_iterator() {
            Ok(t) => (true, None, t),
            Err(e) => (false, Some(denial_of(&e)), proc_scan::scan()?),
        },
    };
    tasks.sort_by_key(|t| t.tgid);
    Ok(PsReport { from_iterator, iterator_refusal, tasks })
}

/// An iterator failure as the [`Denial`] a fallback reports.
fn denial_of(e: &Error) -> Denial {
    match e {
        Error::IteratorRefused { denial } => denial.clone(),
        _ => Denial { code: e.code(), errno: None, reason: e.to_string(), verifier_log: e.verifier_log().map(str::to_string) },
    }
}

/// Loads the object, runs the iterator once and parses what it wrote.
/// Everything is dropped before returning.
///
/// # Errors
/// The errors of [`KernelContext::probe`] and [`KernelContext::load_object`];
/// [`Error::IteratorRefused`] when the kernel refuses to load, attach or
/// read the iterator (or has no BTF for aya to load it against).
pub fn read_iterator() -> Result<Vec<ChrootedTask>, Error> {
    let kernel = KernelContext::probe()?;
    // The smallest ring buffer: ps sends nothing through it.
    let mut ebpf = kernel.load_object(&Filter::default(), page_size())?;
    let btf = kernel.aya_btf().ok_or_else(|| Error::IteratorRefused {
        denial: Denial {
            code: "NO_BTF",
            errno: None,
            reason: format!("aya could not read {}: iterators load by BTF id", crate::btf::VMLINUX_BTF),
            verifier_log: None,
        },
    })?;
    let prog: &mut Iter = ebpf
        .program_mut(PS_PROGRAM)
        .ok_or_else(|| Error::Object(format!("program {PS_PROGRAM} missing")))?
        .try_into()
        .map_err(|_| Error::Object(format!("program {PS_PROGRAM} is not an iterator")))?;
    let target = "bpf_iter_task";
    let refused = |stage: &'static str| move |e| Error::IteratorRefused { denial: classify("iter", PS_PROGRAM, target, stage, &e) };
    prog.load(PS_ITERATOR, btf).map_err(refused("load"))?;
    let link = prog.attach().map_err(refused("attach"))?;
    let link = prog.take_link(link).map_err(refused("attach"))?;
    let mut file = link.into_file().map_err(|e| Error::IteratorRefused {
        denial: Denial { code: "ATTACH_FAILED", errno: None, reason: format!("could not open the task iterator: {e}"), verifier_log: None },
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    parse(&bytes)
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u32
}

/// Parses the iterator's output: [`TaskRecord`] headers, each followed by
/// its three paths.
///
/// # Errors
/// [`Error::Object`] when a record is cut short (a kernel and user space
/// that disagree on the layout).
pub fn parse(bytes: &[u8]) -> Result<Vec<ChrootedTask>, Error> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let h = bytes.get(at..at + TASK_HEADER_BYTES).ok_or_else(|| Error::Object(format!("task record cut short at byte {at}")))?;
        let u16_at = |o: usize| u16::from_ne_bytes([h[o], h[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_ne_bytes(h[o..o + 8].try_into().unwrap_or_default());
        let lens = [
            u16_at(offset_of!(TaskRecord, root_len)) as usize,
            u16_at(offset_of!(TaskRecord, cwd_len)) as usize,
            u16_at(offset_of!(TaskRecord, exe_len)) as usize,
        ];
        let data_at = at + TASK_HEADER_BYTES;
        let end = data_at + lens.iter().sum::<usize>();
        let data = bytes.get(data_at..end).ok_or_else(|| Error::Object(format!("task record at byte {at} cut short")))?;
        let (root, rest) = data.split_at(lens[0]);
        let (cwd, exe) = rest.split_at(lens[1]);
        let flags = u32_at(offset_of!(TaskRecord, flags));
        let exe_flags = u16_at(offset_of!(TaskRecord, exe_flags));
        let comm = &h[offset_of!(TaskRecord, comm)..offset_of!(TaskRecord, comm) + COMM_LEN];
        let comm_len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        out.push(ChrootedTask {
            tgid: u32_at(offset_of!(TaskRecord, tgid)),
            ppid: u32_at(offset_of!(TaskRecord, ppid)),
            uid: u32_at(offset_of!(TaskRecord, uid)),
            mnt_ns: u32_at(offset_of!(TaskRecord, mnt_ns)),
            flags,
            exe_flags,
            start_ns: u64_at(offset_of!(TaskRecord, start_ns)),
            cgroup_id: Some(u64_at(offset_of!(TaskRecord, cgroup_id))),
            comm: comm[..comm_len].to_vec(),
            root: root.to_vec(),
            cwd: (flags & chroot_guard_common::tasks::task_flags::CWD_PRESENT != 0).then(|| cwd.to_vec()),
            exe: (exe_flags & chroot_guard_common::exe_flags::PRESENT != 0).then(|| exe.to_vec()),
        });
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests_support::object_btf_members;

    #[test]
    fn task_record_matches_object_btf() {
        let (size, members) = object_btf_members("TaskRecord");
        assert_eq!(size, std::mem::size_of::<TaskRecord>(), "sizeof(TaskRecord)");
        let ours = [
            ("tgid", offset_of!(TaskRecord, tgid)),
            ("ppid", offset_of!(TaskRecord, ppid)),
            ("uid", offset_of!(TaskRecord, uid)),
            ("mnt_ns", offset_of!(TaskRecord, mnt_ns)),
            ("flags", offset_of!(TaskRecord, flags)),
            ("root_len", offset_of!(TaskRecord, root_len)),
            ("cwd_len", offset_of!(TaskRecord, cwd_len)),
            ("exe_len", offset_of!(TaskRecord, exe_len)),
            ("exe_flags", offset_of!(TaskRecord, exe_flags)),
            ("start_ns", offset_of!(TaskRecord, start_ns)),
            ("cgroup_id", offset_of!(TaskRecord, cgroup_id)),
            ("comm", offset_of!(TaskRecord, comm)),
            ("data", offset_of!(TaskRecord, data)),
        ];
        let named: Vec<_> = members.iter().filter(|(n, _)| !n.starts_with("_pad")).collect();
        assert_eq!(named.len(), ours.len(), "fields of TaskRecord in the object's BTF: {members:?}");
        for (name, offset) in ours {
            let theirs = members.iter().find(|(n, _)| n == name).map(|(_, o)| *o as usize);
            assert_eq!(theirs, Some(offset), "offset of TaskRecord.{name}");
        }
    }

    #[test]
    fn parse_reads_back_to_back_records_and_refuses_a_cut_one() {
        let mut rec: TaskRecord = unsafe { std::mem::zeroed() };
        rec.tgid = 42;
        rec.ppid = 7;
        rec.flags = chroot_guard_common::tasks::task_flags::CWD_PRESENT;
        rec.comm[..3].copy_from_slice(b"abc");
        let paths: &[u8] = b"/r\xff/c/x/e";
        rec.root_len = 3;
        rec.cwd_len = 2;
        rec.exe_len = 4;
        rec.exe_flags = chroot_guard_common::exe_flags::PRESENT;
        rec.data[..paths.len()].copy_from_slice(paths);
        // SAFETY: a plain repr(C) struct with no holes, read as bytes.
        let raw = unsafe { std::slice::from_raw_parts((&rec as *const TaskRecord).cast::<u8>(), rec.record_len()) };
        let two = [raw, raw].concat();
        let tasks = parse(&two).expect("parses");
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[1].root, b"/r\xff");
        assert_eq!(tasks[1].cwd.as_deref(), Some(&b"/c"[..]));
        assert_eq!(tasks[1].exe.as_deref(), Some(&b"/x/e"[..]));
        assert_eq!(tasks[1].comm, b"abc");
        assert!(parse(&two[..two.len() - 1]).is_err());
    }
}

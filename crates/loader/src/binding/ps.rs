//! `chrootedTasks()` for `ts/ps.ts`.

use napi::{
    bindgen_prelude::{AsyncTask, Buffer},
    Env, Task,
};
use chroot_guard_common::{exe_flags, tasks::task_flags};
use napi_derive::napi;

use super::{
    doctor::{denial, BindingDenial},
    BindingFailure,
};
use crate::{
    error::Error,
    ps::{chrooted_tasks, ChrootedTask, PsReport, Source},
};

/// One chrooted process (`crate::ps::ChrootedTask`); paths as raw bytes.
#[napi(object)]
pub struct BindingChrootedTask {
    /// tgid.
    pub pid: u32,
    /// Parent's tgid.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Mount namespace inode number.
    pub mnt_ns: u32,
    /// `ROOT_TRUNCATED`.
    pub root_truncated: bool,
    /// `ROOT_UNREACHABLE`.
    pub root_unreachable: bool,
    /// `CWD_OUTSIDE_ROOT`; absent with `CWD_BELOW_UNKNOWN` or no cwd.
    pub cwd_outside_root: Option<bool>,
    /// `CWD_TRUNCATED`.
    pub cwd_truncated: bool,
    /// `CWD_UNREACHABLE`.
    pub cwd_unreachable: bool,
    /// `exe_flags::TRUNCATED`.
    pub exe_truncated: bool,
    /// `exe_flags::UNREACHABLE`.
    pub exe_unreachable: bool,
    /// `exe_flags::DELETED`.
    pub exe_deleted: bool,
    /// `exe_flags::MEMFD`.
    pub exe_memfd: bool,
    /// ns since boot, as a decimal string (u64).
    pub start_ns: String,
    /// cgroup v2 id as a decimal string (u64), if known.
    pub cgroup_id: Option<String>,
    /// comm bytes.
    pub comm: Buffer,
    /// Root bytes.
    pub root: Buffer,
    /// cwd bytes, if known.
    pub cwd: Option<Buffer>,
    /// exe bytes, if any.
    pub exe: Option<Buffer>,
}

/// Outcome of `chrootedTasks()`, never a rejection.
#[napi(object)]
pub struct BindingPsResult {
    /// Why it failed; absent on success.
    pub failure: Option<BindingFailure>,
    /// `iterator` or `proc`.
    pub source: String,
    /// Why the iterator was not used (`auto` only).
    pub iterator_refusal: Option<BindingDenial>,
    /// The processes, by pid.
    pub tasks: Vec<BindingChrootedTask>,
}

/// Lists the chrooted processes on the libuv pool. `source`: `auto`,
/// `iterator` or `proc`.
#[napi(ts_return_type = "Promise<BindingPsResult>")]
pub fn chrooted_tasks_native(source: String) -> AsyncTask<PsTask> {
    AsyncTask::new(PsTask { source })
}

/// See [`chrooted_tasks_native`].
pub struct PsTask {
    source: String,
}

impl Task for PsTask {
    type Output = Result<PsReport, Error>;
    type JsValue = BindingPsResult;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.source.parse::<Source>().and_then(chrooted_tasks))
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> napi::Result<BindingPsResult> {
        Ok(match out {
            Ok(r) => BindingPsResult {
                failure: None,
                source: if r.from_iterator { "iterator" } else { "proc" }.into(),
                iterator_refusal: r.iterator_refusal.as_ref().map(denial),
                tasks: r.tasks.into_iter().map(task).collect(),
            },
            Err(e) => BindingPsResult { failure: Some((&e).into()), source: String::new(), iterator_refusal: None, tasks: Vec::new() },
        })
    }
}

fn task(t: ChrootedTask) -> BindingChrootedTask {
    BindingChrootedTask {
        pid: t.tgid,
        ppid: t.ppid,
        uid: t.uid,
        mnt_ns: t.mnt_ns,
        root_truncated: t.flags & task_flags::ROOT_TRUNCATED != 0,
        root_unreachable: t.flags & task_flags::ROOT_UNREACHABLE != 0,
        cwd_outside_root: (t.flags & task_flags::CWD_PRESENT != 0 && t.flags & task_flags::CWD_BELOW_UNKNOWN == 0)
            .then_some(t.flags & task_flags::CWD_OUTSIDE_ROOT != 0),
        cwd_truncated: t.flags & task_flags::CWD_TRUNCATED != 0,
        cwd_unreachable: t.flags & task_flags::CWD_UNREACHABLE != 0,
        exe_truncated: t.exe_flags & exe_flags::TRUNCATED != 0,
        exe_unreachable: t.exe_flags & exe_flags::UNREACHABLE != 0,
        exe_deleted: t.exe_flags & exe_flags::DELETED != 0,
        exe_memfd: t.exe_flags & exe_flags::MEMFD != 0,
        start_ns: t.start_ns.to_string(),
        cgroup_id: t.cgroup_id.map(|c| c.to_string()),
        comm: t.comm.into(),
        root: t.root.into(),
        cwd: t.cwd.map(Into::into),
        exe: t.exe.map(Into::into),
    }
}

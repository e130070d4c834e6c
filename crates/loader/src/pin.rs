//! Pinned guards: `enforce --pin` leaves `lsm/path_chroot` attached after
//! the process that loaded it exits.
//!
//! A pin directory (default [`DEFAULT_PIN_DIR`]) holds, and nothing else
//! keeps state (bpffs is emptied at reboot, and so is the guard):
//!
//! | file | what |
//! |------|------|
//! | `link` | the BPF link of `lsm/path_chroot`; removing it detaches the program |
//! | `CG_ACTIVE` … `CG_RULE_IDS` | the policy maps ([`POLICY_MAPS`]); updates write them |
//! | `CG_COUNTERS` | the per-CPU lost/error counters |
//! | `CG_EVENTS` | the ring buffer of decision events; [`follow`] reads it |
//!
//! The directory appears whole or not at all: everything is pinned into a
//! temporary sibling (`NAME-pinning-PID`) that is renamed into place last;
//! a crash in between leaves that sibling behind, and [`leftovers`] finds
//! it. Updates and removal hold an exclusive `flock(2)` on the directory.
//!
//! Whatever is read, updated or removed must be a pin directory as `pin`
//! makes one (`PinDir`): a real directory (no symbolic link) on
//! bpffs, in a directory on bpffs, owned by root or by this process's user.
//! Removal takes out only [`PINNED_NAMES`], then the directory if nothing
//! else is in it: a directory passed by mistake (or planted) loses nothing.
//!
//! A ring buffer has one consumer position, so two readers would each see
//! part of the decisions: whoever reads a pinned ring buffer (the pinning
//! guard until it closes, or one [`follow`]er) holds a [`RingLock`] on it.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::links::{FdLink, PinnedLink},
};

use crate::{
    error::Error,
    policy::{compile, Policy, PolicyMaps, Slots, POLICY_MAPS},
    reader::{Counters, Lost, Reader, ReaderConfig, Sink},
    run_dir::{DirError, RunDir, FILE_MODE, RUN_DIR},
    session::SessionStats,
    sys::{self, trusted_owner, BPF_FS_MAGIC},
};

/// Where `enforce --pin` pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/chroot-guard";
/// The link's file in a pin directory.
const LINK: &str = "link";
/// The counters' file in a pin directory.
const COUNTERS: &str = "CG_COUNTERS";
/// The ring buffer's file in a pin directory (and the map's name).
pub(crate) const EVENTS: &str = "CG_EVENTS";
/// Every name a guard pins in its directory, the link first (removing it
/// detaches the program): what `pin` makes and the only names
/// [`unload`] removes.
pub const PINNED_NAMES: [&str; 9] = [
    LINK,
    POLICY_MAPS[0],
    POLICY_MAPS[1],
    POLICY_MAPS[2],
    POLICY_MAPS[3],
    POLICY_MAPS[4],
    POLICY_MAPS[5],
    COUNTERS,
    EVENTS,
];
const _: () = assert!(POLICY_MAPS.len() == 6, "PINNED_NAMES and PinnedGuard::maps list every policy map");
/// What a pin directory's temporary sibling is called after the
/// directory's name: `NAME-pinning-PID` (bpffs refuses names with dots).
const PINNING: &str = "-pinning-";
/// An exclusive `flock(2)` naming the one reader of a ring buffer, by map
/// id (unique while the map exists). Released when dropped.
pub struct RingLock {
    _file: File,
}

impl RingLock {
    /// Takes the lock of the ring buffer map `events`, without waiting.
    /// The lock file (`/run/chroot-guard/ring-ID.lock`, mode 0600 in a 0700
    /// directory) is opened without following a symbolic link and without
    /// truncating, so nothing planted there redirects or blocks it.
    ///
    /// # Errors
    /// [`Error::Pin`] when another process reads it already, the lock
    /// directory is not chroot-guard's (see `lock_dir`), or the lock file
    /// cannot be opened (a symbolic link in its place: `ELOOP`).
    pub fn acquire(events: &MapData, dir: &Path) -> Result<RingLock, Error> {
        let id = events.info().map_err(|e| pin_err(dir, format!("could not read the ring buffer's map info: {e}")))?.id();
        let name = format!("ring-{id}.lock");
        let path = RunDir::path(&name);
        let file = lock_dir()?.open_lock(&name).map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::ELOOP) {
                format!("a symbolic link is in the lock file's place, and chroot-guard does not follow it; remove it (`rm {}`)", path.display())
            } else {
                format!("could not open the lock file: {e}")
            };
            pin_err(&path, why)
        })?;
        let meta = file.metadata().map_err(|e| pin_err(&path, format!("could not read the lock file: {e}")))?;
        if !meta.file_type().is_file() || !trusted_owner(meta.uid()) {
            return Err(pin_err(&path, format!("not a regular file owned by root; remove it (`rm {}`) and run again", path.display())));
        }
        if meta.mode() & 0o777 != FILE_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(|e| pin_err(&path, format!("could not make the lock file private (chmod 0600): {e}")))?;
        }
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(pin_err(
                dir,
                format!("another reader (a follower, or the process that pinned the guard) reads this guard's decisions already (lock {} held); a ring buffer has one reader, so stop that one first", path.display()),
            ));
        }
        Ok(RingLock { _file: file })
    }
}

/// [`RUN_DIR`], created or checked (see [`RunDir::open`]).
///
/// # Errors
/// [`Error::Pin`] saying what is wrong with it and, when something not
/// chroot-guard's is in its place, how to remove it.
fn lock_dir() -> Result<RunDir, Error> {
    let dir = Path::new(RUN_DIR);
    match RunDir::open(true) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(pin_err(dir, "the lock directory vanished while it was created")),
        Err(DirError::Io(why)) => Err(pin_err(dir, format!("lock directory: {why}"))),
        Err(DirError::Foreign(why)) => Err(pin_err(
            dir,
            format!("{why}; chroot-guard keeps its lock files (and its memory of refused attach modes) there and only root may create names in it: remove it (`rm -rf {RUN_DIR}`, as root) and run again"),
        )),
    }
}

fn pin_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Pin { path: path.display().to_string(), reason: reason.into() }
}

/// The directory `dir` is in (`.` for a bare name).
fn parent_of(dir: &Path) -> &Path {
    dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// What [`PinDir::remove_ours`] did.
struct Removal {
    /// Something of ours (a pin, or the empty directory) was removed.
    removed: bool,
    /// Why the directory was kept, when it was.
    kept: Option<String>,
}

/// A pin directory, opened without following a symbolic link and checked
/// to be one chroot-guard may read, update or empty: a directory on bpffs,
/// in a directory on bpffs (not a mount's root), owned by root or by this
/// process's user.
pub(crate) struct PinDir {
    path: PathBuf,
    file: File,
}

impl PinDir {
    /// Opens and checks `dir`; `Ok(None)` when nothing is there.
    ///
    /// # Errors
    /// [`Error::Pin`], saying what to do, when `dir` is a symbolic link, not
    /// a directory, not on bpffs, the root of a bpffs mount, or owned by
    /// another user (so chroot-guard did not make it).
    fn open(dir: &Path) -> Result<Option<PinDir>, Error> {
        let which = format!("pass the directory `enforce --pin` pinned into (--pin-dir, default {DEFAULT_PIN_DIR})");
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC).open(dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // O_NOFOLLOW with O_DIRECTORY refuses a symbolic link with
            // ENOTDIR (or ELOOP): say which of the two it is.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                let link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
                let what = if link { "is a symbolic link, not a pin directory, and chroot-guard does not follow it" } else { "is not a directory, so not a pin directory" };
                return Err(pin_err(dir, format!("{what}; {which}")));
            }
            Err(e) => return Err(pin_err(dir, format!("could not open the pin directory: {e}"))),
        };
        if sys::fd_fs_magic(file.as_fd()) != Some(BPF_FS_MAGIC) {
            return Err(pin_err(
                dir,
                format!("is not on a BPF file system (bpffs), so it holds no pinned guard and chroot-guard touches nothing in it; {which}"),
            ));
        }
        if sys::fs_magic(&parent_of(dir).to_string_lossy()) != Some(BPF_FS_MAGIC) {
            return Err(pin_err(dir, format!("is the root of a bpffs mount, not a pin directory in one; {which}")));
        }
        let meta = file.metadata().map_err(|e| pin_err(dir, format!("could not read the pin directory: {e}")))?;
        if !trusted_owner(meta.uid()) {
            return Err(pin_err(
                dir,
                format!(
                    "is owned by uid {}, so chroot-guard did not make it and touches nothing in it; if it is in the way, remove it (`rm -r {}`) and mount bpffs with {} so that other users cannot create names there",
                    meta.uid(),
                    dir.display(),
                    sys::BPFFS_OPTIONS
                ),
            ));
        }
        Ok(Some(PinDir { path: dir.to_path_buf(), file }))
    }

    /// Opens and checks `dir` (see [`PinDir::open`]), then waits for the
    /// exclusive lock that updates and removal take. `Ok(None)` when
    /// nothing is there, or it was removed while we waited.
    ///
    /// # Errors
    /// Those of [`PinDir::open`]; [`Error::Pin`] when the lock fails.
    pub(crate) fn lock(dir: &Path) -> Result<Option<PinDir>, Error> {
        let Some(pins) = PinDir::open(dir)? else { return Ok(None) };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(pins.file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(pin_err(dir, format!("could not lock the pin directory: {}", io::Error::last_os_error())));
        }
        // A removed directory has no links left, even while we hold it open.
        let gone = pins.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
        Ok(if gone { None } else { Some(pins) })
    }

    /// Removes [`PINNED_NAMES`] (the link first), then the directory unless
    /// other names are in it, which stay as they are.
    fn remove_ours(&self) -> Result<Removal, Error> {
        let mut removed = false;
        for name in PINNED_NAMES {
            let c = CString::new(name).map_err(|e| Error::Object(e.to_string()))?;
            // SAFETY: a directory descriptor we own and a C string; unlinkat
            // works on that directory, whatever its path resolves to now.
            if unsafe { libc::unlinkat(self.file.as_raw_fd(), c.as_ptr(), 0) } == 0 {
                removed = true;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(pin_err(&self.path.join(name), format!("could not remove: {e}; what was removed stays removed, and running it again finishes the job")));
            }
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(Removal { removed: true, kept: None }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                let mut others: Vec<String> = std::fs::read_dir(&self.path)
                    .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                others.sort();
                let more = others.len().saturating_sub(8);
                others.truncate(8);
                let list = others.join(", ") + &if more > 0 { format!(" and {more} more") } else { String::new() };
                Ok(Removal {
                    removed,
                    kept: Some(format!(
                        "it also holds names chroot-guard does not pin ({list}), left as they are; remove them if they are not needed, then `rmdir {}`",
                        self.path.display()
                    )),
                })
            }
            Err(e) => Err(pin_err(&self.path, format!("could not remove the directory: {e}"))),
        }
    }
}

/// The PID in `entry` when it is named as `pin` names the temporary
/// sibling of the pin directory `name`: `NAME-pinning-PID`.
fn pinning_pid(name: &str, entry: &str) -> Option<i32> {
    let pid = entry.strip_prefix(name)?.strip_prefix(PINNING)?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse::<i32>().ok().filter(|&p| p > 0)
}

/// The temporary siblings of `dir` that `pin` makes (`NAME-pinning-PID`),
/// with their PIDs: directories named so, owned by root or this process's
/// user, beside `dir`. Empty when `dir`'s parent is not on bpffs.
fn pinning_siblings(dir: &Path) -> Result<Vec<(PathBuf, i32)>, Error> {
    let parent = parent_of(dir);
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Ok(Vec::new()) };
    if sys::fs_magic(&parent.to_string_lossy()) != Some(BPF_FS_MAGIC) {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(parent).map_err(|e| pin_err(parent, format!("could not list: {e}")))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = pinning_pid(&name, &entry.file_name().to_string_lossy()) else { continue };
        let path = entry.path();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir() && trusted_owner(m.uid())) {
            found.push((path, pid));
        }
    }
    found.sort();
    Ok(found)
}

/// Leftovers of pins that did not finish: `NAME-pinning-PID` siblings of
/// `dir` (owned by root or this user) whose process is gone, e.g. killed
/// between pinning and renaming into place. [`unload`] removes them.
///
/// # Errors
/// [`Error::Pin`] when `dir`'s parent is on bpffs but cannot be listed.
pub fn leftovers(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    Ok(pinning_siblings(dir)?.into_iter().filter(|(_, pid)| !sys::pid_alive(*pid)).map(|(p, _)| p).collect())
}

/// Checks that `dir`'s parent is a directory on bpffs and `dir` is free.
fn check_free(dir: &Path) -> Result<(), Error> {
    let parent = parent_of(dir);
    if sys::fs_magic(&parent.to_string_lossy()) != Some(BPF_FS_MAGIC) {
        return Err(pin_err(
            dir,
            format!("{} is not on a BPF file system (bpffs); pin under /sys/fs/bpf (mount it with `mount -t bpf -o {} bpf /sys/fs/bpf`)", parent.display(), sys::BPFFS_OPTIONS),
        ));
    }
    if dir.file_name().is_none_or(|n| n.to_string_lossy().contains('.')) {
        return Err(pin_err(dir, "bpffs reserves names with dots (EPERM); choose a name without one"));
    }
    if std::fs::symlink_metadata(dir).is_ok() {
        // Says what is in the way when it is not a guard of ours.
        PinDir::open(dir)?;
        return Err(pin_err(dir, "a guard is already pinned here; update it with `chroot-guard enforce --pin` or remove it with `chroot-guard unload`"));
    }
    Ok(())
}

/// Pins `link`, the policy maps and the counters into `dir`, atomically.
/// `map` finds a map of the loaded object by name.
///
/// On success the link stays attached after every file descriptor of this
/// process is closed. On error nothing is left in bpffs, and the link is
/// handed back unless the kernel refused to pin it (`BPF_OBJ_PIN` on the
/// link), in which case it was dropped, which detaches the program.
pub(crate) fn pin<'a>(
    dir: &Path,
    link: FdLink,
    map: impl Fn(&str) -> Option<&'a Map>,
    counters: &Counters,
    events: &MapData,
) -> Result<(), (Error, Option<FdLink>)> {
    if let Err(e) = check_free(dir) {
        return Err((e, Some(link)));
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // bpffs refuses names with dots (reserved), so no ".name.tmp".
    let tmp = dir.with_file_name(format!("{name}{PINNING}{}", std::process::id()));
    let cleanup = |e: Error, link: Option<FdLink>| {
        // Best effort: what stays is a leftover that `unload` removes.
        if let Ok(Some(pins)) = PinDir::open(&tmp) {
            let _ = pins.remove_ours();
        }
        Err((e, link))
    };
    if let Err(e) = std::fs::create_dir(&tmp) {
        return cleanup(pin_err(&tmp, format!("could not create the pin directory: {e}")), Some(link));
    }
    for name in POLICY_MAPS {
        let Some(m) = map(name) else {
            return cleanup(Error::Object(format!("map {name} missing")), Some(link));
        };
        if let Err(e) = m.pin(tmp.join(name)) {
            return cleanup(pin_err(&tmp.join(name), format!("could not pin the map: {e}")), Some(link));
        }
    }
    for (name, data) in [(COUNTERS, counters.map_data()), (EVENTS, events)] {
        if let Err(e) = data.pin(tmp.join(name)) {
            return cleanup(pin_err(&tmp.join(name), format!("could not pin the map: {e}")), Some(link));
        }
    }
    let pinned = match link.pin(tmp.join(LINK)) {
        Ok(p) => p,
        Err(e) => {
            return cleanup(pin_err(&tmp.join(LINK), format!("could not pin the link (the program was detached): {e}")), None)
        }
    };
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let link = pinned.unpin().ok();
        let reason = if e.raw_os_error() == Some(libc::ENOTEMPTY) || e.raw_os_error() == Some(libc::EEXIST) {
            "another guard was pinned here at the same time".to_string()
        } else {
            format!("could not move the pins into place: {e}")
        };
        return cleanup(pin_err(dir, reason), link);
    }
    // The pin keeps the link; closing our descriptor does not detach it.
    drop(FdLink::from(pinned));
    Ok(())
}

/// Opens the map pinned as `dir/name`, typed by what the kernel says it is.
/// Errors name what is wrong: nothing pinned at `dir`, a file missing (pinned
/// by an older version), or a map that cannot be opened.
fn open_map(dir: &Path, name: &str) -> Result<Map, Error> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        let reason = if !dir.exists() {
            "no guard is pinned here".to_string()
        } else if !path.exists() {
            format!("{name} is not pinned (pinned by an older version); remove the guard with `chroot-guard unload` and pin it again")
        } else {
            format!("could not open the pinned map: {e}; remove the guard with `chroot-guard unload`")
        };
        pin_err(&path, reason)
    })?;
    Map::from_map_data(data).map_err(|e| pin_err(&path, e.to_string()))
}

/// What `chroot-guard status` reports of a pinned guard.
#[derive(Debug, Clone)]
pub struct PinnedStatus {
    /// The pin directory.
    pub dir: PathBuf,
    /// Generation of the policy in force.
    pub generation: u32,
    /// `MODE_ENFORCE` or `MODE_AUDIT` (`chroot_guard_common::policy`).
    pub mode: u8,
    /// `ACTION_*` when no rule matches.
    pub default_action: u8,
    /// Rule id of each compiled rule, by index.
    pub rule_ids: Vec<String>,
    /// Id of the BPF link (`bpftool link show id N`).
    pub link_id: u32,
    /// Id of the `lsm/path_chroot` program (`bpftool prog show id N`).
    pub program_id: u32,
    /// Counters since the guard was loaded. While no process reads the
    /// decisions, the ring buffer fills and every decision after that
    /// counts in `ring_buffer_full`.
    pub lost: Lost,
}

/// A guard pinned in bpffs, opened by path, with an exclusive lock on its
/// directory while this value lives.
pub struct PinnedGuard {
    dir: PathBuf,
    _lock: PinDir,
    maps: [Map; 6],
    counters: Counters,
}

impl PinnedGuard {
    /// Opens the guard pinned at `dir`; `Ok(None)` when nothing is pinned
    /// there.
    ///
    /// # Errors
    /// [`Error::Pin`] when `dir` is not a pin directory (a symbolic link,
    /// off bpffs, another user's: see `PinDir`), cannot be locked, or a
    /// pin cannot be opened (e.g. it was pinned by an incompatible version:
    /// the message says to `unload` it).
    pub fn open(dir: &Path) -> Result<Option<PinnedGuard>, Error> {
        let Some(lock) = PinDir::lock(dir)? else { return Ok(None) };
        let open = |name: &str| open_map(dir, name);
        let maps = [
            open(POLICY_MAPS[0])?,
            open(POLICY_MAPS[1])?,
            open(POLICY_MAPS[2])?,
            open(POLICY_MAPS[3])?,
            open(POLICY_MAPS[4])?,
            open(POLICY_MAPS[5])?,
        ];
        let counters = PerCpuArray::try_from(open(COUNTERS)?)
            .map_err(|e| pin_err(&dir.join(COUNTERS), format!("{e}; remove the guard with `chroot-guard unload`")))?;
        Ok(Some(PinnedGuard { dir: dir.to_path_buf(), _lock: lock, maps, counters: Counters::new(counters) }))
    }

    fn policy_maps(&mut self) -> Result<PolicyMaps<'_>, Error> {
        let [a, b, c, d, e, f] = &mut self.maps;
        PolicyMaps::new([Some(a), Some(b), Some(c), Some(d), Some(e), Some(f)])
            .map_err(|e| pin_err(&self.dir, format!("{e}; remove the guard with `chroot-guard unload`")))
    }

    /// The policy in force, the link and program ids, and the counters.
    ///
    /// # Errors
    /// [`Error::Pin`] when a map or the link cannot be read.
    pub fn status(&mut self) -> Result<PinnedStatus, Error> {
        let lost = self.counters.read();
        let dir = self.dir.clone();
        let maps = self.policy_maps()?;
        let slots = Slots::read(&maps)?;
        let header = maps.headers.get(&slots.active, 0).map_err(|e| pin_err(&dir, format!("reading CG_POLICY: {e}")))?;
        let link_path = dir.join(LINK);
        let link = PinnedLink::from_pin(&link_path).map_err(|e| pin_err(&link_path, format!("could not open the pinned link: {e}")))?;
        let info = FdLink::from(link).info().map_err(|e| pin_err(&link_path, format!("could not read the link: {e}")))?;
        Ok(PinnedStatus {
            dir,
            generation: slots.generation,
            mode: header.mode,
            default_action: header.default_action,
            rule_ids: slots.rule_ids,
            link_id: info.id(),
            program_id: info.program_id(),
            lost,
        })
    }

    /// Replaces the pinned policy atomically (the same two-slot write as
    /// `Guard::update`) and returns the new generation.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the policy does not compile,
    /// [`Error::Object`] when a map write fails, [`Error::Pin`] when the
    /// pinned maps cannot be read; in each case the pinned policy stays in
    /// force.
    pub fn update(&mut self, policy: &Policy) -> Result<(u32, Vec<String>), Error> {
        let compiled = compile(policy)?;
        let mut maps = self.policy_maps()?;
        let mut slots = Slots::read(&maps)?;
        let generation = compiled.write(&mut maps, &mut slots, false)?;
        Ok((generation, slots.rule_ids))
    }
}

/// What [`unload`] did.
#[derive(Debug, Default)]
pub struct Unloaded {
    /// Something of a guard was at the pin directory and is removed: its
    /// pins (the link first, which detaches `lsm/path_chroot`), and the
    /// directory unless [`Unloaded::kept`] says why not.
    pub removed: bool,
    /// Why the pin directory was kept, when it was: it also holds names
    /// that chroot-guard does not pin (named, and left as they are).
    pub kept: Option<String>,
    /// Leftover `NAME-pinning-PID` directories removed (see [`leftovers`]).
    pub leftovers_removed: Vec<PathBuf>,
    /// `NAME-pinning-PID` directories kept, with why: their process still
    /// runs (a pin under way, or its PID reused), or they hold other names.
    pub leftovers_kept: Vec<(PathBuf, String)>,
}

/// Removes the guard pinned at `dir`, holding its lock: only
/// [`PINNED_NAMES`], the link first (which detaches `lsm/path_chroot`; the
/// program and maps are freed when their last reference goes), then the
/// directory unless other names are in it. Then the same for the
/// `NAME-pinning-PID` siblings of `dir` whose process is gone
/// ([`leftovers`]).
///
/// # Errors
/// [`Error::Pin`] when `dir` is not a pin directory (see `PinDir`: a
/// symbolic link, off bpffs, the root of a bpffs mount, another user's),
/// nothing being removed then; or when a file cannot be removed (what was
/// removed stays removed; running it again finishes the job).
pub fn unload(dir: &Path) -> Result<Unloaded, Error> {
    let mut out = Unloaded::default();
    if let Some(pins) = PinDir::lock(dir)? {
        let r = pins.remove_ours()?;
        out.removed = r.removed;
        out.kept = r.kept;
    }
    for (path, pid) in pinning_siblings(dir)? {
        if sys::pid_alive(pid) {
            let why = format!("process {pid} still runs (a pin under way, or its PID was reused); run `chroot-guard unload` again once it has exited");
            out.leftovers_kept.push((path, why));
            continue;
        }
        match PinDir::open(&path)?.map(|p| p.remove_ours()).transpose()? {
            Some(Removal { kept: Some(why), .. }) => out.leftovers_kept.push((path, why)),
            Some(_) => out.leftovers_removed.push(path),
            None => {} // removed meanwhile
        }
    }
    Ok(out)
}

/// Reads the decisions of a pinned guard: its pinned ring buffer, by a
/// reader thread of its own, while it holds the [`RingLock`].
pub struct Follower {
    reader: Reader,
    counters: Arc<Counters>,
    _lock: RingLock,
}

impl Follower {
    /// Totals so far (the counters since the guard was loaded).
    pub fn stats(&self) -> SessionStats {
        SessionStats::read(&self.reader, &self.counters)
    }

    /// Stops the reader thread; the guard stays pinned. Idempotent.
    pub fn close(&mut self) {
        self.reader.stop();
    }
}

/// Starts reading the decisions of the guard pinned at `dir`: first those
/// waiting in its ring buffer since it was pinned (as many as fit; the rest
/// counted in `ring_buffer_full`), then new ones as they come.
///
/// # Errors
/// [`Error::Pin`] when nothing is pinned at `dir`, `dir` is not a pin
/// directory (see `PinDir`), the guard was pinned without its ring buffer
/// (an older version: pin it again), another process reads it already, or
/// its lock file cannot be taken (see [`RingLock::acquire`]); [`Error::Io`]
/// when the thread cannot start.
pub fn follow<S: Sink>(dir: &Path, sink: S) -> Result<Follower, Error> {
    if PinDir::open(dir)?.is_none() {
        return Err(pin_err(dir, "no guard is pinned here"));
    }
    let ring = open_map(dir, EVENTS)?;
    let Map::RingBuf(events) = &ring else {
        return Err(pin_err(&dir.join(EVENTS), "not a ring buffer; remove the guard with `chroot-guard unload`"));
    };
    let lock = RingLock::acquire(events, dir)?;
    let bytes = events.info().map(|i| i.max_entries()).unwrap_or(chroot_guard_common::DEFAULT_RING_BUFFER_BYTES);
    let ring = RingBuf::try_from(ring).map_err(|e| pin_err(&dir.join(EVENTS), e.to_string()))?;
    let counters = PerCpuArray::try_from(open_map(dir, COUNTERS)?)
        .map_err(|e| pin_err(&dir.join(COUNTERS), e.to_string()))?;
    let counters = Arc::new(Counters::new(counters));
    let reader = Reader::spawn(ring, Arc::clone(&counters), sink, ReaderConfig::for_ring_buffer(bytes))?;
    Ok(Follower { reader, counters, _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_names_are_every_pin_once_link_first() {
        assert_eq!(PINNED_NAMES[0], LINK);
        for name in POLICY_MAPS.iter().chain([&COUNTERS, &EVENTS]) {
            assert_eq!(PINNED_NAMES.iter().filter(|n| *n == name).count(), 1, "{name}");
        }
        assert_eq!(PINNED_NAMES.len(), POLICY_MAPS.len() + 3);
    }

    #[test]
    fn pinning_siblings_are_named_name_pinning_pid() {
        assert_eq!(pinning_pid("chroot-guard", "chroot-guard-pinning-1234"), Some(1234));
        assert_eq!(pinning_pid("chroot-guard", "chroot-guard-pinning-"), None);
        assert_eq!(pinning_pid("chroot-guard", "chroot-guard-pinning-12a"), None);
        assert_eq!(pinning_pid("chroot-guard", "chroot-guard-pinning-+12"), None);
        assert_eq!(pinning_pid("chroot-guard", "chroot-guard-pinning-0"), None);
        assert_eq!(pinning_pid("chroot-guard", "chroot-guard-pinning-99999999999"), None);
        // Another pin directory's sibling, whose name starts the same.
        assert_eq!(pinning_pid("chroot-guard", "chroot-guard-test-pinning-12"), None);
        assert_eq!(pinning_pid("chroot-guard-test", "chroot-guard-test-pinning-12"), Some(12));
    }
}

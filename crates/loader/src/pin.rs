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
//! temporary sibling that is renamed into place last. Updates and removal
//! hold an exclusive `flock(2)` on the directory.
//!
//! A ring buffer has one consumer position, so two readers would each see
//! part of the decisions: whoever reads a pinned ring buffer (the pinning
//! guard until it closes, or one [`follow`]er) holds a [`RingLock`] on it.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
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
    session::SessionStats,
    sys::{self, BPF_FS_MAGIC},
};

/// Where `enforce --pin` pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/chroot-guard";
/// The link's file in a pin directory.
const LINK: &str = "link";
/// The counters' file in a pin directory.
const COUNTERS: &str = "CG_COUNTERS";
/// The ring buffer's file in a pin directory (and the map's name).
pub(crate) const EVENTS: &str = "CG_EVENTS";
/// Where [`RingLock`] files live (tmpfs: gone at reboot, like bpffs).
const LOCK_DIR: &str = "/run/chroot-guard";

/// An exclusive `flock(2)` naming the one reader of a ring buffer, by map
/// id (unique while the map exists). Released when dropped.
pub struct RingLock {
    _file: File,
}

impl RingLock {
    /// Takes the lock of the ring buffer map `events`, without waiting.
    ///
    /// # Errors
    /// [`Error::Pin`] when another process reads it already, or the lock
    /// file under `/run/chroot-guard` cannot be created.
    pub fn acquire(events: &MapData, dir: &Path) -> Result<RingLock, Error> {
        let id = events.info().map_err(|e| pin_err(dir, format!("could not read the ring buffer's map info: {e}")))?.id();
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| pin_err(Path::new(LOCK_DIR), format!("could not create the lock directory: {e}")))?;
        let path = Path::new(LOCK_DIR).join(format!("ring-{id}.lock"));
        let file = File::create(&path).map_err(|e| pin_err(&path, format!("could not create the lock file: {e}")))?;
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

fn pin_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Pin { path: path.display().to_string(), reason: reason.into() }
}

/// Checks that `dir`'s parent is a directory on bpffs and `dir` is free.
fn check_free(dir: &Path) -> Result<(), Error> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if sys::fs_magic(&parent.to_string_lossy()) != Some(BPF_FS_MAGIC) {
        return Err(pin_err(
            dir,
            format!("{} is not on a BPF file system (bpffs); pin under /sys/fs/bpf (mount it with `mount -t bpf bpf /sys/fs/bpf`)", parent.display()),
        ));
    }
    if dir.file_name().is_none_or(|n| n.to_string_lossy().contains('.')) {
        return Err(pin_err(dir, "bpffs reserves names with dots (EPERM); choose a name without one"));
    }
    if dir.exists() {
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
    let tmp = dir.with_file_name(format!("{name}-pinning-{}", std::process::id()));
    let cleanup = |e: Error, link: Option<FdLink>| {
        let _ = std::fs::remove_dir_all(&tmp);
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
    _lock: File,
    maps: [Map; 6],
    counters: Counters,
}

impl PinnedGuard {
    /// Opens the guard pinned at `dir`; `Ok(None)` when nothing is pinned
    /// there.
    ///
    /// # Errors
    /// [`Error::Pin`] when the directory cannot be locked or a pin cannot be
    /// opened (e.g. it was pinned by an incompatible version: the message
    /// says to `unload` it).
    pub fn open(dir: &Path) -> Result<Option<PinnedGuard>, Error> {
        let lock = match File::open(dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(pin_err(dir, format!("could not open the pin directory: {e}"))),
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(pin_err(dir, format!("could not lock the pin directory: {}", io::Error::last_os_error())));
        }
        if !dir.exists() {
            return Ok(None); // unloaded while we waited for the lock
        }
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

/// Removes the guard pinned at `dir`: the link first (which detaches
/// `lsm/path_chroot`; the program and maps are freed when their last
/// reference goes), then the maps and the directory. Returns whether
/// anything was pinned.
///
/// # Errors
/// [`Error::Pin`] when a file cannot be removed (what was removed stays
/// removed; running it again finishes the job).
pub fn unload(dir: &Path) -> Result<bool, Error> {
    // Hold the lock when the guard opens; a broken one is removed all the
    // same.
    let lock = PinnedGuard::open(dir).ok().flatten();
    if !dir.exists() {
        return Ok(false);
    }
    remove_dir(dir)?;
    drop(lock);
    Ok(true)
}

fn remove_dir(dir: &Path) -> Result<(), Error> {
    let rm = |p: PathBuf| match std::fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(pin_err(&p, format!("could not remove: {e}"))),
        _ => Ok(()),
    };
    rm(dir.join(LINK))?;
    let entries = std::fs::read_dir(dir).map_err(|e| pin_err(dir, format!("could not list: {e}")))?;
    for entry in entries.flatten() {
        rm(entry.path())?;
    }
    std::fs::remove_dir(dir).map_err(|e| pin_err(dir, format!("could not remove: {e}")))
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
/// [`Error::Pin`] when nothing is pinned at `dir`, the guard was pinned
/// without its ring buffer (an older version: pin it again), or another
/// process reads it already; [`Error::Io`] when the thread cannot start.
pub fn follow<S: Sink>(dir: &Path, sink: S) -> Result<Follower, Error> {
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

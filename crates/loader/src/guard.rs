//! The guard session: `lsm/path_chroot` attached with a policy in its maps,
//! decisions read from the ring buffer by the same reader thread as watch
//! events.
//!
//! States: open (policy written, program attached, reader running) →
//! closed. [`Guard::update`] swaps the policy atomically; a policy that fails
//! to compile or to write leaves the old one in force.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{Map, MapData},
    programs::{links::FdLink, Lsm},
    Ebpf,
};
use chroot_guard_common::{
    probes::{GUARD_PROGRAM as LSM_PROGRAM, LSM_HOOK},
    Filter,
};

use crate::{
    attach::{classify_lsm, lsm_preemption_refusal, KernelContext},
    error::Error,
    features,
    pin,
    policy::{compile, Policy, PolicyContext, PolicyMaps, Slots, POLICY_MAPS},
    reader::{self, Counters, Reader, ReaderConfig, Sink},
    session::SessionStats,
};

/// A running guard.
pub struct Guard {
    /// The program's link; `None` once pinned (the pin holds it).
    link: Option<FdLink>,
    ebpf: Option<Ebpf>,
    reader: Reader,
    counters: Arc<Counters>,
    slots: Slots,
    /// `CG_EVENTS` (a second descriptor: the reader owns the first), for
    /// [`Guard::pin`].
    events: MapData,
    /// Held once pinned: this guard's reader is the ring buffer's reader.
    ring_lock: Option<pin::RingLock>,
    /// The facts the policy in force was compiled with.
    context: PolicyContext,
    /// Where it is pinned: other processes may update the maps from there.
    pin_dir: Option<PathBuf>,
}

fn policy_maps(ebpf: &mut Ebpf) -> Result<PolicyMaps<'_>, Error> {
    PolicyMaps::new(ebpf.maps_disjoint_mut(POLICY_MAPS))
}

impl Guard {
    /// Compiles `policy`, loads the object, writes the policy, attaches
    /// `lsm/path_chroot` and starts the reader.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a policy that does not compile;
    /// [`Error::LsmUnavailable`] when the kernel will not run the BPF LSM
    /// program (with the reason `doctor` gives), or would skip it under
    /// preemption (`PREEMPT_FULL`, [`lsm_preemption_refusal`]); the errors of
    /// [`KernelContext::probe`]. Nothing stays loaded after an error.
    pub fn open<S: Sink>(policy: &Policy, ring_buffer_bytes: u32, sink: S) -> Result<Guard, Error> {
        let compiled = compile(policy)?;
        let kernel = KernelContext::probe()?;
        let missing = features::missing_for_guard(&kernel.btf);
        if !missing.is_empty() {
            return Err(Error::LsmUnavailable { code: "MISSING_FEATURE", reason: features::describe(&missing) });
        }
        if let Some((code, reason)) = lsm_preemption_refusal() {
            return Err(Error::LsmUnavailable { code, reason });
        }
        // The features are there, but the legacy object was asked for.
        if let Some(why) = &kernel.legacy_reason {
            return Err(Error::LsmUnavailable {
                code: "MISSING_FEATURE",
                reason: format!("the guard's program is not in the legacy object, which runs here ({why})"),
            });
        }
        let mut ebpf = kernel.load_object(&Filter::default(), ring_buffer_bytes)?;
        let mut slots = Slots::default();
        compiled.write(&mut policy_maps(&mut ebpf)?, &mut slots, true)?;
        let Some(btf) = kernel.aya_btf() else {
            return Err(Error::LsmUnavailable {
                code: "NO_BTF",
                reason: "BPF LSM programs attach by BTF id and the kernel has no BTF".into(),
            });
        };
        let prog: &mut Lsm = ebpf
            .program_mut(LSM_PROGRAM)
            .ok_or_else(|| Error::Object(format!("program {LSM_PROGRAM} missing")))?
            .try_into()
            .map_err(|e| Error::Object(format!("{LSM_PROGRAM}: {e}")))?;
        let unavailable = |stage: &'static str| {
            move |e| {
                let d = classify_lsm(LSM_PROGRAM, stage, &e);
                if d.code == "VERIFIER" {
                    Error::Verifier { program: LSM_PROGRAM, reason: d.reason, log: d.verifier_log.unwrap_or_default() }
                } else {
                    Error::LsmUnavailable { code: d.code, reason: d.reason }
                }
            }
        };
        prog.load(LSM_HOOK, btf).map_err(unavailable("load"))?;
        let link_id = prog.attach().map_err(unavailable("attach"))?;
        let link = prog
            .take_link(link_id)
            .map(FdLink::from)
            .map_err(|e| Error::Object(format!("{LSM_PROGRAM} link: {e}")))?;
        let events = match ebpf.map(pin::EVENTS) {
            Some(Map::RingBuf(m)) => MapData::from_fd(m.fd().as_fd().try_clone_to_owned()?)
                .map_err(|e| Error::Object(format!("{}: {e}", pin::EVENTS)))?,
            _ => return Err(Error::Object(format!("map {} missing", pin::EVENTS))),
        };
        let (reader, counters) = reader::start(&mut ebpf, sink, ReaderConfig::for_ring_buffer(ring_buffer_bytes))?;
        let context = compiled.context();
        Ok(Guard { link: Some(link), ebpf: Some(ebpf), reader, counters, slots, events, ring_lock: None, context, pin_dir: None })
    }

    /// Replaces the policy atomically and returns its generation. The new
    /// rules are written to the unused slot first; `CG_ACTIVE` flips only
    /// when all of it is in place.
    ///
    /// Once pinned, other processes update the same maps (`enforce --pin`,
    /// `PinnedGuard::update`), so the slots this guard last wrote may be
    /// stale: it then does what they do, under the pin directory's lock it
    /// reads which slot is live and the generation from the maps, and
    /// writes the other one.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the policy does not compile,
    /// [`Error::Object`] when a map write fails, [`Error::Pin`] when the
    /// pin directory cannot be locked; in each case the previous policy
    /// stays in force.
    pub fn update(&mut self, policy: &Policy) -> Result<u32, Error> {
        let compiled = compile(policy)?;
        let ebpf = self.ebpf.as_mut().ok_or_else(|| Error::NotRunning { what: "guard" })?;
        // Held until the write is done. `None` once unloaded: then nobody
        // else can reach these maps, and re-reading them is still right.
        let _lock = match &self.pin_dir {
            Some(dir) => pin::PinDir::lock(dir)?,
            None => None,
        };
        let mut maps = policy_maps(ebpf)?;
        if self.pin_dir.is_some() {
            self.slots = Slots::read(&maps)?;
        }
        let generation = compiled.write(&mut maps, &mut self.slots, false)?;
        self.context = compiled.context();
        Ok(generation)
    }

    /// The facts the policy in force was compiled with (initial mount
    /// namespace, `exe` identities).
    pub fn context(&self) -> &PolicyContext {
        &self.context
    }

    /// Pins the link, the policy maps and the counters under `dir` (see
    /// [`pin`](crate::pin)), so `lsm/path_chroot` keeps deciding after this
    /// guard closes and the process exits. The guard goes on reporting
    /// decisions and taking updates until closed; closing it then stops
    /// only the reporting.
    ///
    /// # Errors
    /// [`Error::Pin`] when `dir` is taken, not on bpffs, or a pin fails;
    /// nothing is left in bpffs. The guard keeps running, except when the
    /// kernel refused to pin the link itself: then it is closed (the
    /// message says the program was detached).
    pub fn pin(&mut self, dir: &Path) -> Result<(), Error> {
        let taken = || Error::Pin { path: dir.display().to_string(), reason: "this guard is already pinned or closed".into() };
        if self.link.is_none() {
            return Err(taken());
        }
        // The ring buffer's lock first: once pinned, this guard's reader must
        // hold it, or a follower could become a second reader. Nobody else
        // can hold it yet (the map is not pinned), so failing here means the
        // lock directory is unusable, and nothing is pinned.
        let ring_lock = pin::RingLock::acquire(&self.events, dir)?;
        let link = self.link.take().ok_or_else(taken)?;
        let ebpf = self.ebpf.as_ref().ok_or_else(|| Error::NotRunning { what: "guard" })?;
        let map = |name: &str| ebpf.map(name);
        match pin::pin(dir, link, map, &self.counters, &self.events) {
            Ok(()) => {
                self.ring_lock = Some(ring_lock);
                self.pin_dir = Some(dir.to_path_buf());
                Ok(())
            }
            Err((e, link)) => {
                self.link = link;
                if self.link.is_none() {
                    self.close();
                }
                Err(e)
            }
        }
    }

    /// Whether the guard is open (not closed, and not stopped by a failed
    /// [`Guard::pin`]).
    pub fn running(&self) -> bool {
        self.ebpf.is_some()
    }

    /// Generation of the policy this guard last wrote or read (once pinned,
    /// another process may have written a newer one since).
    pub fn generation(&self) -> u32 {
        self.slots.generation
    }

    /// Rule ids of the policy in force, by compiled rule index (what
    /// decision events carry).
    pub fn rule_ids(&self) -> &[String] {
        &self.slots.rule_ids
    }

    /// Totals so far.
    pub fn stats(&self) -> SessionStats {
        SessionStats::read(&self.reader, &self.counters)
    }

    /// Stops the reader, then detaches the program and frees every map (the
    /// same order as `Session::close`). Idempotent.
    pub fn close(&mut self) {
        self.reader.stop();
        self.ring_lock.take();
        self.link.take();
        self.ebpf.take();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.close();
    }
}

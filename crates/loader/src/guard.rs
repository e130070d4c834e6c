//! The guard session: `lsm/path_chroot` attached with a policy in its maps,
//! decisions read from the ring buffer by the same reader thread as watch
//! events.
//!
//! States: open (policy written, program attached, reader running) →
//! closed. [`Guard::update`] swaps the policy atomically; a policy that fails
//! to compile or to write leaves the old one in force.

use std::sync::Arc;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::Lsm,
    Ebpf, EbpfLoader,
};
use chroot_guard_common::{
    probes::{GUARD_PROGRAM as LSM_PROGRAM, LSM_HOOK},
    Filter,
};

use crate::{
    attach::{classify, KernelContext},
    error::Error,
    object::EBPF_OBJECT,
    policy::{compile, Policy, PolicyMaps, Slots},
    reader::{Counters, Reader, ReaderConfig, Sink},
    session::SessionStats,
    sys,
};


/// A running guard.
pub struct Guard {
    ebpf: Option<Ebpf>,
    reader: Reader,
    counters: Arc<Counters>,
    slots: Slots,
}

fn policy_maps(ebpf: &mut Ebpf) -> Result<PolicyMaps<'_>, Error> {
    let [active, headers, rules, paths, exes] =
        ebpf.maps_disjoint_mut(["CG_ACTIVE", "CG_POLICY", "CG_RULES", "CG_PATHS", "CG_EXES"]);
    let missing = |n: &str| Error::Object(format!("map {n} missing"));
    let wrong = |n: &'static str| move |e: aya::maps::MapError| Error::Object(format!("{n}: {e}"));
    Ok(PolicyMaps {
        active: Array::try_from(active.ok_or_else(|| missing("CG_ACTIVE"))?).map_err(wrong("CG_ACTIVE"))?,
        headers: Array::try_from(headers.ok_or_else(|| missing("CG_POLICY"))?).map_err(wrong("CG_POLICY"))?,
        rules: Array::try_from(rules.ok_or_else(|| missing("CG_RULES"))?).map_err(wrong("CG_RULES"))?,
        paths: HashMap::<&mut MapData, _, _>::try_from(paths.ok_or_else(|| missing("CG_PATHS"))?)
            .map_err(wrong("CG_PATHS"))?,
        exes: HashMap::<&mut MapData, _, _>::try_from(exes.ok_or_else(|| missing("CG_EXES"))?)
            .map_err(wrong("CG_EXES"))?,
    })
}

impl Guard {
    /// Compiles `policy`, loads the object, writes the policy, attaches
    /// `lsm/path_chroot` and starts the reader.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a policy that does not compile;
    /// [`Error::LsmUnavailable`] when the kernel will not run the BPF LSM
    /// program (with the reason `doctor` gives); the errors of
    /// [`KernelContext::probe`]. Nothing stays loaded after an error.
    pub fn open<S: Sink>(policy: &Policy, ring_buffer_bytes: u32, sink: S) -> Result<Guard, Error> {
        let compiled = compile(policy)?;
        let kernel = KernelContext::probe()?;
        let mut ebpf = EbpfLoader::new()
            .btf(kernel.aya_btf.as_ref())
            .override_global("OFFSETS", &kernel.offsets, true)
            .override_global("FILTER", &Filter::default(), true)
            .map_max_entries("CG_EVENTS", ring_buffer_bytes)
            .load(EBPF_OBJECT)?;
        let mut slots = Slots::default();
        compiled.write(&mut policy_maps(&mut ebpf)?, &mut slots, true)?;
        let Some(btf) = kernel.aya_btf.as_ref() else {
            return Err(Error::LsmUnavailable { code: "NO_BTF", reason: "BPF LSM programs attach by BTF id and the kernel has no BTF".into() });
        };
        let prog: &mut Lsm = ebpf
            .program_mut(LSM_PROGRAM)
            .ok_or_else(|| Error::Object(format!("program {LSM_PROGRAM} missing")))?
            .try_into()
            .map_err(|e| Error::Object(format!("{LSM_PROGRAM}: {e}")))?;
        let unavailable = |stage: &'static str| {
            move |e| {
                let d = classify("lsm", LSM_PROGRAM, "bpf_lsm_path_chroot", stage, &e);
                if d.code == "VERIFIER" {
                    return Error::Verifier { program: LSM_PROGRAM, reason: d.reason, log: d.verifier_log.unwrap_or_default() };
                }
                let inactive = !sys::active_lsms().is_some_and(|l| l.iter().any(|x| x == "bpf"));
                if inactive {
                    Error::LsmUnavailable {
                        code: "LSM_INACTIVE",
                        reason: "the BPF LSM is not in the active LSM list (/sys/kernel/security/lsm); boot with lsm=...,bpf".into(),
                    }
                } else {
                    Error::LsmUnavailable { code: d.code, reason: d.reason }
                }
            }
        };
        prog.load(LSM_HOOK, btf).map_err(unavailable("load"))?;
        prog.attach().map_err(unavailable("attach"))?;
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).ok_or_else(|| Error::Object(format!("map {name} missing")))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "CG_EVENTS")?).map_err(|e| Error::Object(format!("CG_EVENTS: {e}")))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "CG_COUNTERS")?)
            .map_err(|e| Error::Object(format!("CG_COUNTERS: {e}")))?;
        let counters = Arc::new(Counters::new(counters));
        let reader = Reader::spawn(ring, Arc::clone(&counters), sink, ReaderConfig::default())?;
        Ok(Guard { ebpf: Some(ebpf), reader, counters, slots })
    }

    /// Replaces the policy atomically and returns its generation. The new
    /// rules are written to the unused slot first; `CG_ACTIVE` flips only
    /// when all of it is in place.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the policy does not compile,
    /// [`Error::Object`] when a map write fails; either way the previous
    /// policy stays in force.
    pub fn update(&mut self, policy: &Policy) -> Result<u32, Error> {
        let compiled = compile(policy)?;
        let ebpf = self.ebpf.as_mut().ok_or_else(|| Error::Object("the guard is closed".into()))?;
        compiled.write(&mut policy_maps(ebpf)?, &mut self.slots, false)
    }

    /// Generation of the policy in force.
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
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        SessionStats {
            events: load(&self.reader.stats.events),
            batches: load(&self.reader.stats.batches),
            bytes: load(&self.reader.stats.bytes),
            lost: self.counters.read(),
        }
    }

    /// Detaches the program and frees every map. Idempotent.
    pub fn close(&mut self) {
        self.ebpf.take();
        self.reader.stop();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.close();
    }
}

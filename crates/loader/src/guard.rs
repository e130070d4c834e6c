//! The guard session: `lsm/path_chroot` attached with a policy in its maps,
//! decisions read from the ring buffer by the same reader thread as watch
//! events.
//!
//! States: open (policy written, program attached, reader running) →
//! closed. [`Guard::update`] swaps the policy atomically; a policy that fails
//! to compile or to write leaves the old one in force.

use std::sync::Arc;

use aya::{
    maps::{Array, HashMap, MapData},
    programs::Lsm,
    Ebpf,
};
use chroot_guard_common::{
    probes::{GUARD_PROGRAM as LSM_PROGRAM, LSM_HOOK},
    Filter,
};

use crate::{
    attach::{classify_lsm, KernelContext},
    error::Error,
    policy::{compile, Policy, PolicyMaps, Slots},
    reader::{self, Counters, Reader, ReaderConfig, Sink},
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
        if let Some(release) = sys::kernel_release().filter(|r| sys::release_below(r, (5, 17))) {
            return Err(Error::LsmUnavailable {
                code: "KERNEL_TOO_OLD",
                reason: format!("kernel {release} is older than 5.17, which the policy program needs (bpf_loop)"),
            });
        }
        let mut ebpf = kernel.load_object(&Filter::default(), ring_buffer_bytes)?;
        let mut slots = Slots::default();
        compiled.write(&mut policy_maps(&mut ebpf)?, &mut slots, true)?;
        let Some(btf) = kernel.aya_btf.as_ref() else {
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
        prog.attach().map_err(unavailable("attach"))?;
        let (reader, counters) = reader::start(&mut ebpf, sink, ReaderConfig::default())?;
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
        SessionStats::read(&self.reader, &self.counters)
    }

    /// Stops the reader, then detaches the program and frees every map (the
    /// same order as `Session::close`). Idempotent.
    pub fn close(&mut self) {
        self.reader.stop();
        self.ebpf.take();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.close();
    }
}

//! The eBPF objects built by `cargo xtask build-ebpf`, embedded so nothing
//! is compiled or read from disk at run time: the object, and the legacy
//! object for kernels that lack what the first needs beyond the ring buffer
//! ([`crate::features::Need::FullObject`]).

/// The ELF object with every program of `chroot_guard_common::probes`
/// (`PROBES` and `SERVICE_PROGRAMS`) and its BTF, 8-byte aligned as the ELF
/// parser needs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("CHROOT_GUARD_EBPF_OBJECT"));

/// The same programs built with the eBPF crate's `legacy` feature, for
/// kernels 5.8 to 5.12: `bpf_get_current_task()` and helper reads instead
/// of BTF-typed loads, per-call state in a preallocated hash map instead of
/// task storage, no caller cache, and no BPF LSM policy program (the guard
/// needs 5.17's `bpf_loop` anyway). Watch only, a few helper calls slower
/// per event.
pub static EBPF_OBJECT_LEGACY: &[u8] = aya::include_bytes_aligned!(env!("CHROOT_GUARD_EBPF_OBJECT_LEGACY"));

/// Which embedded object a kernel gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// [`EBPF_OBJECT`].
    Full,
    /// [`EBPF_OBJECT_LEGACY`].
    Legacy,
}

impl Object {
    /// The ELF bytes.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Object::Full => EBPF_OBJECT,
            Object::Legacy => EBPF_OBJECT_LEGACY,
        }
    }

    /// The name `doctor` prints: `full` or `legacy`.
    pub fn name(self) -> &'static str {
        match self {
            Object::Full => "full",
            Object::Legacy => "legacy",
        }
    }
}

#[cfg(test)]
mod tests {
    //! The object and the program list must never drift: every program the
    //! eBPF crate builds is listed in `chroot_guard_common::probes`, once.
    use std::collections::BTreeSet;

    use chroot_guard_common::probes::{PROBES, SERVICE_PROGRAMS};
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use super::{EBPF_OBJECT, EBPF_OBJECT_LEGACY};

    /// The global functions in program sections of `bytes`.
    fn programs(bytes: &[u8]) -> BTreeSet<String> {
        let elf = object::File::parse(bytes).expect("the embedded object is ELF");
        // Programs are the global functions in sections of their own (`.text`
        // holds the compiler's helpers: memcpy, memset, …).
        let in_program_section = |s: &object::Symbol| {
            s.section_index()
                .and_then(|i| elf.section_by_index(i).ok())
                .is_some_and(|sec| sec.name().is_ok_and(|n| n != ".text"))
        };
        elf.symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_global() && in_program_section(s))
            .map(|s| s.name().expect("symbol name").to_string())
            .collect()
    }

    #[test]
    fn programs_are_the_listed_ones() {
        let built = programs(EBPF_OBJECT);
        let built: BTreeSet<&str> = built.iter().map(String::as_str).collect();
        let names: Vec<&str> =
            PROBES.iter().map(|p| p.program).chain(SERVICE_PROGRAMS.iter().map(|p| p.program)).collect();
        let listed: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(listed.len(), names.len(), "a program is listed twice");
        for n in &names {
            // The kernel keeps BPF_OBJ_NAME_LEN - 1 bytes of a program's name.
            assert!(n.len() <= 15, "{n} is longer than 15 bytes");
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(built, listed);
        } else {
            // The ia32 entry programs are built always, listed on x86_64 only.
            assert!(listed.is_subset(&built), "listed but not built: {:?}", listed.difference(&built));
        }
    }

    #[test]
    fn the_legacy_object_has_every_program_but_the_guards() {
        let full = programs(EBPF_OBJECT);
        let legacy = programs(EBPF_OBJECT_LEGACY);
        let only_full: Vec<&String> = full.difference(&legacy).collect();
        assert_eq!(only_full, [chroot_guard_common::probes::GUARD_PROGRAM], "programs only the full object has");
        assert!(legacy.is_subset(&full), "programs only the legacy object has: {:?}", legacy.difference(&full));
    }
}

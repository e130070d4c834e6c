//! The eBPF object built by `cargo xtask build-ebpf`, embedded so nothing is
//! compiled or read from disk at run time.

/// The ELF object with every program of `chroot_guard_common::probes`
/// (`PROBES` and `SERVICE_PROGRAMS`) and its BTF, 8-byte aligned as the ELF
/// parser needs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("CHROOT_GUARD_EBPF_OBJECT"));

#[cfg(test)]
mod tests {
    //! The object and the program list must never drift: every program the
    //! eBPF crate builds is listed in `chroot_guard_common::probes`, once.
    use std::collections::BTreeSet;

    use chroot_guard_common::probes::{PROBES, SERVICE_PROGRAMS};
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use super::EBPF_OBJECT;

    #[test]
    fn programs_are_the_listed_ones() {
        let elf = object::File::parse(EBPF_OBJECT).expect("the embedded object is ELF");
        // Programs are the global functions in sections of their own (`.text`
        // holds the compiler's helpers: memcpy, memset, …).
        let in_program_section = |s: &object::Symbol| {
            s.section_index()
                .and_then(|i| elf.section_by_index(i).ok())
                .is_some_and(|sec| sec.name().is_ok_and(|n| n != ".text"))
        };
        let built: BTreeSet<&str> = elf
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_global() && in_program_section(s))
            .map(|s| s.name().expect("symbol name"))
            .collect();
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
            // The 32-bit compat programs are built always, listed on x86_64 only.
            assert!(listed.is_subset(&built), "listed but not built: {:?}", listed.difference(&built));
        }
    }
}

//! The byte layout of [`ChrootEvent`] and the numbers inside it, as one table
//! for the TypeScript decoder (`ts/events.ts`), which reads events from
//! the batch buffer directly instead of having Rust build objects.

use std::mem::{offset_of, size_of};

use chroot_guard_common::{exe_flags, flags, policy, ChrootEvent, EventKind, Mode, COMM_LEN, EXE_MAX, PATH_MAX, RESOLVED_MAX};

/// `(name, value)` pairs: field offsets in bytes under the field's Rust name,
/// `size` (bytes of one event), buffer sizes, `flag_*` bits, `kind_*` and
/// `mode_*` numbers.
pub fn event_layout() -> Vec<(&'static str, u32)> {
    macro_rules! offsets {
        ($($field:ident),* $(,)?) => {
            vec![$((stringify!($field), offset_of!(ChrootEvent, $field) as u32)),*]
        };
    }
    let mut table = offsets!(
        kind, mode, path_len, resolved_len, rule, exe_len, parent_exe_len, exe_flags, flags, pid, tid, ppid, uid, gid, euid, egid,
        mnt_ns, pid_ns, lsm_ret, policy_gen, exe_dev, user_ns, ns_pid, ns_tid, ret, enter_ns, ts_ns, cgroup_id, exe_ino, arg_addr, comm, parent_comm, data,
    );
    table.extend([
        ("size", size_of::<ChrootEvent>() as u32),
        ("header", chroot_guard_common::EVENT_HEADER_BYTES as u32),
        ("comm_len", COMM_LEN as u32),
        ("path_max", PATH_MAX as u32),
        ("resolved_max", RESOLVED_MAX as u32),
        ("exe_max", EXE_MAX as u32),
        ("exe_flag_present", u32::from(exe_flags::PRESENT)),
        ("exe_flag_truncated", u32::from(exe_flags::TRUNCATED)),
        ("exe_flag_unreachable", u32::from(exe_flags::UNREACHABLE)),
        ("exe_flag_deleted", u32::from(exe_flags::DELETED)),
        ("exe_flag_memfd", u32::from(exe_flags::MEMFD)),
        ("exe_flag_parent_shift", u32::from(exe_flags::PARENT_SHIFT)),
        ("flag_path_truncated", flags::PATH_TRUNCATED),
        ("flag_path_unreadable", flags::PATH_UNREADABLE),
        ("flag_resolved_present", flags::RESOLVED_PRESENT),
        ("flag_resolved_truncated", flags::RESOLVED_TRUNCATED),
        ("flag_resolved_unreachable", flags::RESOLVED_UNREACHABLE),
        ("flag_lsm_called", flags::LSM_CALLED),
        ("flag_caller_chrooted", flags::CALLER_CHROOTED),
        ("flag_action_shift", flags::ACTION_SHIFT),
        ("flag_action_mask", flags::ACTION_MASK),
        ("flag_enforcing", flags::ENFORCING),
        ("flag_denied", flags::DENIED),
        ("flag_exe_unknown", flags::EXE_UNKNOWN),
        ("flag_policy_torn", flags::POLICY_TORN),
        ("flag_internal_error", flags::INTERNAL_ERROR),
        ("flag_initial_namespaces", flags::INITIAL_NAMESPACES),
        ("flag_path_read_late", flags::PATH_READ_LATE),
        ("flag_roots_compared", flags::ROOTS_COMPARED),
        ("flag_escapes_root", flags::ESCAPES_ROOT),
        ("flag_escapes_root_unknown", flags::ESCAPES_ROOT_UNKNOWN),
        ("flag_cwd_outside_root", flags::CWD_OUTSIDE_ROOT),
        ("flag_cwd_outside_root_unknown", flags::CWD_OUTSIDE_ROOT_UNKNOWN),
        ("kind_chroot", EventKind::Chroot as u32),
        ("kind_decision", EventKind::Decision as u32),
        ("no_rule", u32::from(policy::NO_RULE)),
        ("action_allow", u32::from(policy::ACTION_ALLOW)),
        ("action_deny", u32::from(policy::ACTION_DENY)),
        ("action_audit", u32::from(policy::ACTION_AUDIT)),
    ]);
    for m in Mode::ALL {
        table.push((mode_key(m), m as u32));
    }
    table
}

fn mode_key(m: Mode) -> &'static str {
    match m {
        Mode::Fentry => "mode_fentry",
        Mode::Kprobe => "mode_kprobe",
        Mode::Tracepoint => "mode_tracepoint",
    }
}

/// The object's BTF for layout tests, shared with `ps.rs`'s.
#[cfg(test)]
pub(crate) mod tests_support {
    use object::{Object, ObjectSection};

    use crate::{btf::find_struct, object::EBPF_OBJECT};

    /// The BTF `bpf-linker --btf` wrote into the embedded object.
    pub fn object_btf() -> btf_rs::Btf {
        let elf = object::File::parse(EBPF_OBJECT).expect("the embedded object is ELF");
        let section = elf.section_by_name(".BTF").expect("the object carries BTF (link-arg=--btf)");
        btf_rs::Btf::from_bytes(section.data().expect(".BTF data")).expect("parsable BTF")
    }

    /// Size and `(member, byte offset)` of struct `name` in [`object_btf`].
    pub fn object_btf_members(name: &str) -> (usize, Vec<(String, u32)>) {
        let btf = object_btf();
        let st = find_struct(&btf, name).unwrap_or_else(|| panic!("struct {name} in the object's BTF"));
        let members = st
            .members
            .iter()
            .map(|m| (btf.resolve_name(m).expect("member name"), m.bit_offset() / 8))
            .collect();
        (st.size(), members)
    }
}

#[cfg(test)]
mod tests {
    //! Kernel and user space must never drift: the layout the eBPF object's
    //! BTF describes (what the programs write) must be the layout
    //! `chroot-guard-common` gives user space.
    use chroot_guard_common::{Filter, KernelOffsets};

    use super::{tests_support::object_btf_members, *};

    #[test]
    fn chroot_event_matches_object_btf() {
        let (size, members) = object_btf_members("ChrootEvent");
        let table = event_layout();
        let get = |k: &str| table.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(size as u32, get("size").expect("size"), "sizeof(ChrootEvent)");
        for (name, offset) in &members {
            if name.starts_with("_pad") {
                continue;
            }
            assert_eq!(Some(*offset), get(name), "offset of ChrootEvent.{name}");
        }
        // Every field user space decodes exists in the kernel's view.
        let decoded = table.iter().filter(|(n, _)| members.iter().any(|(m, _)| m == n)).count();
        assert_eq!(decoded, members.iter().filter(|(n, _)| !n.starts_with("_pad")).count());
    }

    #[test]
    fn globals_match_object_btf() {
        let (size, _) = object_btf_members("KernelOffsets");
        assert_eq!(size, size_of::<KernelOffsets>());
        let (size, members) = object_btf_members("Filter");
        assert_eq!(size, size_of::<Filter>());
        let comm = members.iter().find(|(n, _)| n == "comm").expect("Filter.comm");
        assert_eq!(comm.1 as usize, offset_of!(Filter, comm));
        let (size, _) = object_btf_members("PolicyRule");
        assert_eq!(size, size_of::<chroot_guard_common::policy::PolicyRule>());
        let (size, _) = object_btf_members("PolicyHeader");
        assert_eq!(size, size_of::<chroot_guard_common::policy::PolicyHeader>());
        let (size, _) = object_btf_members("PathKey");
        assert_eq!(size, size_of::<chroot_guard_common::policy::PathKey>());
        let (size, _) = object_btf_members("ExeKey");
        assert_eq!(size, size_of::<chroot_guard_common::policy::ExeKey>());
    }

    #[test]
    fn no_implicit_padding() {
        // Explicit `_pad` fields only: the sum of field sizes is the size.
        let sum = 1 + 1 + 2 + 2 + 2 + 2 * 4 + 4 * 16 + 8 * 6 + 2 * COMM_LEN + chroot_guard_common::DATA_BYTES;
        assert_eq!(sum, size_of::<ChrootEvent>());
    }
}

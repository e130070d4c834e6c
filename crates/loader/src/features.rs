//! The kernel features the eBPF object needs, each with the release that
//! brought it, told from the kernel's BTF.
//!
//! BTF, not the release number: distributions backport BPF features
//! (RHEL's 4.18 kernels have `bpf_loop`), and a feature's mark in BTF (an
//! enum member of the UAPI, a struct field) is there exactly when the code
//! is. Checked before any map is created, so a kernel that lacks one gets
//! an error naming it instead of aya's "failed to create map".

use btf_rs::Type;

use crate::btf::{offset_of, TypesByName};

/// What needs a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Every program of both objects (watch in every mode, the guard,
    /// `ps`, doctor's checks): the object's maps are created together.
    Object,
    /// The full object ([`crate::object::Object::Full`]); without it,
    /// watch, `ps` and doctor's checks use the legacy object, and the
    /// guard cannot run.
    FullObject,
    /// The guard's policy program (`lsm/path_chroot`).
    Guard,
}

impl Need {
    /// The name `doctor` prints.
    pub fn name(self) -> &'static str {
        match self {
            Need::Object => "every mode",
            Need::FullObject => "the guard (watch uses the legacy object without it)",
            Need::Guard => "the guard",
        }
    }
}

/// How a feature shows in the kernel's BTF.
#[derive(Debug, Clone, Copy)]
pub enum Mark {
    /// A member of a UAPI enum (`enum bpf_map_type`, `enum bpf_func_id`).
    EnumMember {
        /// The enum's name.
        r#enum: &'static str,
        /// The member's name.
        member: &'static str,
    },
    /// A field of a kernel struct.
    Field {
        /// The struct's name.
        r#struct: &'static str,
        /// The field's name.
        field: &'static str,
    },
}

impl Mark {
    /// The enum or struct the mark is looked up in.
    pub fn type_name(&self) -> &'static str {
        match self {
            Mark::EnumMember { r#enum, .. } => r#enum,
            Mark::Field { r#struct, .. } => r#struct,
        }
    }
}

/// One kernel feature the object relies on.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// What it is, for people ("task storage in tracing programs").
    pub name: &'static str,
    /// The mainline release that brought it, (major, minor).
    pub since: (u32, u32),
    /// What needs it.
    pub need: Need,
    /// How BTF shows it.
    pub mark: Mark,
}

/// Every feature the object relies on beyond BTF itself, in the order the
/// kernel gained them. The BPF LSM's own conditions (CONFIG_BPF_LSM, `bpf`
/// in the active LSM list) are `doctor`'s LSM check, not listed here.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
        since: (5, 8),
        need: Need::Object,
        mark: Mark::EnumMember { r#enum: "bpf_map_type", member: "BPF_MAP_TYPE_RINGBUF" },
    },
    Feature {
        name: "bpf_get_current_task_btf()",
        since: (5, 11),
        need: Need::FullObject,
        mark: Mark::EnumMember { r#enum: "bpf_func_id", member: "BPF_FUNC_get_current_task_btf" },
    },
    // 5.11 had task storage for BPF LSM programs only, in the LSM blob;
    // 5.12 moved it to `task_struct::bpf_storage` and opened it to tracing
    // programs, which keep each call's state there (`CG_PENDING`).
    Feature {
        name: "task storage in tracing programs (BPF_MAP_TYPE_TASK_STORAGE)",
        since: (5, 12),
        need: Need::FullObject,
        mark: Mark::Field { r#struct: "task_struct", field: "bpf_storage" },
    },
    // The full object's programs hold `bpf_loop` callbacks (the walks'
    // steps, the fentry wait) as BPF_PSEUDO_FUNC instructions, which a
    // kernel refuses at load before 5.13 even in a branch `has_bpf_loop`
    // leaves dead; `bpf_for_each_map_elem()` came with them.
    Feature {
        name: "BPF callbacks (bpf_for_each_map_elem())",
        since: (5, 13),
        need: Need::FullObject,
        mark: Mark::EnumMember { r#enum: "bpf_func_id", member: "BPF_FUNC_for_each_map_elem" },
    },
    Feature {
        name: "bpf_loop()",
        since: (5, 17),
        need: Need::Guard,
        mark: Mark::EnumMember { r#enum: "bpf_func_id", member: "BPF_FUNC_loop" },
    },
];

/// Whether `btf` shows `feature`.
pub fn present(btf: &(impl TypesByName + ?Sized), feature: &Feature) -> bool {
    match feature.mark {
        Mark::EnumMember { r#enum, member } => btf.types_by_name(r#enum).iter().any(|t| match t {
            Type::Enum(e) => e.members.iter().any(|m| btf.btf().resolve_name(m).is_ok_and(|n| n == member)),
            _ => false,
        }),
        Mark::Field { r#struct, field } => offset_of(btf, r#struct, field).is_ok(),
    }
}

/// One feature of [`FEATURES`] and whether this kernel has it: what
/// `doctor` reports (`BindingKernelFeature`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "napi", napi_derive::napi(object, js_name = "BindingKernelFeature"))]
pub struct FeatureFact {
    /// [`Feature::name`].
    pub name: String,
    /// [`Feature::since`] as `"5.12"`.
    pub since: String,
    /// [`Need::name`]: `every mode`, `the guard (watch uses the legacy
    /// object without it)` or `the guard`.
    pub needed_by: String,
    /// Whether the kernel's BTF shows it.
    pub present: bool,
}

/// Every feature of [`FEATURES`] with its presence in `btf`.
pub fn facts(btf: &(impl TypesByName + ?Sized)) -> Vec<FeatureFact> {
    FEATURES
        .iter()
        .map(|f| FeatureFact {
            name: f.name.into(),
            since: format!("{}.{}", f.since.0, f.since.1),
            needed_by: f.need.name().into(),
            present: present(btf, f),
        })
        .collect()
}

/// The features `need` relies on that `btf` does not show, oldest first.
pub fn missing(btf: &(impl TypesByName + ?Sized), need: Need) -> Vec<&'static Feature> {
    FEATURES.iter().filter(|f| f.need == need && !present(btf, f)).collect()
}

/// The features the guard relies on that `btf` does not show, oldest
/// first: the full object's and the policy program's.
pub fn missing_for_guard(btf: &(impl TypesByName + ?Sized)) -> Vec<&'static Feature> {
    FEATURES
        .iter()
        .filter(|f| matches!(f.need, Need::FullObject | Need::Guard) && !present(btf, f))
        .collect()
}

/// The sentence an error gives for `missing` (not empty).
pub fn describe(missing: &[&Feature]) -> String {
    let list = missing.iter().map(|f| format!("{} (Linux {}.{})", f.name, f.since.0, f.since.1)).collect::<Vec<_>>().join(", ");
    let (major, minor) = missing.iter().map(|f| f.since).max().unwrap_or_default();
    format!("this kernel lacks {list}: run Linux {major}.{minor} or later, or a kernel with these backported")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_each_feature_and_the_newest_release() {
        let m: Vec<&Feature> = FEATURES.iter().filter(|f| f.need == Need::FullObject).collect();
        let s = describe(&m);
        assert!(s.contains("task storage in tracing programs (BPF_MAP_TYPE_TASK_STORAGE) (Linux 5.12)"), "{s}");
        assert!(s.contains("BPF callbacks (bpf_for_each_map_elem()) (Linux 5.13)"), "{s}");
        assert!(s.contains("run Linux 5.13 or later"), "{s}");
    }

    #[test]
    fn every_feature_is_found_in_the_host_kernels_btf() {
        // The suite's hosts run kernels newer than every feature here: a
        // mark spelled wrong, or moved by a kernel, fails this.
        let Ok(btf) = crate::btf::kernel_btf() else {
            eprintln!("skipped: no kernel BTF at {}", crate::btf::VMLINUX_BTF);
            return;
        };
        for f in FEATURES {
            assert!(present(&btf, f), "{} not found in this kernel's BTF", f.name);
        }
    }
}

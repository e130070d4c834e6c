//! `--cfg bpf_target_arch="…"` for this crate, from `AYA_BPF_TARGET_ARCH`
//! (the architecture whose kernel the object is for; xtask sets it), so
//! architecture-specific reads (`stacks.rs`) follow the object's target.

fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}

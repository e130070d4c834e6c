//! `cargo xtask <verb>`: the one entry point for setting up, building,
//! testing and demonstrating chroot-guard. npm scripts call these verbs.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod build;
mod docs;
mod setup;
mod vm;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and run chroot-guard", version)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what the build needs (apt packages, bpf-linker, npm packages); skips what is present.
    Setup,
    /// Build the eBPF object with Debian's rustc-web and bpf-linker.
    BuildEbpf,
    /// Build the eBPF object, the napi addon and the TypeScript.
    Build,
    /// Set up, build, then run `chroot-guard demo` (needs root).
    Demo {
        /// Arguments passed to `chroot-guard demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run every test (needs root).
    Test,
    /// Regenerate the probe tables in README.md and docs/architecture.md.
    Docs {
        /// Fail if they are stale instead of rewriting them.
        #[arg(long)]
        check: bool,
    },
    /// Run a command in a QEMU VM with Debian's 6.1 kernel (kprobes, fentry, BPF LSM; needs root).
    Vm(vm::VmArgs),
}

fn main() -> Result<()> {
    match Cli::parse().verb {
        Verb::Setup => setup::setup(),
        Verb::BuildEbpf => build::build_ebpf(),
        Verb::Build => build::build(),
        Verb::Demo { args } => {
            setup::setup()?;
            build::build()?;
            xtask::step("chroot-guard demo");
            xtask::run(xtask::in_root("node").arg("dist/cli.js").arg("demo").args(args))
        }
        Verb::Docs { check } => docs::docs(check),
        Verb::Test => {
            xtask::step("docs: generated tables up to date");
            docs::docs(true)?;
            setup::setup()?;
            build::build()?;
            xtask::step("Rust tests (layout, core against the kernel)");
            xtask::run(xtask::in_root("cargo").args(["test", "--workspace", "--no-default-features"]))?;
            xtask::step("TypeScript tests against the host kernel (vitest)");
            // What this machine kind's kernel allows (../shared/PLATFORM.md):
            // only the tracepoint family. Override for another kernel.
            let expect = std::env::var("CG_EXPECT_AUTO_MODE").unwrap_or_else(|_| "tracepoint".into());
            xtask::run(xtask::npx(&["vitest", "run"]).env("CG_EXPECT_AUTO_MODE", expect))
        }
        Verb::Vm(args) => vm::cli(args),
    }
}

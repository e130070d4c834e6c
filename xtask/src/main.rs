//! `cargo xtask <verb>`: the one entry point for setting up, building,
//! testing and demonstrating chroot-guard. npm scripts call these verbs.
use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::step;

mod apt;
mod arch;
mod bench;
mod build;
mod cross;
mod docs;
mod pack;
mod setup;
mod test;
mod vm;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and run chroot-guard", version)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what the build needs (apt packages, bpf-linker, npm packages, Python tools in .cache/venv); skips what is present.
    Setup,
    /// Build the eBPF object with Debian's rustc-web and bpf-linker (after `cargo xtask setup`).
    BuildEbpf {
        /// The architecture whose kprobe `pt_regs` layout the object reads (x64, arm64); default: this machine's.
        #[arg(long)]
        arch: Option<String>,
    },
    /// Set up, then build the eBPF object, the napi addon and the TypeScript.
    Build {
        /// Also cross-build the addon for this architecture (arm64 on an x64 machine), beside this machine's in dist/native.
        #[arg(long)]
        arch: Vec<String>,
    },
    /// Set up, build, then run `chroot-guard demo` (needs root).
    Demo {
        /// Arguments passed to `chroot-guard demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run every test: Rust, vitest on the host, vitest in the VM per mode (needs root).
    Test(test::TestArgs),
    /// Set up, build, then run the benchmarks against bpftrace (bench/; needs root).
    Bench(bench::BenchArgs),
    /// Set up, build for every architecture (the others cross-built), and write every npm package's tarball to npm-pack/ (checked with npm publish --dry-run).
    Pack,
    /// Regenerate the probe tables in README.md and docs/architecture.md.
    Docs {
        /// Fail if they are stale instead of rewriting them.
        #[arg(long)]
        check: bool,
    },
    /// Run a command in a QEMU VM with Debian's 6.1 kernel (kprobes, fentry, BPF LSM; needs root).
    Vm(vm::VmArgs),
}

fn main() -> std::process::ExitCode {
    // Errors are for people: the message and its causes, no backtrace.
    match run_verb(Cli::parse().verb) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_verb(verb: Verb) -> Result<()> {
    match verb {
        Verb::Setup => setup::setup(),
        Verb::BuildEbpf { arch } => build::build_ebpf(arch.as_deref().map_or(Ok(arch::host()), arch::by_name)?),
        Verb::Build { arch } => {
            let also = arch.iter().map(|a| arch::by_name(a)).collect::<Result<Vec<_>>>()?;
            setup::setup()?;
            build::build(&also)
        }
        Verb::Demo { args } => {
            setup::setup()?;
            build::build(&[])?;
            step("chroot-guard demo");
            xtask::run(xtask::in_root("node").arg("dist/cli.js").arg("demo").args(args))
        }
        Verb::Docs { check } => docs::docs(check),
        Verb::Bench(args) => {
            setup::setup()?;
            build::build(&[])?;
            bench::bench(&args)
        }
        Verb::Pack => {
            setup::setup()?;
            build::build(&arch::all())?;
            pack::pack()
        }
        Verb::Test(args) => {
            step("docs: generated tables up to date");
            docs::docs(true)?;
            setup::setup()?;
            // The other architectures' addons are cross-built by `test`,
            // beside the first VM, which needs only this machine's.
            build::build(&[])?;
            test::test(&args)
        }
        Verb::Vm(args) => vm::cli(args),
    }
}

//! `cargo xtask <verb>`: the one entry point for setting up, building,
//! testing and demonstrating chroot-guard. npm scripts call these verbs.
use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::step;

mod apt;
mod bench;
mod build;
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
    BuildEbpf,
    /// Set up, then build the eBPF object, the napi addon and the TypeScript.
    Build,
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
    /// Set up, build, and write every npm package's tarball to npm-pack/ (checked with npm publish --dry-run).
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
        Verb::BuildEbpf => build::build_ebpf(),
        Verb::Build => {
            setup::setup()?;
            build::build()
        }
        Verb::Demo { args } => {
            setup::setup()?;
            build::build()?;
            step("chroot-guard demo");
            xtask::run(xtask::in_root("node").arg("dist/cli.js").arg("demo").args(args))
        }
        Verb::Docs { check } => docs::docs(check),
        Verb::Bench(args) => {
            setup::setup()?;
            build::build()?;
            bench::bench(&args)
        }
        Verb::Pack => {
            setup::setup()?;
            build::build()?;
            pack::pack()
        }
        Verb::Test(args) => {
            step("docs: generated tables up to date");
            docs::docs(true)?;
            setup::setup()?;
            build::build()?;
            test::test(&args)
        }
        Verb::Vm(args) => vm::cli(args),
    }
}

//! `cargo xtask bench`: the benchmark suite under `bench/`, side by side
//! with bpftrace (see bench/run.mjs for what is measured and how). Not part
//! of the tests: timings belong here, never in a test.

use std::{fs, process::Command};

use anyhow::{Context, Result};
use clap::Args;
use xtask::{in_root, root, run, step};

use crate::{setup, vm};

/// Options of `cargo xtask bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Also measure attach modes and LSM allow/deny in the VM.
    #[arg(long)]
    pub vm: bool,
    /// Fewer rounds and shorter steps (a smoke run, not for the results page).
    #[arg(long)]
    pub quick: bool,
    /// Only these parts: cost, throughput, storm, latency, startup, memory.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A label for the results (e.g. "before variable-length events").
    #[arg(long)]
    pub label: Option<String>,
}

const APT: &[(&str, &str)] = &[
    ("bpftrace", "the baseline the benchmarks compare against"),
    ("gcc", "builds the workload"),
    ("gnuplot-nox", "draws the results chart"),
];

/// Builds the workload and the O1 drain, then runs bench/run.mjs.
pub fn bench(args: &BenchArgs) -> Result<()> {
    setup::apt(APT)?;
    step("bench workload (gcc) and the O1 drain (cargo, release)");
    let out = root().join("target/bench");
    fs::create_dir_all(&out)?;
    run(Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(out.join("chroot_loop"))
        .arg(root().join("bench/workload/chroot_loop.c")))?;
    run(in_root("cargo").args([
        "build",
        "--release",
        "--example",
        "drain",
        "-p",
        "chroot-guard-loader",
        "--no-default-features",
    ]))?;
    let mut common: Vec<String> = Vec::new();
    if args.quick {
        common.push("--quick".into());
    }
    let mut host: Vec<String> = common.clone();
    if !args.only.is_empty() {
        host.push("--only".into());
        host.push(args.only.join(","));
    }
    if let Some(label) = &args.label {
        host.push("--label".into());
        host.push(label.clone());
    }
    if args.vm {
        step("bench in the VM: attach modes and LSM allow/deny");
        let mut command = vec!["sh".to_string(), "-c".into()];
        let extra = common.join(" ");
        command.push(format!("node bench/run.mjs --vm {extra} > {}/vm-bench.json", vm::GUEST_OUT));
        let outcome = vm::run(&vm::VmOptions { command, ..vm::VmOptions::default() })?;
        if outcome.exit_code != 0 {
            anyhow::bail!("the VM bench failed with exit code {}", outcome.exit_code);
        }
        let file = outcome.out_dir.join("vm-bench.json");
        fs::metadata(&file).context("the VM bench wrote no results")?;
        host.push("--vm-results".into());
        host.push(file.to_string_lossy().into_owned());
    }
    step("bench on the host (about 5 minutes)");
    run(in_root("node").arg("bench/run.mjs").args(&host))
}

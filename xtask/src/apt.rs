//! apt for packages the machine does not install: a VM kernel from another
//! Debian release, or another architecture's libraries for the cross build.
//! Each kind gets an apt configuration of our own under `.cache/` (package
//! lists and a cache, plus a sources list for another release, passed with
//! `-o`), so the machine's sources, lists and architectures stay as they
//! are. Packages are fetched with `apt-get download` (nothing is installed)
//! and kept, so later runs work offline.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use xtask::{run, secs};

/// The Debian archive other releases come from, and the keyring that signs
/// it (Debian's `debian-archive-keyring`).
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// How to run apt-get and apt-cache for one kind of package.
pub struct Apt {
    opts: Vec<String>,
    /// What the sources are, for error messages.
    sources: String,
}

impl Apt {
    /// The machine's own sources, lists and architectures.
    pub fn machine() -> Apt {
        Apt { opts: Vec::new(), sources: "/etc/apt/sources.list*".to_string() }
    }

    /// Our own configuration in `dir` (package lists and cache): Debian
    /// release `suite` (e.g. `trixie`, with a sources list of its own) or
    /// the machine's sources, for the machine's architecture and, if given,
    /// Debian architecture `arch` (e.g. `arm64`).
    pub fn own(dir: &Path, suite: Option<&str>, arch: Option<&str>) -> Result<Apt> {
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d)).with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let mut opts = Vec::new();
        let mut sources = "/etc/apt/sources.list*".to_string();
        if let Some(suite) = suite {
            let list = dir.join("sources.list");
            let line = format!("deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {suite} main\n");
            if fs::read_to_string(&list).ok().as_deref() != Some(line.as_str()) {
                fs::write(&list, &line).with_context(|| format!("writing {}", list.display()))?;
            }
            opts.push(format!("Dir::Etc::sourcelist={}", list.display()));
            opts.push("Dir::Etc::sourceparts=-".to_string());
            sources = format!("the sources in {}", list.display());
        }
        if let Some(arch) = arch {
            let native = xtask::output(Command::new("dpkg").arg("--print-architecture"))?;
            opts.push(format!("APT::Architectures={},{arch}", native.trim()));
            sources = format!("{sources} for {arch}");
        }
        opts.push(format!("Dir::State::Lists={}", dir.join("lists").display()));
        opts.push(format!("Dir::Cache={}", dir.join("cache").display()));
        let apt = Apt { opts: opts.into_iter().flat_map(|o| ["-o".to_string(), o]).collect(), sources };
        // A fresh configuration has no package lists: fetch them now rather
        // than fail a first query.
        let has_lists = fs::read_dir(dir.join("lists"))
            .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().contains("_Packages"))))
            .unwrap_or(false);
        if !has_lists {
            apt.update()?;
        }
        Ok(apt)
    }

    /// The candidate version of `package` (`name` or `name:arch`), after one
    /// `apt-get update` if apt knows none.
    pub fn candidate(&self, package: &str) -> Result<String> {
        Ok(self.candidates(&[package.to_string()])?.remove(0))
    }

    /// The candidate versions of `packages`, in their order, from one
    /// `apt-cache policy` (one call per package took about a second each
    /// under apt's own configuration), after one `apt-get update` if apt
    /// knows any of them not.
    pub fn candidates(&self, packages: &[String]) -> Result<Vec<String>> {
        let ask = || -> Vec<Option<String>> {
            let Ok(policy) = xtask::output(self.command("apt-cache").arg("policy").args(packages)) else {
                return vec![None; packages.len()];
            };
            // Each package's block starts `name:` (`name:arch:`) at the margin.
            let mut found: Vec<(String, String)> = Vec::new();
            let mut current = None;
            for line in policy.lines() {
                if !line.starts_with(char::is_whitespace) {
                    current = line.strip_suffix(':').map(str::to_string);
                } else if let (Some(name), Some(v)) = (&current, line.trim().strip_prefix("Candidate:")) {
                    let v = v.trim();
                    if !v.is_empty() && v != "(none)" {
                        found.push((name.clone(), v.to_string()));
                    }
                }
            }
            packages.iter().map(|p| found.iter().find(|(n, _)| n == p).map(|(_, v)| v.clone())).collect()
        };
        let mut versions = ask();
        if versions.iter().any(Option::is_none) {
            self.update()?;
            versions = ask();
        }
        packages
            .iter()
            .zip(versions)
            .map(|(p, v)| v.with_context(|| format!("apt has no candidate version of {p} in {}", self.sources)))
            .collect()
    }

    /// `program` (apt-get, apt-cache) with these options.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(&self.opts);
        c
    }

    /// `apt-get update` for these sources.
    pub fn update(&self) -> Result<()> {
        run(self.command("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))
            .with_context(|| format!("apt-get update failed: check the network and {}", self.sources))
    }

    /// The `.deb` of `package` (`name` or `name:arch`) at `version` in `debs`,
    /// downloaded there if missing ([`Apt::debs`]).
    pub fn deb(&self, debs: &Path, package: &str, version: &str) -> Result<PathBuf> {
        let mut found = self.debs(debs, &[(package.to_string(), version.to_string())])?;
        found.pop().context("one .deb asked, none found")
    }

    /// The `.deb` of each `(package, version)` in `debs`, in order; the
    /// missing ones downloaded there by one `apt-get download` (each costs
    /// about 2 s on its own), after one `apt-get update` if the first try
    /// fails (stale or no lists).
    pub fn debs(&self, debs: &Path, wanted: &[(String, String)]) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
        let find = |package: &str, version: &str| -> (Option<PathBuf>, String) {
            let (name, arch) = package.split_once(':').map_or((package, None), |(n, a)| (n, Some(a)));
            let prefix = format!("{name}_{}_", version.replace(':', "%3a"));
            let suffix = arch.map_or_else(|| ".deb".to_string(), |a| format!("_{a}.deb"));
            let found = fs::read_dir(debs).ok().and_then(|dir| {
                dir.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
                })
            });
            (found, format!("{prefix}*{suffix}"))
        };
        let missing: Vec<String> =
            wanted.iter().filter(|(p, v)| find(p, v).0.is_none()).map(|(p, v)| format!("{p}={v}")).collect();
        if !missing.is_empty() {
            let started = Instant::now();
            eprintln!("    downloading {} into {}", missing.join(" "), debs.display());
            let download = || {
                run(self
                    .command("apt-get")
                    // apt's sandbox user _apt may not write into the repository.
                    .args(["-o", "APT::Sandbox::User=root", "download"])
                    .args(&missing)
                    .current_dir(debs))
            };
            if let Err(e) = download() {
                eprintln!("    download failed ({e:#}); running apt-get update and trying again");
                self.update()?;
                download().with_context(|| {
                    format!("cannot download {}: check the network and {} (`apt-cache policy PACKAGE`)", missing.join(" "), self.sources)
                })?;
            }
            eprintln!("    downloaded {} package(s) in {}", missing.len(), secs(started.elapsed()));
        }
        wanted
            .iter()
            .map(|(p, v)| match find(p, v) {
                (Some(deb), _) => {
                    let size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
                    eprintln!("    {} ({} MB)", deb.display(), size / 1_000_000);
                    Ok(deb)
                }
                (None, pattern) => bail!("apt-get download left no {pattern} in {}", debs.display()),
            })
            .collect()
    }
}

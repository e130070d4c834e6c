//! `cargo xtask pack`: builds everything and writes the tarballs of every
//! npm package to `npm-pack/`: the main package `chroot-guard` (ESM and
//! CommonJS entry points, declarations, the CLI, the napi-rs loader; no
//! `.node` file) and one platform package per napi target
//! (`chroot-guard-linux-x64-gnu`, `chroot-guard-linux-arm64-gnu`: the addon
//! with its architecture's eBPF object inside; `arch.rs`).
//! Each is also checked with `npm publish --dry-run`.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use xtask::{in_root, npx, output, root, run, step};

/// Where the tarballs go.
pub const OUT: &str = "npm-pack";

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// One packed tarball, as `npm pack --json` describes it.
struct Packed {
    name: String,
    filename: String,
    size: u64,
    unpacked: u64,
    files: usize,
}

fn npm_pack(dir: &Path, out: &Path) -> Result<Packed> {
    let json = output(in_root("npm").args(["pack", "--json", "--pack-destination"]).arg(out).current_dir(dir))?;
    let v: Value = serde_json::from_str(&json).context("npm pack --json output")?;
    let p = &v[0];
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    Ok(Packed {
        name: s("name"),
        filename: s("filename"),
        size: n("size"),
        unpacked: n("unpackedSize"),
        files: p["files"].as_array().map_or(0, Vec::len),
    })
}

/// Builds, stages and packs every package; checks each with
/// `npm publish --dry-run`.
pub fn pack() -> Result<()> {
    let root = root();
    let pkg: Value = serde_json::from_str(&fs::read_to_string(root.join("package.json"))?)?;
    let version = pkg["version"].as_str().context("package.json version")?.to_string();
    let out = root.join(OUT);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;

    step("platform packages (napi create-npm-dirs, artifacts)");
    run(&mut npx(&["napi", "create-npm-dirs", "--npm-dir", "npm", "--package-json-path", "package.json"]))?;
    run(&mut npx(&["napi", "artifacts", "--output-dir", "ts/native", "--npm-dir", "npm", "--package-json-path", "package.json"]))?;
    let mut platform_names = Vec::new();
    let mut packed = Vec::new();
    for entry in fs::read_dir(root.join("npm"))? {
        let dir = entry?.path();
        let meta: Value = serde_json::from_str(&fs::read_to_string(dir.join("package.json"))?)?;
        let name = meta["name"].as_str().context("platform package name")?.to_string();
        let node = meta["main"].as_str().context("platform package main")?;
        if !dir.join(node).exists() {
            bail!("{} has no {node}: build the addon first (cargo xtask build)", dir.display());
        }
        if meta["version"].as_str() != Some(version.as_str()) {
            bail!("{name} is at version {} but chroot-guard at {version}: one version across all packages", meta["version"]);
        }
        packed.push(npm_pack(&dir, &out)?);
        platform_names.push(name);
    }

    step("main package (staged in target/npm-stage)");
    let stage = root.join("target/npm-stage/chroot-guard");
    let _ = fs::remove_dir_all(&stage);
    // What package.json's `files` names: a path, or a pattern with one `*`
    // in its last part (`examples/*.yaml`, `dist/cli-*.js`), which names the
    // regular files of that directory with that prefix and suffix.
    let files = pkg["files"].as_array().context("package.json has no files list")?;
    for f in files.iter().filter_map(Value::as_str) {
        let (dir, name) = f.rsplit_once('/').unwrap_or((".", f));
        match name.split_once('*') {
            Some((prefix, suffix)) => {
                for e in fs::read_dir(root.join(dir))? {
                    let e = e?;
                    let file = e.file_name().to_string_lossy().into_owned();
                    if e.file_type()?.is_file() && file.starts_with(prefix) && file.ends_with(suffix) {
                        copy(&e.path(), &stage.join(dir).join(&file))?;
                    }
                }
            }
            None => copy(&root.join(f), &stage.join(f))?,
        }
    }
    let mut staged = pkg.clone();
    let obj = staged.as_object_mut().context("package.json is an object")?;
    obj.remove("devDependencies");
    obj.remove("scripts");
    let optional: serde_json::Map<String, Value> =
        platform_names.iter().map(|n| (n.clone(), Value::String(version.clone()))).collect();
    obj.insert("optionalDependencies".into(), Value::Object(optional));
    fs::write(stage.join("package.json"), serde_json::to_string_pretty(&staged)? + "\n")?;
    packed.insert(0, npm_pack(&stage, &out)?);

    step("npm publish --dry-run");
    for p in &packed {
        run(in_root("npm").args(["publish", "--dry-run", "--tag", "dry-run"]).arg(out.join(&p.filename)))?;
    }

    step(&format!("packages in {OUT}/"));
    eprintln!("  {:<30} {:>10} {:>12} {:>6}  tarball", "package", "packed kB", "unpacked kB", "files");
    for p in &packed {
        eprintln!("  {:<30} {:>10} {:>12} {:>6}  {}", p.name, p.size / 1000, p.unpacked / 1000, p.files, p.filename);
    }
    Ok(())
}

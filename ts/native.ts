/**
 * Loads the native addon (internal). The generated loader
 * `native/binding.cjs` (napi-rs) picks the `.node` file beside it or the
 * platform package (`chroot-guard-linux-x64-gnu`, …) that npm installed
 * through optionalDependencies. Loading is lazy so that importing
 * chroot-guard never throws; a failure reaches callers as
 * `NATIVE_UNAVAILABLE`, naming the platform seen and the platforms with
 * prebuilt binaries.
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import { ChrootGuardError } from './errors.js';

/** The binding's exports (internal, prefixed `Binding…`). */
export type Native = typeof import('./native/binding.cjs');

let loaded: Native | undefined;
let failure: ChrootGuardError | undefined;

const TRIPLES: Record<string, string> = {
  'x86_64-unknown-linux-gnu': 'linux-x64-gnu',
  'aarch64-unknown-linux-gnu': 'linux-arm64-gnu',
  'x86_64-unknown-linux-musl': 'linux-x64-musl',
  'aarch64-unknown-linux-musl': 'linux-arm64-musl',
};

/** Platforms with prebuilt binaries (`linux-x64-gnu`, …), from the package's napi targets. */
export function supportedPlatforms(): string[] {
  try {
    const pkg = createRequire(import.meta.url)('../package.json') as { napi?: { targets?: string[] } };
    return (pkg.napi?.targets ?? []).map((t) => TRIPLES[t] ?? t);
  } catch {
    return [];
  }
}

/** This process's platform in napi-rs terms, e.g. `linux-x64-gnu`, `darwin-arm64`. */
export function currentPlatform(): string {
  if (process.platform !== 'linux') return `${process.platform}-${process.arch}`;
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return `linux-${process.arch}-${report?.header?.glibcVersionRuntime ? 'gnu' : 'musl'}`;
}

/**
 * The addon, loaded on first use.
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` when the platform is not
 * Linux, has no prebuilt binary, or the binary cannot be loaded.
 */
export function native(): Native {
  if (loaded) return loaded;
  if (failure) throw failure;
  // The platform name and the supported list only word a failure: a
  // diagnostic report and a package.json read are not paid on success.
  const list = () => supportedPlatforms().join(', ') || 'none';
  if (process.platform !== 'linux') {
    failure = new ChrootGuardError(
      'NATIVE_UNAVAILABLE',
      `chroot-guard needs Linux: it watches chroot(2) with eBPF, and this is ${currentPlatform()} (prebuilt binaries: ${list()})`,
    );
    throw failure;
  }
  try {
    const require = createRequire(import.meta.url);
    loaded = require('./native/binding.cjs') as Native;
    return loaded;
  } catch (cause) {
    const platform = currentPlatform();
    const supported = supportedPlatforms();
    const why = supported.includes(platform)
      ? `the native addon for ${platform} did not load (is the optional dependency chroot-guard-${platform} installed? reinstall with npm install)`
      : `there is no prebuilt chroot-guard binary for ${platform} (prebuilt binaries: ${list()}); build from source with cargo xtask build`;
    failure = new ChrootGuardError('NATIVE_UNAVAILABLE', `${why}: ${(cause as Error).message.split('\n')[0]}`, { cause });
    throw failure;
  }
}

/**
 * Starts the addon's kernel probe on a thread (`prewarm` in
 * `crates/loader/src/attach.rs`): the kernel's BTF read and parsed while
 * the caller loads the rest of what it needs; the next session, guard,
 * `ps` or stack count takes the result. With `speculate`, the thread then
 * also creates the maps and loads (verifies) the programs a session with
 * no options would attach first, unattached: a session with other options
 * drops them and loads its own. Quiet when the addon cannot load: the
 * command that needs it reports that.
 * @internal
 */
export function prewarmKernel(speculate = false): void {
  try {
    native().prewarm(speculate);
  } catch {
    // NATIVE_UNAVAILABLE: the command reports it when it loads the addon.
  }
}

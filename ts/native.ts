/**
 * Loads the native addon (internal). The generated loader
 * `native/binding.cjs` (napi-rs) picks the `.node` file beside it or the
 * platform package; loading is lazy so that importing chroot-guard never
 * throws, and a failure reaches callers as `NATIVE_UNAVAILABLE`.
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import { ChrootWatchError } from './errors.js';

/** The binding's exports (internal, prefixed `Binding…`). */
export type Native = typeof import('./native/binding.cjs');

let loaded: Native | undefined;
let failure: ChrootWatchError | undefined;

/**
 * The addon, loaded on first use.
 * @throws {ChrootWatchError} `NATIVE_UNAVAILABLE` when the platform is not
 * Linux or the addon cannot be loaded.
 */
export function native(): Native {
  if (loaded) return loaded;
  if (failure) throw failure;
  if (process.platform !== 'linux') {
    failure = new ChrootWatchError(
      'NATIVE_UNAVAILABLE',
      `chroot-guard needs Linux: it watches chroot(2) with eBPF, and this is ${process.platform}-${process.arch}`,
    );
    throw failure;
  }
  try {
    const require = createRequire(import.meta.url);
    loaded = require('./native/binding.cjs') as Native;
    return loaded;
  } catch (cause) {
    failure = new ChrootWatchError(
      'NATIVE_UNAVAILABLE',
      `could not load the native addon for ${process.platform}-${process.arch}: ${(cause as Error).message}`,
      { cause },
    );
    throw failure;
  }
}

// Used by the npm scripts that run a tool directly (build:ts, typecheck,
// test:host): they need the npm packages and the addon `cargo xtask build`
// produces. Fails with one line naming that command instead of a "not
// found" from deep inside a tool. Extra arguments are more files to require
// (test:host also needs dist/cli.js).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const needed = ['node_modules/.package-lock.json', 'ts/native/binding.cjs', 'ts/native/binding.d.cts', ...process.argv.slice(2)];
const missing = needed.filter((f) => !existsSync(root + f));
if (missing.length > 0) {
  console.error(`chroot-guard: ${missing.join(', ')} missing: run \`cargo xtask build\` first (it installs the npm packages and builds the addon)`);
  process.exit(1);
}

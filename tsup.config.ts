import { chmodSync, existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { defineConfig, type Options } from 'tsup';

// The published package: the library as ESM and CommonJS with declarations,
// and the CLI as ESM. The native addon stays outside the bundle: the
// napi-rs loader `dist/native/binding.cjs` is required at run time and picks
// the .node file beside it or the platform package.
const common: Options = {
  shims: true,
  target: 'node20',
  platform: 'node',
  outDir: 'dist',
  clean: false,
  splitting: false,
};

// The CLI's chunks carry content hashes in their names: the previous
// build's go first, so none is left behind to be packed. (tsup's own
// `clean` would empty dist/, native/ included.)
if (existsSync('dist')) for (const f of readdirSync('dist')) if (/^cli-.*\.js$/.test(f)) rmSync(`dist/${f}`);

// dist/cli.js alone (the package's `bin`, not its chunks) starts under
// /bin/sh: its second line is a no-op to the shell and a string to
// JavaScript, and the third ends that statement (the shell has exec'd by
// then). The shell drops NODE_EXTRA_CA_CERTS, which makes Node.js parse
// every CA certificate at start (in C++, before any JavaScript: `node -e 0`
// 15 -> 50 ms on the development host, where it is set machine-wide), for a
// command line that makes no TLS connection. `node dist/cli.js` runs the
// two lines as a string and an empty statement. They replace the entry's
// `#!/usr/bin/env node`.
function launchWithSh(file: string): void {
  const js = readFileSync(file, 'utf8').replace(/^#!.*\n/, '');
  writeFileSync(file, `#!/bin/sh\n':' //; unset NODE_EXTRA_CA_CERTS; exec node "$0" "$@"\n;\n${js}`);
  chmodSync(file, 0o755);
}

export default defineConfig([
  { ...common, entry: { index: 'ts/index.ts' }, format: ['esm', 'cjs'], dts: true },
  // The CLI loads each command's module on use: split into chunks,
  // dist/cli-*.js, beside index.js, since the addon and the package's
  // files are found relative to the module.
  {
    ...common,
    entry: { cli: 'ts/cli.ts' },
    format: ['esm'],
    splitting: true,
    esbuildOptions: (o) => {
      o.chunkNames = 'cli-[name]-[hash]';
    },
    onSuccess: async () => launchWithSh('dist/cli.js'),
  },
]);

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

export default defineConfig([
  { ...common, entry: { index: 'ts/index.ts' }, format: ['esm', 'cjs'], dts: true },
  { ...common, entry: { cli: 'ts/cli.ts' }, format: ['esm'] },
]);

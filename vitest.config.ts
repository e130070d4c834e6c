import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// Kernel tests load real programs and count what is loaded: one file at a
// time. The cache lives in /tmp because the VM mounts the repo read-only.
export default defineConfig({
  cacheDir: join(tmpdir(), 'chroot-guard-vite-cache'),
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});

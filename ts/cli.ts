#!/usr/bin/env node
/**
 * The `chroot-guard` command line's entry. For a command that loads BPF
 * programs it starts the addon's kernel probe first (reading and parsing
 * the kernel's BTF and, for a bare `watch`, loading the programs: most of
 * start-up after Node.js's own), then loads the commands (`cli/main.ts`:
 * commander and each command's module), which happens beside the probe.
 * It imports only the addon's loader (`native.ts`, with the errors it
 * raises), so the probe starts as soon as the addon is loaded.
 * @internal
 * @module
 */
import { prewarmKernel } from './native.js';

/** The commands that load BPF programs, and the options that turn that off. */
const PROBING: Record<string, readonly string[]> = { watch: [], demo: [], enforce: [], stacks: [], doctor: [], ps: ['--source=proc'], agent: ['--check-config'] };
const [command, ...rest] = process.argv.slice(2);
const probing = command !== undefined && Object.hasOwn(PROBING, command) ? PROBING[command]! : undefined;
const args = rest.map((a, i) => (a === '--source' ? `--source=${rest[i + 1]}` : a));
// A bare `watch` (or `watch --json`) loads what a session with no options
// does: the probe loads those programs too (`speculate`), unattached.
if (probing && !args.some((a) => a === '-h' || a === '--help' || probing.includes(a))) {
  prewarmKernel(command === 'watch' && args.every((a) => a === '--json'));
}
await import('./cli/main.js');

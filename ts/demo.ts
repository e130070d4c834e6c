/**
 * The built-in demo workload: a tiny busybox root file system made on the
 * fly, and real chroot(2) calls into it (as the classic "chroot into an
 * alpine rootfs" walk-through does), plus calls that fail.
 * @module
 */
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where Debian's busybox-static installs its static binary. */
export const BUSYBOX = '/bin/busybox';

/** A root file system made by {@link makeBusyboxRoot}. */
export interface BusyboxRoot {
  /** Absolute path of the root directory. */
  readonly dir: string;
  /** Removes it. */
  remove(): void;
}

/**
 * Makes `<tmp>/chroot-guard-demo-XXXX/rootfs` holding a static busybox with
 * `sh`, `ls`, `echo`, `cat`, `true` and `chroot` links, an empty `/tmp`, and
 * a nested root `/inner` with its own busybox (for a chroot from inside a
 * chroot).
 * @throws {Error} when /bin/busybox is missing (install busybox-static).
 */
export function makeBusyboxRoot(parent: string = tmpdir()): BusyboxRoot {
  if (!existsSync(BUSYBOX)) {
    throw new Error(`${BUSYBOX} is missing: install the static busybox (apt-get install busybox-static)`);
  }
  const top = mkdtempSync(join(parent, 'chroot-guard-demo-'));
  // mkdtemp makes it 0700; an unprivileged caller must get as far as the
  // CAP_SYS_CHROOT check (EPERM), not stop at the path lookup (EACCES).
  chmodSync(top, 0o755);
  const dir = join(top, 'rootfs');
  for (const d of ['bin', 'tmp', 'inner/bin']) mkdirSync(join(dir, d), { recursive: true });
  for (const bin of ['bin', 'inner/bin']) {
    copyFileSync(BUSYBOX, join(dir, bin, 'busybox'));
    for (const applet of ['sh', 'ls', 'echo', 'cat', 'true', 'chroot']) symlinkSync('busybox', join(dir, bin, applet));
  }
  return { dir, remove: () => rmSync(top, { recursive: true, force: true }) };
}

/** What one demo call should produce in the kernel. */
export interface ExpectedCall {
  /** The argument passed to chroot(2). */
  readonly path: string;
  /** Expected symbolic errno, or null for success. */
  readonly errno: string | null;
  /** Expected resolved new root (host-absolute), or null when none. */
  readonly resolvedPath: string | null;
}

/** One demo step: a command and the chroot calls it makes. */
export interface DemoStep {
  /** What it shows. */
  readonly title: string;
  /** Program and arguments. */
  readonly argv: readonly string[];
  /** The chroot calls it makes, in order, all from the same process. */
  readonly calls: readonly ExpectedCall[];
}

/**
 * The demo's steps for a root made by {@link makeBusyboxRoot}: a successful
 * chroot running a shell, a chroot from inside the chroot (its resolved path
 * is host-absolute), a missing directory (ENOENT), a regular file (ENOTDIR)
 * and an unprivileged caller (EPERM). `resolvedPath` of failed calls is null
 * in tracepoint mode; callers compare it only for successful calls.
 */
export function demoSteps(root: string): DemoStep[] {
  return [
    {
      title: 'chroot into the busybox root and run a shell',
      argv: ['chroot', root, '/bin/sh', '-c', 'echo "  hello from inside the chroot:" $(ls /)'],
      calls: [{ path: root, errno: null, resolvedPath: root }],
    },
    {
      title: 'chroot from inside the chroot (the classic escape set-up)',
      argv: ['chroot', root, '/bin/chroot', '/inner', '/bin/true'],
      calls: [
        { path: root, errno: null, resolvedPath: root },
        { path: '/inner', errno: null, resolvedPath: `${root}/inner` },
      ],
    },
    {
      title: 'chroot into a directory that does not exist',
      argv: ['chroot', '/nonexistent/chroot-guard-demo', '/bin/true'],
      calls: [{ path: '/nonexistent/chroot-guard-demo', errno: 'ENOENT', resolvedPath: null }],
    },
    {
      title: 'chroot into a regular file',
      argv: ['chroot', `${root}/bin/busybox`, '/bin/true'],
      calls: [{ path: `${root}/bin/busybox`, errno: 'ENOTDIR', resolvedPath: null }],
    },
    {
      title: 'chroot as an unprivileged user (uid 65534)',
      argv: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'chroot', root, '/bin/true'],
      calls: [{ path: root, errno: 'EPERM', resolvedPath: null }],
    },
  ];
}

/** Result of {@link runStep}. */
export interface StepRun {
  /** Process id of the command (the chroot calls come from it). */
  readonly pid: number;
  /** Its exit code. */
  readonly code: number | null;
  /** What it printed. */
  readonly output: string;
}

/** Runs one command to completion, collecting stdout and stderr. */
export function runStep(argv: readonly string[]): Promise<StepRun> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = argv;
    const child = spawn(cmd as string, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ pid: child.pid ?? -1, code, output }));
  });
}

/**
 * Test helpers: real kernel, real chroot calls. Nothing here fakes the
 * kernel; these only wait for and look at what it reports.
 */
import { execFileSync, spawn, spawnSync, type ChildProcessByStdio } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import type { ValidateFunction } from 'ajv';
import type { Subscription } from 'rxjs';
import { NO_LOSS, type LossCounts } from '../ts/batch.js';
import { chrootGuard, chrootWatch, type AttachInfo, type ChrootDecision, type ChrootEvent, type ChrootGuard, type ChrootWatchOptions, type GuardInfo, type Policy } from '../ts/index.js';

/**
 * The mode the suite runs in: `CG_TEST_MODE` (set per run by `cargo xtask
 * test`, e.g. in the VM), else `auto`.
 */
export const TEST_MODE = (process.env.CG_TEST_MODE ?? 'auto') as NonNullable<ChrootWatchOptions['mode']>;

/**
 * `bpftool --json <kind> show`: every loaded object of that kind. bpftool
 * 7.1 on arm64 prints nothing, not `[]`, when there is none.
 */
export function bpftoolShow(kind: 'prog' | 'map' | 'link'): Array<{ id: number; name?: string; prog_id?: number }> {
  const out = execFileSync('bpftool', ['--json', kind, 'show'], { encoding: 'utf8' });
  return out.trim() === '' ? [] : (JSON.parse(out) as Array<{ id: number; name?: string; prog_id?: number }>);
}

/** The program names of ours, from `chroot_guard_common::probes::PROBES` (all start `cg_`), loaded by anyone on the host. */
export function ourPrograms(): string[] {
  return bpftoolShow('prog')
    .map((p) => p.name ?? '')
    .filter((n) => n.startsWith('cg_'));
}

/**
 * The BPF programs and maps this process holds (any fd: program, map or
 * link), by name, from `/proc/self/fdinfo` and `bpftool`: what our own
 * sessions left behind, whatever other processes on the host load.
 */
export function heldByThisProcess(): { programs: string[]; maps: string[] } {
  const progIds = new Set<number>();
  const mapIds = new Set<number>();
  for (const fd of readdirSync('/proc/self/fdinfo')) {
    let info: string;
    try {
      info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    for (const m of info.matchAll(/^(prog_id|map_id):\s+(\d+)$/gm)) (m[1] === 'prog_id' ? progIds : mapIds).add(Number(m[2]));
  }
  const named = (kind: 'prog' | 'map', ids: Set<number>) =>
    ids.size === 0
      ? []
      : bpftoolShow(kind)
          .filter((x) => ids.has(x.id))
          .map((x) => x.name ?? `#${x.id}`);
  return { programs: named('prog', progIds), maps: named('map', mapIds) };
}

/** A live subscription that records events. */
export interface Recorder {
  readonly events: ChrootEvent[];
  readonly info: AttachInfo;
  /** The loss totals of the latest `onLost` report (all 0 before one). */
  readonly lost: LossCounts;
  /** Events of one process. */
  of(pid: number): ChrootEvent[];
  /** Waits until `pred` holds for the recorded events (or throws after `ms`). */
  until(pred: (events: ChrootEvent[]) => boolean, ms?: number): Promise<void>;
  stop(): void;
}

/** Subscribes with `options` (mode defaults to {@link TEST_MODE}) and resolves once attached. */
export function record(options: ChrootWatchOptions = {}): Promise<Recorder> {
  const events: ChrootEvent[] = [];
  let sub: Subscription | undefined;
  let lost: LossCounts = NO_LOSS;
  // An error after the attach ends the recording; `until` says so at once.
  let failure: unknown;
  return new Promise<Recorder>((resolve, reject) => {
    sub = chrootWatch({
      mode: TEST_MODE,
      ...options,
      onLost: (report) => {
        lost = report.total;
        options.onLost?.(report);
      },
      onAttach: (info) =>
        resolve({
          events,
          info,
          get lost() {
            return lost;
          },
          of: (pid) => events.filter((e) => e.pid === pid),
          until: async (pred, ms = 5000 * SLOWDOWN) => {
            const deadline = Date.now() + ms;
            while (!pred(events)) {
              if (failure !== undefined) throw new Error(`the recording ended with an error: ${String(failure)}`, { cause: failure });
              if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms; events so far: ${JSON.stringify(events.map((e) => [e.pid, e.comm, e.path, e.errno]))}; losses: ${JSON.stringify(lost)}; session: ${JSON.stringify(info.stats())}`);
              await new Promise((r) => setTimeout(r, 20));
            }
          },
          stop: () => sub?.unsubscribe(),
        }),
    }).subscribe({
      next: (e) => events.push(e),
      error: (e: unknown) => {
        failure = e;
        reject(e);
      },
    });
  });
}

/** Sleeps. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What test/attacks/chroot_via.py reports: the pid that called chroot(2) and each call's result (`ok` or an errno name). */
export interface Attack {
  readonly pid: number;
  readonly results: readonly string[];
}

/** The unprivileged user the attacks run as (nobody). */
export const NOBODY = 65534;

/** Runs `script` with sh as uid/gid {@link NOBODY} with no groups; in a user and mount namespace of its own with `userns`. */
export function asNobody(script: string, userns = false) {
  const args = [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...(userns ? ['unshare', '-Urm'] : []), 'sh', '-c', script];
  return spawnSync('setpriv', args, { encoding: 'utf8' });
}

/** Who runs an attack: root, or uid 65534 inside `unshare -Urm` (a user namespace of its own). */
export type Attacker = 'root' | 'user';

/** A world-readable scratch tree for the attack variants: `dir/deny/inner`, `dir/open`, and the script. */
export interface AttackBench {
  readonly dir: string;
  /** Runs one variant of test/attacks/chroot_via.py against `target`, as root or as the unprivileged user. */
  attack(as: Attacker, variant: string, target: string): Attack;
  remove(): void;
}

/**
 * Makes an {@link AttackBench}. The tree and a copy of the script live in a
 * 0755 directory under /tmp, so the unprivileged runs can reach them
 * wherever the checkout is.
 */
export function attackBench(): AttackBench {
  const dir = mkdtempSync('/tmp/cg-attack-');
  chmodSync(dir, 0o755);
  mkdirSync(`${dir}/deny/inner`, { recursive: true, mode: 0o755 });
  mkdirSync(`${dir}/open`, { mode: 0o755 });
  const script = `${dir}/chroot_via.py`;
  copyFileSync(fileURLToPath(new URL('./attacks/chroot_via.py', import.meta.url)), script);
  chmodSync(script, 0o755);
  return {
    dir,
    attack(as, variant, target) {
      const argv = ['/usr/bin/python3', script, variant, target];
      const r =
        as === 'root'
          ? spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' })
          : spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'unshare', '-Urm', ...argv], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`${variant} as ${as} exited with ${r.status}: ${r.stderr}`);
      return JSON.parse(r.stdout) as Attack;
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** The kernel's dynamic preemption switch (`CONFIG_PREEMPT_DYNAMIC`), in debugfs. */
export const PREEMPT_SWITCH = '/sys/kernel/debug/sched/preempt';

/** The kernel's preemption now (`full`, `voluntary`, …: the debugfs switch `/sys/kernel/debug/sched/preempt`), or null where it cannot be read. */
export function preemption(): string | null {
  try {
    return /\((\w+)\)/.exec(readFileSync(PREEMPT_SWITCH, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/** One thread of `chroot_calls threads`: its id and what its calls returned. */
export interface Turns {
  readonly tid: number;
  readonly aOk: number;
  readonly aEperm: number;
  readonly bOk: number;
  readonly other: number;
}

/**
 * Runs test/callers/chroot_calls.c `threads` as uid 65534 inside `unshare
 * -Urm`: `n` threads at once, each with its own root, each calling
 * chroot(".") `k` times in `a` then `b`, in turn. Puts the caller in
 * the bench's world-readable directory first. With `starve`, every thread
 * runs on CPU 0 beside `n` SCHED_IDLE threads of another process (`idlePid`)
 * calling chroot in `b` until the others are done.
 */
export function threadedCalls(
  bench: AttackBench,
  n: number,
  k: number,
  a: string,
  b: string,
  mode: 'threads' | 'starve' = 'threads',
): { pid: number; idlePid: number | null; threads: Turns[] } {
  const caller = `${bench.dir}/chroot_calls`;
  compileC('test/callers/chroot_calls.c', caller);
  const out = execFileSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'unshare', '-Urm', caller, mode, String(n), String(k), a, b], { encoding: 'utf8' });
  const [head, ...lines] = out.trim().split('\n');
  const threads = lines.map((l) => {
    const [tid, aOk, aEperm, bOk, other] = l.split(' ').map(Number) as [number, number, number, number, number];
    return { tid, aOk, aEperm, bOk, other };
  });
  const [pid, , idle] = head!.split(' ');
  return { pid: Number(pid), idlePid: idle === undefined ? null : Number(idle), threads };
}

/**
 * Puts the test's C program `source` (a path from the repository's root,
 * e.g. `test/callers/chroot_calls.c`) at `dest`, mode 0755. From
 * `CG_TEST_PROGRAMS`, a directory of the programs already built for this
 * machine's architecture (`cargo xtask test` cross-builds them for the
 * arm64 guest, which has no compiler; another userland's under `subdir`),
 * else built here with `gcc` and `flags`.
 */
export function compileC(source: string, dest: string, { gcc = 'gcc', flags = ['-pthread'], subdir = '' } = {}): void {
  const prebuilt = process.env.CG_TEST_PROGRAMS;
  if (prebuilt) {
    copyFileSync(join(prebuilt, subdir, basename(source, '.c')), dest);
  } else {
    execFileSync(gcc, ['-O2', ...flags, '-Wall', '-Werror', '-o', dest, fileURLToPath(new URL(`../${source}`, import.meta.url))]);
  }
  chmodSync(dest, 0o755);
}

/**
 * Builds `test/callers/aarch32/<name>.c` as an AArch32 executable at
 * `dest`, for arm64's compat calls ({@link compileC} with
 * arm-linux-gnueabihf-gcc, statically; `aarch32/` of `CG_TEST_PROGRAMS`).
 * Returns null, and says why, where this CPU runs no AArch32 code (exec
 * fails with ENOEXEC: cores without AArch32 at EL0, such as Neoverse V2).
 */
export function compileAarch32(name: string, dest: string): string | null {
  compileC(`test/callers/aarch32/${name}.c`, dest, { gcc: 'arm-linux-gnueabihf-gcc', flags: ['-static'], subdir: 'aarch32' });
  // With no argument it makes no call and exits 2.
  const probe = spawnSync(dest, [], { encoding: 'utf8' });
  if ((probe.error as NodeJS.ErrnoException | undefined)?.code === 'ENOEXEC') {
    console.log(`AArch32 calls not tested: this CPU runs no AArch32 code (exec of ${dest}: ENOEXEC)`);
    return null;
  }
  if (probe.status !== 2) throw new Error(`${dest} with no argument: ${probe.error?.message ?? `exit ${probe.status}`}: ${probe.stderr}`);
  return dest;
}

/** The ways test/attacks/chroot_via.py reaches a directory without its path in the caller's mount namespace. */
export const UNREACHABLE_VARIANTS = ['detached', 'open_tree', 'fsmount', 'proc_root', 'fd_unshare', 'fd_passed'] as const;

/** The built CLI (`cargo xtask build` makes it). */
export const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

/** Runs the CLI to completion. */
export function cli(...args: string[]) {
  // Bounded: the call blocks the test worker's event loop, so a CLI that
  // never exits would stop vitest's own timeouts too, and the whole run
  // with them (as a VM run did, in pin-state's storm test, 2026-12-03).
  const ms = CLI_TIMEOUT_MS * SLOWDOWN;
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: ms, killSignal: 'SIGKILL' });
  if (r.error) console.error(`chroot-guard ${args.join(' ')}: ${r.error.message} (killed after ${ms} ms); its stderr so far:\n${r.stderr}`);
  return r;
}

/** Longest a CLI call of the tests may take on x86-64 alone (`enforce --pin` took 24 to 34 s in a busy VM). */
const CLI_TIMEOUT_MS = 180_000;

/** The test's slowdown factor (`CG_TEST_SLOWDOWN`, set by `cargo xtask test` in the VM; 1 elsewhere). */
export const SLOWDOWN = Number(process.env.CG_TEST_SLOWDOWN ?? '1');

/** Longest a call storm runs on x86-64 alone, whatever the test does. */
const STORM_MAX_SECONDS = 300;

/**
 * A perl process calling chroot(`dir`) as fast as it can until the file
 * `stop` exists, then printing `calls denied` (denied: EPERM). It also
 * stops after STORM_MAX_SECONDS × SLOWDOWN: a storm holds a CPU and feeds
 * the guard a decision per call, so one that outlived a stalled test kept
 * the stall going (VM runs of 2026-12-03); the test then sees it ended
 * early (`exitCode` set) and fails instead of hanging.
 */
export function chrootStorm(dir: string, stop: string): ChildProcessByStdio<null, Readable, null> {
  const script = 'my ($n, $d, $end) = (0, 0, time + $ARGV[2]); until (-e $ARGV[1] or time > $end) { $n++; chroot($ARGV[0]) or $!{EPERM} and $d++; } print "$n $d\\n";';
  return spawn('perl', ['-e', script, dir, stop, String(STORM_MAX_SECONDS * SLOWDOWN)], { stdio: ['ignore', 'pipe', 'inherit'] });
}

/**
 * perl chroots into `dir`, then says what happened ("ok" or "EPERM") and
 * whether its root is unchanged (it still sees /etc/passwd: "outside").
 */
export function tryChroot(dir: string): { pid: number; out: string } {
  const script = 'print chroot($ARGV[0]) ? "ok " : $!{EPERM} ? "EPERM " : "ERR($!) "; print -e "/etc/passwd" ? "outside\\n" : "inside\\n";';
  const r = spawnSync('perl', ['-e', script, dir], { encoding: 'utf8' });
  return { pid: r.pid!, out: r.stdout.trim() };
}

/** A running guard that records its decisions. */
export interface Guarded {
  readonly guard: ChrootGuard;
  readonly info: GuardInfo;
  readonly decisions: ChrootDecision[];
  /** The decisions of one process so far. */
  of(pid: number): ChrootDecision[];
  /** Waits until `pred` holds (or throws after `ms`, listing the decisions). */
  until(pred: () => boolean, ms?: number): Promise<void>;
  /** Waits for at least `n` decisions of one process and returns them, oldest first. */
  decisionsOf(pid: number, n?: number): Promise<ChrootDecision[]>;
  /**
   * Keeps no decision of `pid` from now on: a storm's, one per call, which
   * filled the test worker's 1 GB heap in the VM (where the storm runs
   * longer) and left it collecting garbage for the rest of the run. Call it
   * right after spawning the process: no decision of it is delivered before
   * the event loop turns.
   */
  ignore(pid: number): void;
}

/** Starts a guard with `policy` and collects its decisions. */
export async function guarded(policy: Policy): Promise<Guarded> {
  const guard = chrootGuard(policy);
  const decisions: ChrootDecision[] = [];
  const ignored = new Set<number>();
  guard.decisions$.subscribe((d) => ignored.has(d.pid) || decisions.push(d));
  const info = await guard.ready;
  const of = (pid: number) => decisions.filter((d) => d.pid === pid);
  const until = async (pred: () => boolean, ms = 10_000 * SLOWDOWN) => {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out; decisions: ${JSON.stringify(decisions.map((d) => [d.pid, d.resolvedPath, d.action, d.ruleId]))}`);
      await sleep(20);
    }
  };
  return {
    guard,
    info,
    decisions,
    of,
    until,
    async decisionsOf(pid, n = 1) {
      await until(() => of(pid).length >= n);
      return of(pid).sort((a, b) => (a.ts < b.ts ? -1 : 1));
    },
    ignore: (pid) => void ignored.add(pid),
  };
}

/** One record of the CLI's NDJSON stream (events.schema.json), as JSON.parse reads it. */
export type StreamRecord = Record<string, unknown> & { type: 'attach' | 'chroot' | 'decision' | 'lost' };

let streamSchema: ValidateFunction | undefined;

/**
 * Parses the CLI's `--json` output, checking every line against the
 * published `events.schema.json` (a line that does not fit fails the test
 * that printed it).
 */
export function ndjson(stdout: string): StreamRecord[] {
  if (!streamSchema) {
    const require = createRequire(import.meta.url);
    const { Ajv } = require('ajv') as typeof import('ajv');
    streamSchema = new Ajv({ allErrors: true, strict: false }).compile(require('../events.schema.json'));
  }
  const validate = streamSchema;
  return stdout
    .split('\n')
    .filter((l) => l.length > 0)
    .map((line) => {
      const record = JSON.parse(line) as StreamRecord;
      if (!validate(record)) throw new Error(`a --json line does not fit events.schema.json: ${JSON.stringify(validate.errors?.slice(0, 3))}\n${line}`);
      return record;
    });
}

/**
 * Removes the cgroup directory `dir`, again while an exited or killed
 * member is still counted in it (rmdir gives EBUSY until its uncharge).
 */
export function removeCgroupDir(dir: string): void {
  const deadline = Date.now() + 5000 * SLOWDOWN;
  for (;;) {
    try {
      return rmdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EBUSY' || Date.now() > deadline) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }
}

/** The cgroup2 mount of the whole hierarchy in this mount namespace, or null. */
export function cgroup2Mount(): string | null {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [before, after] = line.split(' - ');
    const f = before?.split(' ') ?? [];
    if (after?.startsWith('cgroup2 ') && f[3] === '/') return f[4]!.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  }
  return null;
}

/** What {@link floodBehindStalledStdout} saw. */
export interface StalledFlood {
  /** The command's peak RSS during the flood less its RSS before it, bytes. */
  readonly rssGrowthBytes: number;
  /** Its stdout, read once the flood was over, checked against the schema. */
  readonly records: StreamRecord[];
  /** Its exit code after SIGINT. */
  readonly exitCode: number | null;
  /** Its stderr. */
  readonly stderr: string;
}

/**
 * Runs the CLI with `args` (a `--json` stream), its stdout a pipe nobody
 * reads; once its stderr says `ready`, runs `flood` as uid 65534 in
 * `unshare -Urm` (perl, `calls` chroot(2) calls into `dir`) while the pipe
 * stays full. Then reads stdout until `done(records)` holds (or 30 s ×
 * SLOWDOWN), stops the command with SIGINT and reads the rest. Peak RSS
 * comes from `VmHWM`, so a growth between two samples is not missed.
 * `checks.stalled` runs after the flood, while stdout is still unread;
 * `checks.drained` once `done` holds; each gets the stderr so far.
 */
export async function floodBehindStalledStdout(
  args: string[],
  ready: string,
  flood: { dir: string; calls: number },
  done: (records: StreamRecord[]) => boolean,
  checks: { stalled?: (stderr: string) => Promise<void>; drained?: (stderr: string) => Promise<void> } = {},
): Promise<StalledFlood> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]) * 1024;
  const deadline = Date.now() + 60_000 * SLOWDOWN;
  while (!stderr.includes(ready)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`chroot-guard ${args.join(' ')} did not start (exit ${child.exitCode}):\n${stderr}`);
    await sleep(50);
  }
  await sleep(500);
  const before = kib('VmRSS');
  // Resets VmHWM to the RSS now, so the peak is the flood's.
  writeFileSync(`/proc/${child.pid}/clear_refs`, '5');
  const perl = `chroot($ARGV[0]) for 1..$ARGV[1]; print "done\\n"`;
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'unshare', '-Urm', 'perl', '-e', perl, flood.dir, String(flood.calls)], { encoding: 'utf8' });
  if (r.stdout.trim() !== 'done') throw new Error(`the flood failed (${r.status}): ${r.stderr}`);
  await sleep(1000 * SLOWDOWN);
  const peak = kib('VmHWM');
  await checks.stalled?.(stderr);
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const parsed = () => ndjson(out.slice(0, out.lastIndexOf('\n') + 1));
  const until = Date.now() + 30_000 * SLOWDOWN;
  while (!done(parsed()) && Date.now() < until) await sleep(200);
  await checks.drained?.(stderr);
  child.kill('SIGINT');
  const exitCode = await exited;
  return { rssGrowthBytes: peak - before, records: ndjson(out), exitCode, stderr };
}

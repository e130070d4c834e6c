/**
 * The memory of refused modes (`crates/loader/src/memory.rs`) against the
 * real kernel: `auto` skips a mode refused earlier on this boot in a way
 * certain to repeat, without loading a program, and says it remembered;
 * a forced mode and `doctor()` always try for real; and nothing another
 * user, or a file that is not exactly as the loader writes it, can make
 * `auto` skip a mode the kernel allows.
 *
 * Whether a program was loaded is read from the process's own bpf(2)
 * calls (`strace -e trace=bpf`): fentry programs load as
 * `BPF_PROG_TYPE_TRACING`, and no other program of a watch does. On the
 * host (CG_EXPECT_AUTO_MODE=tracepoint) fentry is refused with EPERM and
 * kprobes are missing, so the memory holds both; in the VM (fentry) the
 * kernel allows every mode, so a planted memory shows the skipping, and
 * the attached mode shows whether fentry was tried (strace is too slow
 * under TCG).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { chrootWatch, ChrootGuardError, doctor, type AttachMode, type Refusal } from '../ts/index.js';
import { asNobody, NOBODY, record } from './helpers.js';

const RUN_DIR = '/run/chroot-guard';
const MEMORY = `${RUN_DIR}/refused-modes.json`;
const EXPECT_AUTO = process.env.CG_EXPECT_AUTO_MODE as AttachMode | undefined;
const DIST = fileURLToPath(new URL('../dist/index.js', import.meta.url));

/** A refusal as the memory file stores it. */
interface Stored {
  mode: string;
  program: string;
  target: string;
  stage: string;
  code: string;
  errno: string | null;
  reason: string;
  verifierLog: string | null;
  inputs: string | null;
}

/** The memory file's fields besides its refusals: this boot, kernel, object and capability set. */
interface Key {
  version: number;
  bootId: string;
  kernel: string;
  object: string;
  capabilities: string;
}

/** A refusal of a mode the kernel may well allow, as root could have remembered it. */
const planted = (mode: 'fentry' | 'kprobe' | 'tracepoint'): Stored => ({
  mode,
  program: { fentry: 'cg_fexit_sys', kprobe: 'cg_kprobe_sys', tracepoint: 'cg_tp_exit' }[mode],
  target: mode === 'tracepoint' ? 'sys_exit_chroot' : '__x64_sys_chroot',
  stage: 'load',
  code: 'EPERM',
  errno: 'EPERM',
  reason: `planted by memory.test.ts: ${mode} refused`,
  verifierLog: null,
  inputs: null,
});

let key: Key;
let tmp: string;
let runs = 0;

/** The memory's text, or null when there is no file. */
const memoryText = () => (existsSync(MEMORY) ? readFileSync(MEMORY, 'utf8') : null);
const memory = () => JSON.parse(readFileSync(MEMORY, 'utf8')) as Key & { refusals: Stored[] };

/** The text of a memory file for `refusals`, valid for this process but for what `change` changes. */
function memoryFor(refusals: Stored[], change: Partial<Key> = {}): string {
  return JSON.stringify({ ...key, ...change, refusals });
}

/** A valid memory in which fentry is refused: trusted, it makes auto skip fentry. */
const fentryRemembered = () => memoryFor([planted('fentry')]);

/** Writes `text` at `path` as root, mode 0600, replacing whatever is there. */
function writePrivate(path: string, text: string) {
  rmSync(path, { force: true, recursive: true });
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

/** What one `chrootWatch()` start said, and which program types its process loaded. */
interface Run {
  mode?: AttachMode;
  refused: Refusal[];
  error?: string;
  /** `prog_type` of every BPF_PROG_LOAD the process made, in order; null where not traced (the VM). */
  loads: string[] | null;
}

/**
 * Whether starts are traced. Under TCG (the VM, `CG_VM`) a node process
 * under strace takes minutes to start; there the kernel allows fentry, so
 * the attached mode itself shows whether fentry was tried (a real attempt
 * attaches it).
 */
const TRACED = !process.env.CG_VM;

/**
 * Starts `chrootWatch({ mode })`, unsubscribes once attached (or takes the
 * error), and returns what it said and, where {@link TRACED}, the BPF
 * program types it loaded: in a fresh node process under strace.
 */
async function start(mode: 'auto' | AttachMode): Promise<Run> {
  if (!TRACED) {
    return new Promise<Run>((resolve) => {
      const sub = chrootWatch({
        mode,
        onAttach: (info) => {
          // Closed before the next start, which would otherwise share this session.
          sub.unsubscribe();
          resolve({ mode: info.mode, refused: [...info.refused], loads: null });
        },
      }).subscribe({ error: (e: ChrootGuardError) => resolve({ error: e.code, refused: [...e.refusals], loads: null }) });
    });
  }
  const script = `
    import { chrootWatch } from ${JSON.stringify(DIST)};
    const sub = chrootWatch({ mode: ${JSON.stringify(mode)}, onAttach: (info) => {
      console.log(JSON.stringify({ mode: info.mode, refused: info.refused }));
      sub.unsubscribe();
    } }).subscribe({ error: (e) => console.log(JSON.stringify({ error: e.code, refused: e.refusals })) });`;
  const log = `${tmp}/strace-${++runs}.log`;
  // --seccomp-bpf: the tracee stops at bpf(2) calls only.
  const argv = ['-f', '-qq', '--seccomp-bpf', '-e', 'trace=bpf', '-o', log, process.execPath, '--input-type=module', '-e', script];
  const r = spawnSync('strace', argv, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0 || !r.stdout) throw new Error(`the watch under strace exited with ${r.status ?? r.signal}: ${r.stderr}`);
  const loads = [...readFileSync(log, 'utf8').matchAll(/BPF_PROG_LOAD, \{prog_type=(BPF_PROG_TYPE_\w+)/g)].map((m) => m[1]!);
  return { ...(JSON.parse(r.stdout) as Omit<Run, 'loads'>), loads };
}

/** Checks how many fentry programs (`BPF_PROG_TYPE_TRACING`) the run loaded: none, or some; nothing where not traced. */
function expectFentryLoads(r: Run, expected: 'none' | 'some') {
  if (r.loads === null) return;
  const n = r.loads.filter((t) => t === 'BPF_PROG_TYPE_TRACING').length;
  if (expected === 'none') expect(n, r.loads.join(' ')).toBe(0);
  else expect(n, r.loads.join(' ')).toBeGreaterThan(0);
}

/** `auto`, in this process: the mode and refusals it reports. */
async function auto(): Promise<{ mode: AttachMode; refused: readonly Refusal[] }> {
  const rec = await record({ mode: 'auto' });
  rec.stop();
  return rec.info;
}

beforeAll(async () => {
  tmp = realpathSync(mkdtempSync('/tmp/cg-memory-'));
  chmodSync(tmp, 0o755);
  rmSync(MEMORY, { force: true });
  // doctor() always writes the memory: its key is this process's.
  const r = await doctor();
  expect(r.remembered.refreshed, r.remembered.problem ?? '').toBe(true);
  const { refusals: _, ...k } = memory();
  key = k;
});
beforeEach(() => {
  if (lstatSync(RUN_DIR, { throwIfNoEntry: false })?.isSymbolicLink()) rmSync(RUN_DIR);
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
  chmodSync(RUN_DIR, 0o700);
  rmSync(MEMORY, { force: true, recursive: true });
});
afterAll(() => {
  rmSync(MEMORY, { force: true, recursive: true });
  rmSync(tmp, { recursive: true, force: true });
});

describe('auto remembers refusals certain to repeat', () => {
  it(`the key is this boot, kernel, object and capability set`, () => {
    expect(key.version).toBe(1);
    expect(key.bootId).toBe(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
    expect(key.kernel).toBe(readFileSync('/proc/version', 'utf8').trim());
    expect(key.object).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(key.capabilities).toBe(readFileSync('/proc/self/status', 'utf8').match(/^CapEff:\s+([0-9a-f]+)$/m)![1]);
  });

  it(`the first start tries every better mode and remembers; the second skips them without loading a program and says so`, async () => {
    const first = await start('auto');
    if (EXPECT_AUTO) expect(first.mode).toBe(EXPECT_AUTO);
    expect(first.refused.every((r) => !r.remembered)).toBe(true);
    if (EXPECT_AUTO === 'fentry') {
      // Nothing refused, nothing to remember: no file is written.
      expect(first.refused).toEqual([]);
      expect(memoryText()).toBeNull();
      return;
    }
    expectFentryLoads(first, 'some');
    const st = lstatSync(MEMORY);
    expect(st.isFile()).toBe(true);
    expect(st.mode & 0o7777).toBe(0o600);
    expect(st.uid).toBe(0);
    expect(lstatSync(RUN_DIR).mode & 0o7777).toBe(0o700);
    const m = memory();
    expect({ ...m, refusals: undefined }).toEqual({ ...key, refusals: undefined });
    expect(m.refusals.map((r) => r.mode)).toEqual(first.refused.map((r) => r.mode));

    const second = await start('auto');
    expect(second.mode).toBe(first.mode);
    expectFentryLoads(second, 'none');
    // Reported exactly as the fresh refusal was, plus `remembered`.
    expect(second.refused).toEqual(first.refused.map((r) => ({ ...r, remembered: true })));
    if (EXPECT_AUTO === 'tracepoint') {
      expect(second.refused.map((r) => [r.mode, r.code, r.remembered])).toEqual([
        ['fentry', 'EPERM', true],
        ['kprobe', 'NO_KPROBES', true],
      ]);
    }
  });

  it('a remembered mode is skipped even where the kernel allows it; a forced mode still tries it for real, and what it finds replaces the memory', async () => {
    writePrivate(MEMORY, memoryFor([planted('fentry')]));
    const skipped = await start('auto');
    expectFentryLoads(skipped, 'none');
    expect(skipped.refused[0]).toMatchObject({ mode: 'fentry', code: 'EPERM', reason: planted('fentry').reason, remembered: true });
    expect(skipped.mode).toBe(EXPECT_AUTO === 'fentry' ? 'kprobe' : EXPECT_AUTO ?? skipped.mode);

    const forced = await start('fentry');
    expectFentryLoads(forced, 'some');
    const fentryNow = memory().refusals.find((r) => r.mode === 'fentry');
    if (EXPECT_AUTO === 'fentry') {
      expect(forced.mode).toBe('fentry');
      expect(fentryNow).toBeUndefined();
    } else if (EXPECT_AUTO === 'tracepoint') {
      expect(forced.error).toBe('MODE_UNAVAILABLE');
      expect(forced.refused).toEqual([expect.objectContaining({ mode: 'fentry', code: 'EPERM', remembered: false })]);
      expect(fentryNow?.reason).toBe(forced.refused[0]!.reason);
    }
  });

  it('when every mode is remembered, auto tries them for real instead of failing, and forgets the one that attached', async () => {
    writePrivate(MEMORY, memoryFor([planted('fentry'), planted('kprobe'), planted('tracepoint')]));
    const run = await start('auto');
    if (EXPECT_AUTO) expect(run.mode).toBe(EXPECT_AUTO);
    expect(run.error).toBeUndefined();
    expectFentryLoads(run, 'some');
    expect(run.refused.every((r) => !r.remembered && !r.reason.startsWith('planted'))).toBe(true);
    expect(memory().refusals.map((r) => r.mode)).not.toContain(run.mode);
  });

  it('doctor() tries every mode for real and refreshes the memory from what it found', async () => {
    writePrivate(MEMORY, memoryFor([planted('fentry'), planted('tracepoint')]));
    const r = await doctor();
    expect(r.remembered.refreshed).toBe(true);
    expect(r.remembered.problem).toBeNull();
    expect(r.remembered.file).toBe(MEMORY);
    // What is remembered is exactly the modes doctor found refused for good, as it found them.
    const refused = r.modes.filter((m) => !m.ok).map((m) => m.refusal!);
    expect(r.modes.every((m) => !m.refusal?.remembered)).toBe(true);
    expect(r.remembered.refusals).toEqual(refused.filter((x) => ['EPERM', 'NO_KPROBES', 'NO_BTF_FUNC'].includes(x.code)).map((x) => ({ ...x, remembered: true })));
    expect(memory().refusals.map((x) => x.reason)).toEqual(r.remembered.refusals.map((x) => x.reason));
    expect(memoryText()).not.toContain('planted');
    if (EXPECT_AUTO === 'tracepoint') expect(r.remembered.refusals.map((x) => x.mode)).toEqual(['fentry', 'kprobe']);
    if (EXPECT_AUTO === 'fentry') expect(r.remembered.refusals).toEqual([]);
  });
});

describe('a memory not exactly as the loader writes it is ignored, and the real attempt made', () => {
  // Each case plants a memory that, trusted, would make auto skip fentry:
  // auto must try it for real (no refusal `remembered`, and the mode this
  // kernel allows).
  const expectReal = (info: { mode: AttachMode; refused: readonly Refusal[] }) => {
    if (EXPECT_AUTO) expect(info.mode).toBe(EXPECT_AUTO);
    expect(info.refused.filter((r) => r.remembered)).toEqual([]);
  };
  it('the control: the same memory, as root writes it, is trusted', async () => {
    writePrivate(MEMORY, fentryRemembered());
    const info = await auto();
    expect(info.refused[0]).toMatchObject({ mode: 'fentry', remembered: true });
  });

  it('a symbolic link at its path is not followed, and is replaced, not written through', async () => {
    const target = `${tmp}/memory-target.json`;
    writePrivate(target, fentryRemembered());
    symlinkSync(target, MEMORY);
    expectReal(await auto());
    expect(readFileSync(target, 'utf8')).toBe(fentryRemembered());
    if (EXPECT_AUTO === 'tracepoint') expect(lstatSync(MEMORY).isFile()).toBe(true);
    rmSync(MEMORY, { force: true });
    const missing = `${tmp}/memory-missing.json`;
    symlinkSync(missing, MEMORY);
    expectReal(await auto());
    expect(existsSync(missing)).toBe(false);
  });

  it('a file owned by another user is ignored', async () => {
    writePrivate(MEMORY, fentryRemembered());
    chownSync(MEMORY, NOBODY, NOBODY);
    expectReal(await auto());
  });

  for (const mode of [0o620, 0o602, 0o666, 0o640]) {
    it(`a file with mode ${mode.toString(8)} (group or others have access) is ignored`, async () => {
      writePrivate(MEMORY, fentryRemembered());
      chmodSync(MEMORY, mode);
      expectReal(await auto());
    });
  }

  it('a file with a second hard link is ignored', async () => {
    writePrivate(MEMORY, fentryRemembered());
    linkSync(MEMORY, `${RUN_DIR}/second-link`);
    try {
      expectReal(await auto());
    } finally {
      rmSync(`${RUN_DIR}/second-link`, { force: true });
    }
  });

  const forged: Array<[string, () => string]> = [
    ['another boot id', () => memoryFor([planted('fentry')], { bootId: '00000000-0000-4000-8000-000000000000' })],
    ['another eBPF object hash', () => memoryFor([planted('fentry')], { object: `sha256:${'0'.repeat(64)}` })],
    ['another kernel', () => memoryFor([planted('fentry')], { kernel: 'Linux version 6.1.0-57-amd64' })],
    ['another capability set', () => memoryFor([planted('fentry')], { capabilities: '0000000000000000' })],
    ['another format version', () => memoryFor([planted('fentry')], { version: 2 })],
    ['a program this build does not have', () => memoryFor([{ ...planted('fentry'), program: 'cg_forged' }])],
    ['a code that is not certain to repeat (ENOMEM)', () => memoryFor([{ ...planted('fentry'), code: 'ATTACH_FAILED', errno: 'ENOMEM' }])],
    ['garbage', () => '{"version":1,"bootId":'],
    ['not JSON at all', () => '\x00\xff\x1b[2J'],
    ['a huge file (a valid memory padded past 64 KiB)', () => fentryRemembered() + ' '.repeat(1 << 20)],
  ];
  for (const [what, text] of forged) {
    it(`a forged memory with ${what} is ignored`, async () => {
      writePrivate(MEMORY, text());
      expectReal(await auto());
      // What the real attempts found replaced it (where there was something to remember).
      if (EXPECT_AUTO === 'tracepoint') expect(memory().refusals.map((r) => r.reason)).not.toContain(planted('fentry').reason);
    });
  }

  it('a FIFO at its path neither blocks auto nor is trusted', async () => {
    rmSync(MEMORY, { force: true });
    expect(spawnSync('mkfifo', ['-m', '600', MEMORY]).status).toBe(0);
    expectReal(await auto());
  });

  it(`a ${RUN_DIR} others can write, or a symbolic link in its place, is not used: auto still attaches`, async () => {
    writePrivate(MEMORY, fentryRemembered());
    chmodSync(RUN_DIR, 0o777);
    try {
      expectReal(await auto());
      expect(memoryText()).toBe(fentryRemembered()); // not written either
    } finally {
      chmodSync(RUN_DIR, 0o700);
    }
    const real = `${tmp}/run-dir`;
    mkdirSync(real, { mode: 0o700 });
    writePrivate(`${real}/refused-modes.json`, fentryRemembered());
    rmSync(RUN_DIR, { recursive: true });
    symlinkSync(real, RUN_DIR);
    try {
      expectReal(await auto());
      expect(readFileSync(`${real}/refused-modes.json`, 'utf8')).toBe(fentryRemembered());
    } finally {
      rmSync(RUN_DIR);
      mkdirSync(RUN_DIR, { mode: 0o700 });
    }
  });
});

describe('another user cannot create, delete or replace the memory', () => {
  for (const userns of [false, true]) {
    it(`as uid ${NOBODY}${userns ? ' inside unshare -Urm' : ''}: every write is refused, and the memory root wrote still holds`, async () => {
      writePrivate(MEMORY, fentryRemembered());
      const before = readFileSync(MEMORY);
      const r = asNobody(
        [
          `rm -f ${MEMORY}`,
          `mv ${MEMORY} ${MEMORY}.x`,
          `ln -sf /etc/passwd ${MEMORY}`,
          `echo '{}' > ${MEMORY}`,
          `touch ${RUN_DIR}/.refused-modes.json.1.tmp`,
          `mv ${RUN_DIR} ${RUN_DIR}.x`,
        ].join('; '),
        userns,
      );
      for (const tool of ['rm', 'mv', 'ln', 'touch']) expect(r.stderr).toMatch(new RegExp(`${tool}: .*(Permission denied|Operation not permitted)`));
      expect(r.stderr).toMatch(/Permission denied/);
      expect(readFileSync(MEMORY)).toEqual(before);
      expect(lstatSync(MEMORY).uid).toBe(0);
      expect(existsSync(`${RUN_DIR}.x`)).toBe(false);
      if (userns) {
        // In a mount namespace of their own they may mount over the
        // directory and write a memory there: theirs, not the host's.
        const own = asNobody(`mount -t tmpfs none ${RUN_DIR} && echo '{}' > ${MEMORY} && cat ${MEMORY}`, true);
        expect(own.status, own.stderr).toBe(0);
        expect(own.stdout.trim()).toBe('{}');
        expect(readFileSync(MEMORY)).toEqual(before);
      }
      const info = await auto();
      expect(info.refused[0]).toMatchObject({ mode: 'fentry', reason: planted('fentry').reason, remembered: true });
    });
  }
});

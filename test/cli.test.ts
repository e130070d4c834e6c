/**
 * The `chroot-guard` CLI as users run it: the built `dist/cli.js`, real
 * kernel, real chroot calls, real signals.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callsLost, type LossCounts } from '../ts/batch.js';
import { makeBusyboxRoot, runStep, type BusyboxRoot } from '../ts/demo.js';
import { ndjson, sleep, SLOWDOWN, TEST_MODE, tryChroot } from './helpers.js';
import { LSM, lsmTitle } from './lsm.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

/**
 * In the forced-mode reruns (`cargo xtask test` runs this file again with
 * `CG_TEST_MODE` kprobe and tracepoint in the VM) only what the watch mode
 * can change runs again: usage errors and the guard's CLI run in `auto`.
 */
const RERUN = TEST_MODE !== 'auto';
const inAuto = (title: string) => (RERUN ? `${title} (in auto only: the watch mode does not change it)` : title);
let root: BusyboxRoot;
let rootPath: string;
beforeAll(() => {
  root = makeBusyboxRoot();
  rootPath = realpathSync(root.dir);
});
afterAll(() => root.remove());

function cli(args: string[], prefix: string[] = []) {
  const argv = [...prefix, process.execPath, CLI, ...args];
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 60_000 });
}

/** Starts `chroot-guard watch ARGS` and resolves once it says it is watching. */
function startWatch(args: string[]) {
  return startCli(['watch', '--mode', TEST_MODE, ...args], 'watching chroot(2)');
}

/** Starts `chroot-guard ARGS` and resolves `ready` once stderr says `readyText`; `raw()` is stdout's bytes. */
function startCli(args: string[], readyText: string) {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => chunks.push(d));
  const ready = new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes(readyText)) resolve();
    });
    child.on('exit', (code) => reject(new Error(`${args[0]} exited early with ${code}: ${stderr}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const raw = () => Buffer.concat(chunks);
  return { child, ready, exited, raw, out: () => raw().toString(), err: () => stderr };
}

describe('chroot-guard watch', () => {
  it('--json prints one object per call with the documented keys, and Ctrl-C detaches cleanly', async () => {
    const w = startWatch(['--json']);
    await w.ready;
    const ok = await runStep(['chroot', rootPath, '/bin/true']);
    const missing = await runStep(['chroot', '/nonexistent-cli-test', '/bin/true']);
    const deadline = Date.now() + 5000;
    while (!(w.out().includes(`"pid":${ok.pid},`) && w.out().includes(`"pid":${missing.pid},`)) && Date.now() < deadline) await sleep(20);
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(0);
    const records = ndjson(w.out());
    const attach = records[0]!;
    expect(attach).toMatchObject({ type: 'attach', refused: expect.any(Array) });
    // Without --compat, tracepoint mode names 32-bit compat calls as unseen.
    expect((attach.blindSpots as Array<{ code: string }>).map((b) => b.code)).toEqual(attach.mode === 'tracepoint' ? ['COMPAT_OFF'] : []);
    const lines = records.filter((r) => r.type === 'chroot');
    const byPid = (pid: number) => lines.filter((l) => l.pid === pid);
    expect(byPid(ok.pid)).toHaveLength(1);
    expect(byPid(missing.pid)).toHaveLength(1);
    const e = byPid(ok.pid)[0]!;
    expect(e).toMatchObject({ comm: 'chroot', path: rootPath, resolvedPath: rootPath, ret: 0, errno: null });
    expect(typeof e.ts).toBe('number');
    expect(byPid(missing.pid)[0]).toMatchObject({ ret: -2, errno: 'ENOENT', resolvedPath: null });
    expect(w.err()).toMatch(/detached: \d+ events?/);
  });

  it('--json accounts for every call of a storm from stdout alone: chroot records plus the lost records\' counts', async () => {
    const N = 20_000;
    // Waits for a line, then chroots N times into its cwd as fast as it can.
    const storm = spawn('perl', ['-e', 'chdir($ARGV[0]) or die; <STDIN>; chroot(".") for 1..$ARGV[1]; print "done\\n";', rootPath, String(N)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const finished = new Promise((r) => storm.on('close', r));
    // The smallest ring buffer, so a busy host drops some: each drop must show up in the stream.
    const w = startWatch(['--json', '--pid', String(storm.pid), '--ring-buffer-bytes', '4096']);
    await w.ready;
    storm.stdin.end('go\n');
    await finished;
    const accounted = () => {
      let n = 0;
      for (const r of ndjson(w.out().slice(0, w.out().lastIndexOf('\n') + 1))) {
        if (r.type === 'chroot') n++;
        if (r.type === 'lost') n += callsLost(r as unknown as LossCounts);
      }
      return n;
    };
    const deadline = Date.now() + 30_000;
    while (accounted() < N && Date.now() < deadline) await sleep(100);
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(0);
    const records = ndjson(w.out());
    const delivered = records.filter((r) => r.type === 'chroot').length;
    const lost = records.filter((r) => r.type === 'lost').reduce((n, r) => n + callsLost(r as unknown as LossCounts), 0);
    expect(delivered + lost).toBe(N);
    expect(records.every((r) => r.type !== 'chroot' || r.pid === storm.pid)).toBe(true);
    const last = records.filter((r) => r.type === 'lost').pop();
    // The last record's totals are the sum of every record's counts.
    if (last) expect(callsLost(last.total as LossCounts)).toBe(lost);
  }, 90_000);

  // A paused stdout fills the CLI's stdout buffer, which holds the
  // session's batches back (onStdoutPressure), so the storm's records wait
  // in the ring buffer when the signal comes.
  /** N chroot calls made while `watch --json` (ring buffer `ringBytes`) has its stdout paused; resolves once they are made. */
  const stormBehindPausedStdout = async (N: number, ringBytes: number) => {
    const storm = spawn('perl', ['-e', 'chdir($ARGV[0]) or die; <STDIN>; chroot(".") for 1..$ARGV[1]; print "done\\n";', rootPath, String(N)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const finished = new Promise((r) => storm.on('close', r));
    const w = startWatch(['--json', '--pid', String(storm.pid), '--ring-buffer-bytes', String(ringBytes)]);
    await w.ready;
    w.child.stdout.pause();
    storm.stdin.end('go\n');
    await finished;
    return { storm, w };
  };

  const backlogAtSignal = async (signals: number) => {
    const N = 20_000;
    const { storm, w } = await stormBehindPausedStdout(N, 16 << 20);
    for (let i = 0; i < signals; i++) {
      if (i > 0) await sleep(300);
      w.child.kill('SIGINT');
    }
    await sleep(300);
    w.child.stdout.resume();
    expect(await w.exited).toBe(0);
    const records = ndjson(w.out());
    return { N, w, delivered: records.filter((r) => r.type === 'chroot' && r.pid === storm.pid).length, lost: records.filter((r) => r.type === 'lost') };
  };

  it.skipIf(RERUN)(inAuto('Ctrl-C first prints every call made before it: what the ring buffer held behind a stalled stdout comes out before "detached"'), async () => {
    const { N, w, delivered, lost } = await backlogAtSignal(1);
    expect(lost).toEqual([]);
    expect(delivered).toBe(N);
    expect(w.err()).toContain(`detached: ${N} events\n`);
  }, 90_000);

  it.skipIf(RERUN)(inAuto('a second Ctrl-C stops at once and says the ring buffer\'s rest was not printed'), async () => {
    const { w, delivered } = await backlogAtSignal(2);
    expect(w.err()).toContain(`detached at the second signal: ${delivered} events; the events still in the ring buffer were not written`);
  }, 90_000);

  it.skipIf(RERUN)(inAuto('a stalled stdout keeps the backlog in the ring buffer, not in memory: the overflow is reported lost once the reader catches up, and every call is accounted for'), async () => {
    const N = 200_000;
    const { storm, w } = await stormBehindPausedStdout(N, 1 << 20);
    await sleep(300);
    // Held, the CLI peaked at 82 MiB on the host; without the hold it took
    // every record it could and buffered their JSON: 449 MiB (73,405
    // calls taken, the rest lost).
    const peakKiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${w.child.pid}/status`, 'utf8'))![1]);
    expect(peakKiB).toBeLessThan(200 * 1024);
    w.child.stdout.resume();
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(0);
    const records = ndjson(w.out());
    const delivered = records.filter((r) => r.type === 'chroot' && r.pid === storm.pid).length;
    const lost = records.filter((r) => r.type === 'lost').reduce((n, r) => n + callsLost(r as unknown as LossCounts), 0);
    expect(lost).toBeGreaterThan(0);
    expect(delivered + lost).toBe(N);
  }, 120_000);

  it('prints a readable table, filtered by --pid', async () => {
    const idle = spawn('sh', ['-c', `read go; exec chroot ${rootPath} /bin/true`], { stdio: ['pipe', 'ignore', 'ignore'] });
    const w = startWatch(['--pid', String(idle.pid)]);
    await w.ready;
    idle.stdin.end('go\n');
    const other = await runStep(['chroot', rootPath, '/bin/true']);
    const deadline = Date.now() + 8000;
    while (!w.out().includes(` ${idle.pid} `) && Date.now() < deadline) await sleep(20);
    w.child.kill('SIGTERM');
    expect(await w.exited).toBe(0);
    const [header, ...rows] = w.out().trimEnd().split('\n');
    expect(header).toMatch(/^TIME\s+PID\s+COMM\s+UID\s+RESULT\s+PATH → RESOLVED$/);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatch(new RegExp(`^\\d\\d:\\d\\d:\\d\\d\\.\\d{3}\\s+${idle.pid}\\s+chroot\\s+0\\s+ok\\s+${rootPath} → ${rootPath} \\[cwd-out\\]$`));
    expect(w.out()).not.toContain(` ${other.pid} `);
  });

  it.skipIf(RERUN)(inAuto('says what it needs and exits 4 without privileges'), () => {
    const r = cli(['watch'], ['setpriv', '--bounding-set=-all', '--inh-caps=-all']);
    expect(r.status).toBe(4);
    expect(r.stderr).toContain('missing privileges');
    expect(r.stderr).toContain('run as root');
    expect(r.stdout).toBe('');
  });

  it.skipIf(RERUN)(inAuto('started as the package\'s bin (/bin/sh, then Node.js), Node.js runs without NODE_EXTRA_CA_CERTS, which would make it parse every CA certificate first'), () => {
    // Node.js warns at start when the variable names a file it cannot
    // load: how the test sees whether the variable reached it.
    const env = { ...process.env, NODE_EXTRA_CA_CERTS: join(tmpdir(), 'chroot-guard-no-such-ca.pem') };
    const direct = spawnSync(process.execPath, [CLI, '--version'], { env, encoding: 'utf8', timeout: 60_000 });
    expect(direct.stderr).toContain('Ignoring extra certs');
    const bin = spawnSync(CLI, ['--version'], { env, encoding: 'utf8', timeout: 60_000 });
    expect(bin.status).toBe(0);
    expect(bin.stdout).toBe(direct.stdout);
    expect(bin.stderr).toBe('');
    // Only the bin starts so: the chunks it imports are plain modules.
    const chunks = readdirSync(dirname(CLI)).filter((f) => /^cli-.*\.js$/.test(f));
    expect(chunks.length).toBeGreaterThan(0);
    for (const f of chunks) expect(readFileSync(join(dirname(CLI), f), 'utf8').startsWith('#!'), f).toBe(false);
  });

  it.skipIf(RERUN)(inAuto('loads only what the command uses: watch no RxJS, no policy stack and no prom-client, check and agent --check-config no RxJS'), async () => {
    // Every CommonJS package the process loaded, written at exit by a
    // preloaded script (ESM imports of CommonJS packages go through the
    // CommonJS loader's cache too).
    const dir = mkdtempSync(join(tmpdir(), 'cg-loaded-'));
    const hook = join(dir, 'loaded.cjs');
    writeFileSync(hook, `process.on('exit', () => process.stderr.write('LOADED ' + JSON.stringify([...new Set(Object.keys(require.cache).filter((k) => k.includes('/node_modules/')).map((k) => k.split('/node_modules/').pop().split('/')[0]))].sort()) + '\\n'));\n`);
    const loaded = (stderr: string) => JSON.parse(/LOADED (.*)/.exec(stderr)![1]!) as string[];
    try {
      const check = spawnSync(process.execPath, ['--require', hook, CLI, 'check', fileURLToPath(new URL('../examples/build-farm.yaml', import.meta.url))], { encoding: 'utf8', timeout: 60_000 });
      expect(check.status).toBe(0);
      expect(loaded(check.stderr)).toEqual(expect.arrayContaining(['ajv', 'yaml']));
      expect(loaded(check.stderr)).not.toContain('rxjs');
      // The agent's config check: the policy stack's parser, not its metrics or output libraries.
      const agentCheck = spawnSync(process.execPath, ['--require', hook, CLI, 'agent', '--check-config', '--config', fileURLToPath(new URL('../examples/agent.yaml', import.meta.url))], { encoding: 'utf8', timeout: 60_000 });
      expect(agentCheck.status).toBe(0);
      expect(loaded(agentCheck.stderr)).toEqual(expect.arrayContaining(['ajv', 'yaml']));
      for (const p of ['rxjs', 'prom-client', 'rotating-file-stream']) expect(loaded(agentCheck.stderr)).not.toContain(p);
      const child = spawn(process.execPath, ['--require', hook, CLI, 'watch', '--json', '--mode', TEST_MODE], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      let stopped = false;
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (!stopped && stderr.includes('watching chroot(2)')) stopped = child.kill('SIGINT');
      });
      expect(await new Promise((resolve) => child.on('exit', resolve))).toBe(0);
      expect(loaded(stderr)).toEqual(['commander']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(RERUN)(inAuto('rejects bad usage with exit 2'), () => {
    for (const args of [['watch', '--pid', 'abc'], ['watch', '--mode', 'uprobe'], ['watch', '--bogus'], ['nonsense']]) {
      const r = cli(args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr.length).toBeGreaterThan(0);
    }
    const r = cli(['watch', '--comm', 'a-name-longer-than-15']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('comm must be 1 to 15 bytes');
  });

  it.skipIf(RERUN)(inAuto('documents options and exit codes in --help'), () => {
    const r = cli(['watch', '--help']);
    expect(r.status).toBe(0);
    for (const s of ['--json', '--mode', '--pid', '--uid', '--comm', 'Exit codes', 'missing privileges']) expect(r.stdout).toContain(s);
  });
});

/** `s` as a literal in a RegExp. */
const literal = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('table output escapes what callers control (real chroot calls)', () => {
  // A directory name with a newline, an SGR escape, U+009B (CSI as a C1
  // control, valid UTF-8), a backslash and a byte that is not UTF-8.
  const NAME = Buffer.concat([Buffer.from('a\nb\x1b[31mc\u009bd\\e'), Buffer.from([0xff])]);
  const NAME_SHOWN = 'a\\x0ab\\x1b[31mc\\xc2\\x9bd\\\\e\\xff';
  // A comm (prctl(PR_SET_NAME), 15 bytes at most): clear-screen, newline, U+009B, DEL.
  const COMM = Buffer.from('c\x1b[2J\n\u009b\x7fz');
  const COMM_SHOWN = 'c\\x1b[2J\\x0a\\xc2\\x9b\\x7fz';
  const MISSING = Buffer.from('/nonexistent-\n\x1b[31m\u009b-x');
  const MISSING_SHOWN = '/nonexistent-\\x0a\\x1b[31m\\xc2\\x9b-x';
  // Names itself, waits for a line on stdin, then chroots into MISSING (ENOENT) and the directory.
  const PERL = `
    my ($comm, $missing, $dir) = map { pack("H*", $_) } @ARGV;
    syscall(157, 15, $comm, 0, 0, 0) == 0 or die "prctl: $!";  # SYS_prctl (x86-64), PR_SET_NAME
    my $go = <STDIN>;
    chroot($missing) and die "chroot of a missing path worked";
    chroot($dir) or die "chroot: $!";`;
  let base: string;
  let dir: Buffer;
  let dirShown: string;
  beforeAll(() => {
    base = realpathSync(mkdtempSync(join(tmpdir(), 'cg-escape-')));
    dir = Buffer.concat([Buffer.from(`${base}/`), NAME]);
    dirShown = `${base}/${NAME_SHOWN}`;
    mkdirSync(dir);
  });
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  function caller() {
    const child = spawn('perl', ['-e', PERL, COMM.toString('hex'), MISSING.toString('hex'), dir.toString('hex')], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<void>((resolve, reject) => child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`perl exited with ${code}: ${stderr}`)))));
    return { pid: child.pid!, go: () => child.stdin.end('go\n'), done };
  }

  /** Valid UTF-8, no raw C0 control but each line's newline, no DEL, no C1 control. */
  function expectTerminalSafe(out: Buffer) {
    const text = out.toString('utf8');
    expect(Buffer.from(text, 'utf8').equals(out)).toBe(true);
    expect(text).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f]/);
    expect(text.endsWith('\n')).toBe(true);
  }

  it('watch: one line per call, comm, path and resolved path written as \\xNN escapes', async () => {
    const c = caller();
    const w = startWatch(['--pid', String(c.pid)]);
    await w.ready;
    c.go();
    await c.done;
    const deadline = Date.now() + 8000;
    while (w.out().split('\n').length < 4 && Date.now() < deadline) await sleep(20);
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(0);
    expectTerminalSafe(w.raw());
    const [header, ...rows] = w.out().trimEnd().split('\n');
    expect(header).toMatch(/^TIME\s+PID/);
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatch(new RegExp(`^\\S+ +${c.pid} +${literal(COMM_SHOWN)} +0 +ENOENT +${literal(MISSING_SHOWN)}$`));
    expect(rows[1]).toMatch(new RegExp(`^\\S+ +${c.pid} +${literal(COMM_SHOWN)} +0 +ok +${literal(dirShown)} → ${literal(dirShown)} \\[cwd-out\\]$`));
  });

  it('watch --json: the same calls, exact after JSON.parse, with C1 controls escaped as \\u00XX too', async () => {
    const c = caller();
    const w = startWatch(['--json', '--pid', String(c.pid)]);
    await w.ready;
    c.go();
    await c.done;
    const deadline = Date.now() + 8000;
    while (w.out().split('\n').length < 4 && Date.now() < deadline) await sleep(20);
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(0);
    expectTerminalSafe(w.raw());
    expect(w.out()).toContain('\\u009b');
    const [missing, ok] = ndjson(w.out()).filter((r) => r.type === 'chroot') as unknown as Array<{ comm: string; path: string; pathBase64: string; errno: string | null }>;
    expect(missing).toMatchObject({ comm: COMM.toString(), path: MISSING.toString(), errno: 'ENOENT' });
    expect(Buffer.from(ok!.pathBase64, 'base64').equals(dir)).toBe(true);
    expect(ok).toMatchObject({ comm: COMM.toString(), errno: null });
  });

  it.skipIf(RERUN)(inAuto('enforce --audit (table): the decision line escapes comm and resolved path the same way'), async () => {
    const policy = join(base, 'audit.json');
    writeFileSync(policy, JSON.stringify({ mode: 'audit', rules: [{ id: 'escapes', action: 'audit', match: { subtree: base } }] }));
    // The BPF LSM where it runs (VM); elsewhere decisions computed from the watch probes.
    const e = startCli(['enforce', '--audit', '--policy', policy], 'Ctrl-C to stop');
    await e.ready;
    const c = caller();
    c.go();
    await c.done;
    const deadline = Date.now() + 8000;
    while (!e.out().includes(` ${c.pid} `) && Date.now() < deadline) await sleep(20);
    e.child.kill('SIGINT');
    expect(await e.exited).toBe(0);
    expectTerminalSafe(e.raw());
    // Only the call that reached the LSM hook (the missing path never did).
    const rows = e.out().split('\n').filter((l) => l.includes(` ${c.pid} `));
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatch(new RegExp(`^\\S+ +${c.pid} +${literal(COMM_SHOWN)} +0 +audit +escapes +${literal(dirShown)} \\[cwd-out\\]( +\\[from watch\\])?$`));
  });
});

describe('a reader that leaves (EPIPE)', () => {
  // `chroot-guard ps | head -1`: stdout ends under the command; every
  // command must take that as the end of its output, not die of an
  // unhandled 'error' event with a stack trace.
  it.skipIf(RERUN)(inAuto('ends ps and check with exit 0 and nothing on stderr'), async () => {
    // Something for ps to list: a shell chrooted into the busybox root.
    const held = spawn('busybox', ['chroot', rootPath, '/bin/sh', '-c', 'echo ready; read x'], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => held.stdout.once('data', () => resolve()));
      const policy = join(rootPath, 'tmp', 'epipe.yaml');
      writeFileSync(policy, 'mode: audit\nrules: []\n');
      for (const args of [['ps'], ['ps', '--json'], ['check', '--json', policy]]) {
        const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        // The read end closed before the command writes anything.
        child.stdout.destroy();
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
        expect({ args, code, stderr }).toEqual({ args, code: 0, stderr: '' });
      }
    } finally {
      held.kill('SIGKILL');
    }
  });
});

describe('chroot-guard demo', () => {
  it('sees every call of the built-in workload with the right pid, path and result', () => {
    const r = cli(['demo', '--mode', TEST_MODE, '--json']);
    expect(r.stderr).not.toContain('NOT SEEN');
    expect(r.status).toBe(0);
    expect(r.stderr.match(/✓/g)).toHaveLength(6);
    const events = ndjson(r.stdout).filter((x) => x.type === 'chroot') as unknown as Array<{ errno: string | null }>;
    expect(events.map((e) => e.errno)).toEqual(expect.arrayContaining([null, 'ENOENT', 'ENOTDIR', 'EPERM']));
  });
});

describe.skipIf(RERUN)(inAuto('chroot-guard enforce when its stdout reader goes away (`enforce | head -1`)'), () => {
  let dir: string;
  let policy: string;
  beforeAll(() => {
    dir = realpathSync(mkdtempSync(join(tmpdir(), 'cg-epipe-')));
    mkdirSync(join(dir, 'deny'));
    policy = join(dir, 'deny.json');
    writeFileSync(policy, JSON.stringify({ mode: 'enforce', rules: [{ id: 'no-deny', action: 'deny', match: { subtree: join(dir, 'deny') } }] }));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // Output is written per batch, so the closed pipe is found on the first
  // decision after the reader left.
  const closeStdoutThenCall = async (e: ReturnType<typeof startCli>, until: () => boolean) => {
    await e.ready;
    e.child.stdout.destroy();
    const deadline = Date.now() + 10_000 * SLOWDOWN;
    let calls = 0;
    while (!until() && Date.now() < deadline) {
      tryChroot(join(dir, 'deny'));
      calls++;
      await sleep(100);
    }
    return calls;
  };

  it.skipIf(!LSM)(lsmTitle('the guard outlives its log: it says so on stderr and keeps denying until SIGINT'), async () => {
    const e = startCli(['enforce', '--json', '--policy', policy], 'Ctrl-C to stop');
    await closeStdoutThenCall(e, () => e.err().includes('stdout ended'));
    expect(e.err()).toMatch(/stdout ended \(EPIPE\): decisions are no longer printed; still enforcing until SIGINT\/SIGTERM/);
    expect(e.child.exitCode).toBeNull();
    expect(tryChroot(join(dir, 'deny')).out).toBe('EPERM outside');
    e.child.kill('SIGINT');
    expect(await e.exited).toBe(0);
  });

  it.skipIf(LSM)('where the BPF LSM cannot run, audit from the watch probes (it blocks nothing) ends with exit 0 once stdout is gone', async () => {
    const e = startCli(['enforce', '--audit', '--json', '--policy', policy], 'Ctrl-C to stop');
    let exited = false;
    void e.exited.then(() => (exited = true));
    await closeStdoutThenCall(e, () => exited);
    expect(await e.exited).toBe(0);
  });
});

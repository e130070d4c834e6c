/**
 * `chroot-guard agent`: the built CLI as a host runs it. A real Prometheus
 * (Debian's `prometheus`, which `cargo xtask setup` installs) scrapes it
 * while real chroot(2) calls are made, and its query API must give back
 * exactly the calls made; a storm into a small rotated file must lose no
 * record; bad configs are refused with their positions; /healthz follows
 * the session. Host only (test/QUARANTINE.md).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CALLS_LOST, callsLost, type LossCounts } from '../ts/batch.js';
import { CLI, compileC, floodBehindStalledStdout, ndjson, sleep, SLOWDOWN, TEST_MODE, type StreamRecord } from './helpers.js';
import { answer, freePort, get, samples } from './http.js';

const PROMETHEUS = '/usr/bin/prometheus';
/** The remedy for a shared output directory, as the agent words it. */
const FIX = 'put the output in a directory only root can write, e.g. install -d -m 0700 /var/log/chroot-guard';
/** The mode auto must pick here, when the run says (cargo xtask test does). */
const EXPECTED_MODE = TEST_MODE === 'auto' ? process.env.CG_EXPECT_AUTO_MODE : TEST_MODE;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'cg-agent-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A comm of our own (at most 15 bytes), so that the agent's filter passes only this test's calls. */
const uniqueComm = (tag: string) => `cg-${tag}-${process.pid.toString(36).slice(-4)}${Math.floor(Math.random() * 36 ** 2).toString(36)}`.slice(0, 15);

/**
 * chroot(2) calls under `comm`, each to a path of `paths` (as root: `/`
 * succeeds and changes nothing; a missing path gives ENOENT, a file
 * ENOTDIR). Returns each call's result (`ok` or the errno name).
 */
function chrootCalls(comm: string, paths: readonly string[]): string[] {
  const script = `
import ctypes, errno, json, os, sys
ctypes.CDLL(None, use_errno=True).prctl(15, sys.argv[1].encode(), 0, 0, 0)
out = []
for p in sys.argv[2:]:
    try:
        os.chroot(p); out.append('ok')
    except OSError as e:
        out.append(errno.errorcode[e.errno])
print(json.dumps(out))`;
  return JSON.parse(execFileSync('python3', ['-c', script, comm, ...paths], { encoding: 'utf8' })) as string[];
}

/** A running agent. */
interface Agent {
  readonly child: ChildProcess;
  /** Its stderr so far. */
  stderr(): string;
  /** Its stdout so far. */
  stdout(): string;
  /** `signal` (SIGTERM by default), then its exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Writes `yaml` as a config file and starts the agent with it; resolves once it says it runs. */
async function startAgent(name: string, yaml: string): Promise<Agent> {
  const config = join(dir, `${name}.yaml`);
  writeFileSync(config, yaml);
  const child = spawn(process.execPath, [CLI, 'agent', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  while (!stderr.includes('agent running')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not start (exit ${child.exitCode}):\n${stderr}`);
    await sleep(50);
  }
  return {
    child,
    stderr: () => stderr,
    stdout: () => stdout,
    stop: async (signal = 'SIGTERM') => {
      child.kill(signal);
      return exited;
    },
  };
}

/** Counts of each result in `results`. */
const tally = (results: readonly string[]) => results.reduce<Record<string, number>>((t, r) => ({ ...t, [r]: (t[r] ?? 0) + 1 }), {});

describe('agent scraped by a real Prometheus', () => {
  let prometheus: ChildProcess | undefined;
  let agent: Agent | undefined;
  afterAll(async () => {
    prometheus?.kill('SIGTERM');
    await agent?.stop();
  });

  it('Prometheus reads back exactly the chroot calls made, ok and failed apart, and the attach mode', async () => {
    // Missing, it fails rather than skips: `cargo xtask setup` installs it.
    if (!existsSync(PROMETHEUS)) throw new Error(`${PROMETHEUS} is missing: apt-get install prometheus (cargo xtask setup does)`);
    const metricsPort = await freePort();
    const promPort = await freePort();
    const comm = uniqueComm('prom');
    const out = join(dir, 'prom.ndjson');
    agent = await startAgent(
      'prom',
      `watch:\n  mode: ${TEST_MODE}\n  filters: { comm: ${comm} }\noutput:\n  path: ${out}\nmetrics:\n  listen: "127.0.0.1:${metricsPort}"\n`,
    );
    const promDir = join(dir, 'prometheus');
    writeFileSync(
      join(dir, 'prometheus.yml'),
      `global:\n  scrape_interval: 500ms\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: chroot-guard\n    static_configs:\n      - targets: ['127.0.0.1:${metricsPort}']\n`,
    );
    let promLog = '';
    prometheus = spawn(PROMETHEUS, [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${promDir}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    prometheus.stderr!.on('data', (d: Buffer) => (promLog += d.toString()));
    const query = async (q: string) => {
      const r = await get(promPort, `/api/v1/query?query=${encodeURIComponent(q)}`);
      if (!('status' in r) || r.status !== 200) return null;
      return (JSON.parse(r.body) as { data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } }).data.result;
    };
    // Ready, and the agent scraped (up == 1) before any call is made.
    const until = async <T>(what: string, f: () => Promise<T | undefined>, ms = 30_000): Promise<T> => {
      const deadline = Date.now() + ms;
      for (;;) {
        const v = await f();
        if (v !== undefined) return v;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; Prometheus log:\n${promLog}\nagent:\n${agent?.stderr()}`);
        await sleep(250);
      }
    };
    await until('Prometheus to scrape the agent', async () => ((await query('up{job="chroot-guard"}'))?.[0]?.value[1] === '1' ? true : undefined));

    const paths = [...Array<string>(37).fill('/'), ...Array<string>(5).fill('/nonexistent-cg-agent'), ...Array<string>(3).fill('/etc/passwd')];
    const results = chrootCalls(comm, paths);
    const made = tally(results);
    expect(made).toEqual({ ok: 37, ENOENT: 5, ENOTDIR: 3 });

    // Prometheus's view, until it equals the calls made (a count above them
    // would never come down: the test would time out and fail).
    let seen: Record<string, number> = {};
    await until(`chroot_guard_chroot_calls_total to reach ${JSON.stringify(made)}`, async () => {
      const r = await query('chroot_guard_chroot_calls_total{job="chroot-guard"}');
      seen = Object.fromEntries((r ?? []).map((s) => [s.metric.result!, Number(s.value[1])]));
      return JSON.stringify(Object.entries(seen).sort()) === JSON.stringify(Object.entries(made).sort()) ? true : undefined;
    });
    const delivered = await query('chroot_guard_events_delivered_total{job="chroot-guard"}');
    expect(Number(delivered?.[0]?.value[1])).toBe(results.length);
    const lost = await query('sum(chroot_guard_lost_total{job="chroot-guard"})');
    expect(Number(lost?.[0]?.value[1])).toBe(0);
    const attached = await query('chroot_guard_attach_info{job="chroot-guard"} == 1');
    expect(attached?.map((s) => s.metric.mode)).toHaveLength(1);
    const mode = attached![0]!.metric.mode;
    if (EXPECTED_MODE) expect(mode).toBe(EXPECTED_MODE);
    // Process metrics are there too.
    expect(Number((await query('process_resident_memory_bytes{job="chroot-guard"}'))?.[0]?.value[1])).toBeGreaterThan(0);
    console.log(`Prometheus: chroot_guard_chroot_calls_total ${JSON.stringify(seen)}, delivered ${delivered?.[0]?.value[1]}; calls made ${JSON.stringify(made)}; attach_info mode ${mode}`);

    expect(await agent.stop()).toBe(0);
    agent = undefined;
    // The stream says the same: its attach record's mode, and one chroot
    // record per call, with its result.
    const records = ndjson(readFileSync(out, 'utf8'));
    expect(records[0]).toMatchObject({ type: 'attach', mode });
    const chroots = records.filter((r) => r.type === 'chroot');
    expect(tally(chroots.map((r) => (r.errno as string | null) ?? 'ok'))).toEqual(made);
  });
});

describe('agent /metrics and /healthz', () => {
  it('/healthz is 200 while attached, refused once stopped; run counts come from the kernel while bpf_stats_enabled is 1', async () => {
    const port = await freePort();
    const comm = uniqueComm('hz');
    const agent = await startAgent('healthz', `watch: { mode: ${TEST_MODE}, filters: { comm: ${comm} } }\noutput: { path: ${join(dir, 'healthz.ndjson')} }\nmetrics: { listen: "127.0.0.1:${port}" }\n`);
    const sysctl = '/proc/sys/kernel/bpf_stats_enabled';
    const before = readFileSync(sysctl, 'utf8').trim();
    try {
      expect(await get(port, '/healthz')).toEqual({ status: 200, body: 'ok\n' });
      expect(await get(port, '/nothing')).toMatchObject({ status: 404 });
      // The kernel counts runs only while the sysctl is 1: on for a moment,
      // then as it was.
      const n = 25;
      const first = samples(((await get(port, '/metrics')) as { body: string }).body, 'chroot_guard_bpf_program_runs_total');
      expect(first.size).toBeGreaterThan(0);
      writeFileSync(sysctl, '1');
      chrootCalls(comm, Array<string>(n).fill('/'));
      const text = ((await get(port, '/metrics')) as { body: string }).body;
      writeFileSync(sysctl, before);
      expect(samples(text, 'chroot_guard_bpf_stats_enabled').get('')).toBe(1);
      const runs = samples(text, 'chroot_guard_bpf_program_runs_total');
      const seconds = samples(text, 'chroot_guard_bpf_program_run_seconds_total');
      expect([...runs.keys()]).toEqual([...first.keys()]);
      // Every program of the mode runs once per call (calls of other
      // processes on the host count too: at least n).
      for (const [labels, count] of runs) {
        expect(count - first.get(labels)!, labels).toBeGreaterThanOrEqual(n);
        expect(seconds.get(labels), labels).toBeGreaterThan(0);
      }
      // The events reach the agent after the calls return: the reader
      // thread hands them over in batches, so the count is awaited.
      let calls = samples(text, 'chroot_guard_chroot_calls_total').get('{result="ok"}');
      for (const deadline = Date.now() + 10_000 * SLOWDOWN; calls !== n && Date.now() < deadline; ) {
        await sleep(50);
        calls = samples(((await get(port, '/metrics')) as { body: string }).body, 'chroot_guard_chroot_calls_total').get('{result="ok"}');
      }
      expect(calls).toBe(n);
    } finally {
      writeFileSync(sysctl, before);
      expect(await agent.stop()).toBe(0);
    }
    expect(await get(port, '/healthz')).toEqual({ error: 'ECONNREFUSED' });
    expect(agent.stderr()).toContain(`detached: 25 events written`);
  });
});

describe('agent output to stdout', () => {
  it('writes the watch --json stream to stdout by default; SIGINT stops it with exit 0 and the stream complete', async () => {
    const comm = uniqueComm('out');
    const agent = await startAgent('stdout', `watch: { mode: ${TEST_MODE}, filters: { comm: ${comm} } }\n`);
    const results = chrootCalls(comm, ['/', '/nonexistent-cg-agent', '/']);
    const deadline = Date.now() + 10_000;
    while (agent.stdout().split('\n').filter((l) => l.includes('"type":"chroot"')).length < results.length && Date.now() < deadline) await sleep(50);
    expect(await agent.stop('SIGINT')).toBe(0);
    const records = ndjson(agent.stdout());
    expect(records.map((r) => r.type)).toEqual(['attach', 'chroot', 'chroot', 'chroot']);
    expect(records.slice(1).map((r) => [r.comm, (r.errno as string | null) ?? 'ok'])).toEqual(results.map((x) => [comm, x]));
    expect(agent.stderr()).toContain('detached: 3 events written');
  });
});

describe('agent output rotation', () => {
  it('a storm into a small rotated file loses nothing: records across the files = delivered events, + lost = calls made', async () => {
    const comm = uniqueComm('rot');
    const loop = join(dir, comm);
    compileC('bench/workload/chroot_loop.c', loop);
    const port = await freePort();
    const out = join(dir, 'rot', 'events.ndjson');
    const maxBytes = 64 * 1024;
    // A small ring buffer: the storm may overrun it, and then what was lost
    // must be accounted for too (in the stream and in the metrics alike).
    const agent = await startAgent(
      'rot',
      `watch: { mode: ${TEST_MODE}, ringBufferBytes: 65536, filters: { comm: ${comm} } }\noutput:\n  path: ${out}\n  rotate: { maxBytes: ${maxBytes}, keep: 1000 }\nmetrics: { listen: "127.0.0.1:${port}" }\n`,
    );
    let delivered: number;
    let calls: number;
    let lostSeen: number;
    try {
      const run = JSON.parse(execFileSync(loop, ['--calls', '10000', '--path', '/'], { encoding: 'utf8' })) as { calls: number; errors: number };
      expect(run.errors).toBe(0);
      calls = run.calls;
      // Wait until the agent has every call, delivered or counted lost.
      const deadline = Date.now() + 30_000;
      for (;;) {
        const text = ((await get(port, '/metrics')) as { body: string }).body;
        delivered = samples(text, 'chroot_guard_events_delivered_total').get('') ?? 0;
        const lost = samples(text, 'chroot_guard_lost_total');
        lostSeen = CALLS_LOST.reduce((n, cause) => n + lost.get(`{cause="${cause}"}`)!, 0);
        if (delivered + lostSeen >= calls) break;
        if (Date.now() > deadline) throw new Error(`the agent accounted for ${delivered} + ${lostSeen} of ${calls} calls`);
        await sleep(200);
      }
    } finally {
      expect(await agent.stop()).toBe(0);
    }
    // Oldest first: events.ndjson.N … .1, then events.ndjson.
    const rotated = readdirSync(join(dir, 'rot'))
      .map((f) => /^events\.ndjson\.(\d+)$/.exec(f)?.[1])
      .filter((x): x is string => x !== undefined)
      .map(Number)
      .sort((a, b) => b - a);
    expect(rotated.length, 'the storm rotated the file several times').toBeGreaterThan(5);
    const files = [...rotated.map((i) => `${out}.${i}`), out];
    // Each rotated file reached maxBytes, and went past it by one write at
    // most (a batch's lines: 64 Ki characters, and the line that crossed it).
    for (const f of files.slice(0, -1)) {
      const size = statSync(f).size;
      expect(size, f).toBeGreaterThanOrEqual(maxBytes);
      expect(size, f).toBeLessThan(maxBytes + 512 * 1024);
    }
    const records: StreamRecord[] = [];
    for (const f of files) {
      const text = readFileSync(f, 'utf8');
      // Whole records only: a file ends with a newline (or is empty).
      expect(text === '' || text.endsWith('\n'), f).toBe(true);
      records.push(...ndjson(text));
    }
    expect(records[0]?.type).toBe('attach');
    expect(records.filter((r) => r.type === 'attach')).toHaveLength(1);
    const chroots = records.filter((r) => r.type === 'chroot');
    expect(chroots.length).toBe(delivered);
    expect(agent.stderr()).toContain(`detached: ${delivered} events written`);
    // The last lost record holds the final totals (none if nothing was lost).
    const last = records.filter((r) => r.type === 'lost').pop() as { total: LossCounts } | undefined;
    const lostCalls = last ? callsLost(last.total) : 0;
    expect(chroots.length + lostCalls).toBe(calls);
    expect(lostCalls).toBe(lostSeen);
    console.log(`rotation: ${calls} calls, ${chroots.length} chroot records + ${lostCalls} lost across ${files.length} files (rotated at ${maxBytes} bytes)`);
  });
});

describe('agent behind a stalled output', () => {
  // Stdout to a pipe is asynchronous in Node.js: before the output's flow
  // control, what the pipe's reader had not taken was kept in memory, and
  // 300,000 chroot calls by an unprivileged user took the agent from 83 to
  // 678 MB (and on, without limit, to the OOM killer).
  it('a flood of chroot calls by an unprivileged user while nobody reads stdout: memory stays bounded, and chroot records + counted losses = calls', async () => {
    const calls = 200_000;
    const config = join(dir, 'stalled.yaml');
    const port = await freePort();
    writeFileSync(config, `watch:\n  mode: ${TEST_MODE}\n  ringBufferBytes: 1048576\n  filters: { uid: 65534 }\nmetrics:\n  listen: 127.0.0.1:${port}\n`);
    const lostTotal = (rs: StreamRecord[]) => {
      const t = rs.filter((r) => r.type === 'lost').at(-1)?.total as LossCounts | undefined;
      return t ? callsLost(t) : 0;
    };
    const seen = (rs: StreamRecord[]) => rs.filter((r) => r.type === 'chroot' && r.uid === 65534 && r.path === '/').length;
    // The output's stall, as /metrics tells it while it lasts and after.
    const scrape = async () => {
      const { body } = await answer(port, '/metrics');
      return { paused: samples(body, 'chroot_guard_output_paused').get(''), seconds: samples(body, 'chroot_guard_output_paused_seconds_total').get('') };
    };
    let during: Awaited<ReturnType<typeof scrape>> | undefined;
    let after: Awaited<ReturnType<typeof scrape>> | undefined;
    const r = await floodBehindStalledStdout(['agent', '--config', config], 'agent running', { dir: '/', calls }, (rs) => seen(rs) + lostTotal(rs) >= calls, {
      stalled: async () => void (during = await scrape()),
      drained: async () => {
        // stdout's 'drain' resumes the flow once the test has read it all.
        const until = Date.now() + 5000 * SLOWDOWN;
        while ((after = await scrape()).paused !== 0 && Date.now() < until) await sleep(100);
      },
    });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(during?.paused).toBe(1);
    expect(during?.seconds).toBeGreaterThan(0);
    expect(after?.paused).toBe(0);
    expect(after?.seconds).toBeGreaterThanOrEqual(during!.seconds!);
    // What the output path may hold is set by the ring buffer, not by the
    // flood: the ring buffer and a batch (1 MiB each), what stdout holds
    // when the pause comes (1 MiB and the rest of the batch being printed),
    // and that batch's decoded events, whatever their garbage: 12 to 50 MB
    // here. Unbounded, it grew by hundreds of MB.
    expect(r.rssGrowthBytes, `RSS grew by ${(r.rssGrowthBytes / 1048576).toFixed(1)} MiB`).toBeLessThan(128 << 20);
    expect(lostTotal(r.records)).toBeGreaterThan(0);
    expect(seen(r.records) + lostTotal(r.records)).toBe(calls);
  });
});

describe('agent config and start-up errors', () => {
  const run = (name: string, yaml: string, ...flags: string[]) => {
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, yaml);
    return { file, ...spawnSync(process.execPath, [CLI, 'agent', '--config', file, ...flags], { encoding: 'utf8' }) };
  };

  it('--check-config accepts a valid config', () => {
    const r = run('valid', 'watch:\n  mode: auto\n  ringBufferBytes: 65536\noutput:\n  path: /var/log/chroot-guard/events.ndjson\n  rotate: { maxBytes: 10485760, keep: 3 }\nmetrics:\n  listen: "[::1]:9641"\n', '--check-config');
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(`${r.file}: ok\n`);
    expect(r.status).toBe(0);
  });

  it('a bad config gives file:line:column for each problem and exit 2', () => {
    const r = run('bad', 'watch:\n  mode: fentri\n  filters: { pid: 0 }\noutput:\n  path: "-"\n  rotate: { keep: 3 }\nmetrics:\n  listen: localhost\nextra: 1\n');
    expect(r.status).toBe(2);
    const lines = r.stderr.split('\n');
    expect(lines).toContain(`${r.file}:2:9: "mode" must be one of auto, fentry, kprobe, tracepoint; got "fentri"`);
    expect(lines).toContain(`${r.file}:3:19: "pid" must be at least 1; got 0`);
    expect(lines.some((l) => l.startsWith(`${r.file}:6:11: missing required key "maxBytes"`))).toBe(true);
    expect(lines).toContain(`${r.file}:8:11: "listen" must be HOST:PORT, e.g. 127.0.0.1:9641, [::1]:9641 or 0.0.0.0:9641 (a host name or IP address, a port); got "localhost"`);
    expect(lines.some((l) => l.startsWith(`${r.file}:9:1: unknown key "extra" (expected one of: watch, output, metrics, guard)`))).toBe(true);
    expect(r.stderr).toContain('INVALID_CONFIG');
  });

  it('checks what the schema cannot: a power-of-two ring buffer, rotation of a file only', () => {
    const r = run('semantic', 'watch: { ringBufferBytes: 5000 }\noutput: { rotate: { maxBytes: 4096 } }\n', '--check-config');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`${r.file}:1:27: "ringBufferBytes" must be a power of two from 4096 to 1073741824; got 5000`);
    expect(r.stderr).toContain(`${r.file}:2:19: "rotate" needs a file`);
    // A port alone is not a string: it gets the form, not "of type string".
    const port = run('port-only', 'metrics: { listen: 9641 }\n', '--check-config');
    expect(port.status).toBe(2);
    expect(port.stderr).toContain(`${port.file}:1:20: "listen" must be HOST:PORT, e.g. 127.0.0.1:9641, [::1]:9641 or 0.0.0.0:9641 (a host name or IP address, a port); got 9641`);
  });

  it('checks the guard section\'s policy file as check does: unreadable at guard.policy, invalid with its own positions; relative to the config', () => {
    const missing = run('guard-missing', 'watch: { mode: auto }\nguard:\n  policy: no-such-policy.yaml\n', '--check-config');
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain(`${missing.file}:3:11: cannot read the policy file: ENOENT: no such file or directory, lstat '${join(dir, 'no-such-policy.yaml')}'`);
    writeFileSync(join(dir, 'guard-policy.yaml'), 'mode: enforce\nrules:\n  - id: x\n    action: deny\n    match: { subtree: srv }\n');
    const bad = run('guard-bad', 'guard:\n  policy: guard-policy.yaml\n', '--check-config');
    expect(bad.status).toBe(2);
    expect(bad.stderr.split('\n')).toEqual([
      `${bad.file}:2:11: the policy file ${join(dir, 'guard-policy.yaml')} is not a valid policy (INVALID_POLICY): 1 problem, below`,
      `${join(dir, 'guard-policy.yaml')}:5:23: "subtree" must be an absolute path or a list of absolute paths; got "srv"`,
      'chroot-guard: error: invalid agent config (INVALID_CONFIG)',
      '',
    ]);
    const pinDir = run('guard-pin-dir', 'guard:\n  policy: guard-policy.yaml\n  pinDir: relative\n', '--check-config');
    expect(pinDir.status).toBe(2);
    expect(pinDir.stderr).toContain(`${pinDir.file}:3:11: "pinDir" must be an absolute path (a directory on bpffs); got "relative"`);
    writeFileSync(join(dir, 'guard-policy.yaml'), 'mode: audit\nrules: []\n');
    const ok = run('guard-ok', 'guard:\n  policy: guard-policy.yaml\n', '--check-config');
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
  });

  // The agent runs as root: a config another user could change, or an
  // output directory they could create names in, would let them choose
  // what root writes where. Refused before anything is read or loaded.
  it('refuses a config file another user could change, and an output directory others can write (sticky or not): exit 2', () => {
    const write = (name: string) => {
      const file = join(dir, `${name}.yaml`);
      writeFileSync(file, 'watch: { mode: auto }\n');
      return { file };
    };
    const loose = write('loose');
    chmodSync(loose.file, 0o666);
    for (const flags of [['--check-config'], []]) {
      // Killed after 30 s: an agent that accepted the config would run on.
      const r = spawnSync(process.execPath, [CLI, 'agent', '--config', loose.file, ...flags], { encoding: 'utf8', timeout: 30_000 });
      expect(r.status).toBe(2);
      expect(r.stderr).toContain(`${loose.file}: ${loose.file} (a file, owner uid 0, gid 0, mode 0666) is writable by its group and others: chmod go-w ${loose.file}; a config another user could change is not used`);
      expect(r.stderr).toContain('INVALID_CONFIG');
      expect(r.stderr).not.toContain('attached');
    }
    const theirs = write('theirs');
    chownSync(theirs.file, 65534, 65534);
    expect(spawnSync(process.execPath, [CLI, 'agent', '--config', theirs.file, '--check-config'], { encoding: 'utf8' }).stderr).toContain(`is owned by uid 65534, not root: chown root: ${theirs.file}`);

    // Others' write, sticky or not, and group write on the directory the
    // files are made in: each of them can create a name there first.
    for (const [mode, fault] of [
      [0o777, 'its group and others: chmod go-w OUT'],
      [0o1777, `its group and others: ${FIX}`],
      [0o775, `its group (gid 0): ${FIX}`],
    ] as const) {
      const out = join(dir, `out-${mode.toString(8)}`);
      mkdirSync(out);
      chmodSync(out, mode);
      const r = run(`output-${mode.toString(8)}`, `output:\n  path: ${out}/events.ndjson\n`);
      expect(r.status).toBe(2);
      expect(r.stderr).toContain(`${r.file}:2:9: ${out} (a directory, owner uid 0, gid 0, mode ${mode.toString(8).padStart(4, '0')}) is writable by ${fault.replace('OUT', out)}; the agent, running as root, writes files there`);
      expect(r.stderr).not.toContain('attached');
      expect(existsSync(join(out, 'events.ndjson'))).toBe(false);
    }
    // On the way, a group the administrator gave write (Ubuntu's /var/log
    // is root:syslog 0775) is theirs to trust.
    const group = join(dir, 'out-775', 'own');
    mkdirSync(group, { mode: 0o700 });
    const ok = run('output-775-own', `output:\n  path: ${group}/events.ndjson\n`, '--check-config');
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
  });

  // What a user could have left at the file's name before the directory
  // was made root's: never written through, with and without rotation.
  it('refuses an output file that is a symbolic link, a FIFO, another user\'s, or hard-linked: exit 2, nothing written', () => {
    const out = join(dir, 'planted');
    mkdirSync(out, { mode: 0o700 });
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'untouched\n', { mode: 0o600 });
    const cases: Array<[string, (file: string) => void, string]> = [
      ['link', (f) => symlinkSync(victim, f), 'is a symbolic link: remove it'],
      ['fifo', (f) => execFileSync('mkfifo', [f]), 'is not a regular file: remove it'],
      ['theirs', (f) => (writeFileSync(f, ''), chownSync(f, 65534, 65534)), 'is owned by uid 65534: remove it'],
      ['hardlink', (f) => linkSync(victim, f), 'hard links, and another may be a name some other user reads'], // the victim's and each planted name,
      ['loose', (f) => writeFileSync(f, '', { mode: 0o666 }), `(mode 0666) is writable by its group or others: chmod go-w`],
    ];
    for (const rotate of [false, true]) {
      for (const [name, plant, fault] of cases) {
        const file = join(out, `${name}-${rotate}.ndjson`);
        plant(file);
        if (name === 'loose') chmodSync(file, 0o666);
        const r = run(`planted-${name}-${rotate}`, `output:\n  path: ${file}\n${rotate ? '  rotate: { maxBytes: 4096 }\n' : ''}`);
        expect(r.status, `${name} rotate=${rotate}: ${r.stderr}`).toBe(2);
        expect(r.stderr).toContain(`error: ${file} `);
        expect(r.stderr).toContain(fault);
        expect(r.stderr).toContain('(INVALID_CONFIG)');
        expect(r.stderr).not.toContain('attached');
        expect(readFileSync(victim, 'utf8')).toBe('untouched\n');
      }
    }
  });

  it('creates a missing output directory 0700 and the file 0640', async () => {
    const out = join(dir, 'made', 'here');
    mkdirSync(dirname(out));
    const file = join(out, 'events.ndjson');
    const agent = await startAgent('made', `watch: { mode: ${TEST_MODE} }\noutput: { path: ${file} }\n`);
    expect(await agent.stop()).toBe(0);
    expect(statSync(out).mode & 0o7777).toBe(0o700);
    expect(statSync(file).mode & 0o7777).toBe(0o640);
    expect(ndjson(readFileSync(file, 'utf8'))[0]?.type).toBe('attach');
  });

  it('a port already taken: exit 1, naming it, before anything is loaded', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const file = join(dir, 'taken.yaml');
      writeFileSync(file, `metrics: { listen: "127.0.0.1:${port}" }\n`);
      const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
        const child = spawn(process.execPath, [CLI, 'agent', '--config', file], { stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('exit', (status) => resolve({ status, stderr }));
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`cannot listen on 127.0.0.1:${port}: listen EADDRINUSE`);
      expect(r.stderr).not.toContain('attached');
    } finally {
      taken.close();
    }
  });

  it.skipIf(EXPECTED_MODE !== 'tracepoint' || TEST_MODE !== 'auto')('a mode the kernel refuses: exit 3, as watch (fentry where only tracepoints attach)', () => {
    const r = run('refused', 'watch: { mode: fentry }\n');
    expect(r.status).toBe(3);
    expect(r.stderr).toContain('fentry refused');
  });

  it('YAML syntax errors and unreadable files have the policies\' shape', () => {
    const syntax = run('syntax', 'watch: [\n');
    expect(syntax.status).toBe(2);
    expect(syntax.stderr).toMatch(new RegExp(`^${syntax.file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: not valid YAML or JSON`));
    const missing = spawnSync(process.execPath, [CLI, 'agent', '--config', join(dir, 'no-such.yaml'), '--check-config'], { encoding: 'utf8' });
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('cannot read the agent config file');
  });
});

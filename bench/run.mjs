// chroot-guard benchmarks, side by side with bpftrace in one run.
// Run by `cargo xtask bench` (which builds the workload and the O1 drain
// first); writes bench/results/<date>.json, .md and .svg, and refreshes
// bench/RESULTS.md. Absolute times drift on shared machines: every figure is
// a median over alternated rounds (A B C … A B C …), with min and max, and
// the goals are ratios taken within a round.
//
//   node bench/run.mjs [--rounds N] [--quick] [--only cost,throughput,storm,latency,startup,memory,programs] [--label TEXT]
//   node bench/run.mjs --vm      (inside the VM: attach-mode and LSM costs)
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const WORKLOAD = join(ROOT, 'target/bench/chroot_loop');
const DRAIN = join(ROOT, 'target/release/examples/drain');
const O2 = join(ROOT, 'bench/o2.mjs');
const CLI = join(ROOT, 'dist/cli.js');
const argv = process.argv.slice(2);
const flag = (n) => argv.includes(n);
const opt = (n, d) => (argv.includes(n) ? argv[argv.indexOf(n) + 1] : d);
const QUICK = flag('--quick');
const ROUNDS = Number(opt('--rounds', QUICK ? 3 : 5));
const ONLY = opt('--only', '')?.split(',').filter(Boolean) ?? [];
const want = (part) => ONLY.length === 0 || ONLY.includes(part);
const log = (...a) => process.stderr.write(`bench: ${a.join(' ')}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => process.hrtime.bigint();

// ----------------------------------------------------------------------------
// Contenders: each starts, says when it is attached, and stops with totals.

const BPFTRACE = {
  B1: 'tracepoint:syscalls:sys_enter_chroot { printf("%s %d %s\\n", comm, pid, str(args->filename)); }',
  B2: 'tracepoint:syscalls:sys_enter_chroot { @path[tid] = str(args->filename); } ' +
    'tracepoint:syscalls:sys_exit_chroot /@path[tid] != ""/ { printf("%d %s %s %d\\n", pid, comm, @path[tid], args->ret); delete(@path[tid]); }',
  // What a user writes to see 32-bit compat chroot (ia32 number 61) where
  // only tracepoints run: the syscall tracepoints skip compat calls, so it
  // takes raw_syscalls, which every syscall of the host passes through. B2's
  // printing; uptr(): bpftrace 0.17 reads args[] as kernel addresses
  // otherwise, and prints nothing. (61 is also the native wait4, which this
  // matches as well; the workload makes none.)
  B3: 'tracepoint:raw_syscalls:sys_enter /args->id == 61/ { @path[tid] = str(uptr(args->args[0])); } ' +
    'tracepoint:raw_syscalls:sys_exit /args->id == 61 && @path[tid] != ""/ { printf("%d %s %s %d\\n", pid, comm, @path[tid], args->ret); delete(@path[tid]); }',
};
/** chroot-guard with `compat` (raw sys_enter/sys_exit programs), tracepoint mode. */
const COMPAT = { O1c: 'O1', O2c: 'O2' };

/** Lines of a stream, to a callback. */
function lines(stream, onLine) {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

function vmHWM(pid) {
  try {
    return Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
  } catch {
    return null;
  }
}

/** BPF objects loaded now: prog and map ids with memlock bytes. */
function bpfObjects() {
  const j = (kind) => JSON.parse(execFileSync('bpftool', ['--json', kind, 'show'], { encoding: 'utf8' }));
  return { progs: j('prog'), maps: j('map') };
}
function kernelBytes(before, after) {
  const ids = (xs) => new Set(xs.map((x) => x.id));
  const b = { progs: ids(before.progs), maps: ids(before.maps) };
  const sum = (xs, seen) => xs.filter((x) => !seen.has(x.id)).reduce((n, x) => n + (x.bytes_memlock ?? 0), 0);
  return { programs: sum(after.progs, b.progs), maps: sum(after.maps, b.maps) };
}

/**
 * Starts a contender. `count`: also count delivered events per pid (B1/B2/B3
 * via a pipe; O1/O2 always count; C1/C2 then print to a pipe and note their
 * first chroot record). O1c and O2c are O1 and O2 with `--compat`
 * in tracepoint mode. Returns { ready, stop(), pid }.
 */
function start(name, { count = false, ringBufferBytes, latency = false, mode, guard } = {}) {
  const t0 = now();
  if (name === 'B0') return { ready: Promise.resolve({ t0, attached: t0 }), stop: async () => ({}), pid: null };
  if (name === 'B1' || name === 'B2' || name === 'B3') {
    const env = { ...process.env };
    if (ringBufferBytes) env.BPFTRACE_PERF_RB_PAGES = String(ringBufferBytes / 4096 / cpus());
    const p = spawn('bpftrace', ['-e', BPFTRACE[name]], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const byPid = new Map();
    let lost = 0;
    let first = null;
    let attached;
    const ready = new Promise((resolve, reject) => {
      lines(p.stdout, (l) => {
        if (l.startsWith('Attaching')) return resolve({ t0, attached: (attached = now()) });
        const m = /^Lost (\d+) events/.exec(l);
        if (m) return void (lost += Number(m[1]));
        first ??= now();
        if (count) {
          const pid = Number(name === 'B1' ? l.split(' ')[1] : l.split(' ')[0]);
          byPid.set(pid, (byPid.get(pid) ?? 0) + 1);
        }
      });
      lines(p.stderr, (l) => {
        const m = /Lost (\d+) events/.exec(l);
        if (m) lost += Number(m[1]);
      });
      p.on('exit', (c) => reject(new Error(`bpftrace exited with ${c}`)));
    });
    const stop = stopper(p, name);
    return {
      pid: p.pid,
      ready,
      firstEvent: () => first,
      stop: async () => {
        const rss = await stop();
        return { byPid: Object.fromEntries(byPid), lost, peakRssBytes: rss };
      },
    };
  }
  if (name === 'B2n') {
    // B2 writing to /dev/null, the sink C1 and C2 write to. Its "Attaching"
    // line goes there too: BEGIN, which bpftrace runs once every probe is
    // attached, leaves a file instead (system() needs --unsafe).
    const flag = `/tmp/cg-bench-b2n-${process.pid}-${Number(t0)}`;
    const p = spawn('bpftrace', ['--unsafe', '-e', `BEGIN { system("touch ${flag}"); } ${BPFTRACE.B2}`], { stdio: ['ignore', devNull(), 'pipe'] });
    const stop = stopper(p, name);
    const ready = (async () => {
      while (!existsSync(flag)) {
        if (p.exitCode !== null) throw new Error(`bpftrace exited with ${p.exitCode}`);
        await sleep(2);
      }
      rmSync(flag);
      return { t0, attached: now() };
    })();
    return { pid: p.pid, ready, stop: async () => ({ peakRssBytes: await stop() }) };
  }
  if (name === 'C1' || name === 'C2') {
    // The CLI as users run it, its output to /dev/null: C1 `watch --json`,
    // C2 the table. Attached when it says so on stderr; at SIGINT it says
    // how many events it printed and lost.
    // The loop makes chroots faster than the CLI prints them (at about
    // 200,000/s here), so a 128 MiB ring buffer holds the backlog: this is
    // the cost each call adds, every call printed; the rate the CLI keeps up
    // with is the zero-loss section's question.
    // With `count` (the start-up section) it starts as users start it (the
    // default ring buffer: allocating 128 MiB alone takes tens of ms) and
    // stdout is read for the first chroot record.
    const ring = count ? [] : ['--ring-buffer-bytes', String(ringBufferBytes ?? 128 << 20)];
    // Started as the package's `bin` is, by its first line (/bin/sh, then
    // node from PATH), not as `node dist/cli.js`.
    const p = spawn(CLI, ['watch', ...ring, ...(name === 'C1' ? ['--json'] : [])], { stdio: ['ignore', count ? 'pipe' : devNull(), 'pipe'] });
    let first = null;
    if (count) lines(p.stdout, (l) => (first ??= l.startsWith('{"type":"chroot"') ? now() : null));
    let stderr = '';
    const ready = new Promise((resolve, reject) => {
      p.stderr.setEncoding('utf8');
      p.stderr.on('data', (d) => {
        stderr += d;
        if (stderr.includes('watching chroot(2)')) resolve({ t0, attached: now() });
      });
      p.on('exit', (c) => reject(new Error(`${name} exited with ${c}: ${stderr}`)));
    });
    const stop = stopper(p, name);
    return {
      pid: p.pid,
      ready,
      firstEvent: () => first,
      stop: async () => {
        const rss = await stop();
        const m = /detached: (\d+) events?(?:, (\d+) lost)?/.exec(stderr);
        if (!m) throw new Error(`${name} did not say what it printed: ${stderr}`);
        return { delivered: Number(m[1]), lost: Number(m[2] ?? 0), peakRssBytes: rss };
      },
    };
  }
  const compat = name in COMPAT;
  if (compat) mode = 'tracepoint';
  const argv = (COMPAT[name] ?? name) === 'O1' ? [DRAIN] : [process.execPath, O2];
  if (compat) argv.push('--compat');
  if (ringBufferBytes) argv.push('--ring-buffer-bytes', String(ringBufferBytes));
  if (latency) argv.push('--latency');
  if (mode) argv.push('--mode', mode);
  if (guard) argv.push('--guard', guard.action, '--path', guard.path);
  const p = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const phases = {};
  let result;
  const done = new Promise((resolve) => {
    lines(p.stdout, (l) => {
      if (l.startsWith('phase ')) {
        const [, n, t] = l.split(' ');
        phases[n.split(':')[0]] = BigInt(t);
        if (n.startsWith('attached')) p.emit('cg-ready');
      } else if (l.startsWith('attached')) {
        phases.attached = now();
        p.emit('cg-ready');
      } else if (l.startsWith('{')) result = JSON.parse(l);
    });
    p.on('close', () => resolve());
  });
  const ready = new Promise((resolve, reject) => {
    p.once('cg-ready', () => resolve({ t0, attached: phases.attached }));
    p.on('exit', (c) => reject(new Error(`${name} exited with ${c}`)));
  });
  return {
    pid: p.pid,
    ready,
    phases,
    firstEvent: () => phases['first-event'] ?? null,
    stop: async () => {
      const rss = vmHWM(p.pid);
      p.stdin.end();
      const timer = setTimeout(() => {
        log(`${name} still running ${STOP_GRACE_MS / 1000} s after its stdin closed: killed`);
        p.kill('SIGKILL');
      }, STOP_GRACE_MS);
      await done;
      clearTimeout(timer);
      return { ...result, peakRssBytes: result?.peakRssBytes ?? rss };
    },
  };
}

/** Stops `p` with SIGINT as a user's Ctrl-C would; resolves with its peak RSS, read just before. */
/**
 * Stops `p` with SIGINT and resolves once it has closed, with its peak RSS.
 * 'close' is awaited from the start (a contender that ended early would
 * otherwise never resolve), and one still running STOP_GRACE_MS after SIGINT
 * is killed and named in the log, so a hung contender cannot hang the run.
 */
const STOP_GRACE_MS = 15_000;
function stopper(p, name) {
  const closed = new Promise((r) => p.on('close', r));
  return async () => {
    const rss = vmHWM(p.pid);
    p.kill('SIGINT');
    const timer = setTimeout(() => {
      log(`${name} still running ${STOP_GRACE_MS / 1000} s after SIGINT: killed (its figures in this round are what it printed until then)`);
      p.kill('SIGKILL');
    }, STOP_GRACE_MS);
    await closed;
    clearTimeout(timer);
    return rss;
  };
}

let nullFd;
/** An fd of /dev/null, the sink of B2n, C1 and C2. */
function devNull() {
  nullFd ??= openSync('/dev/null', 'w');
  return nullFd;
}

let ncpu;
function cpus() {
  ncpu ??= Number(execFileSync('nproc', { encoding: 'utf8' }).trim());
  return ncpu;
}

/**
 * Runs the workload; resolves with its JSON report. Asynchronous, so this
 * process keeps reading the contenders' output meanwhile (a blocked pipe
 * would stall bpftrace and count against it).
 */
function workload(args, cpu) {
  return new Promise((resolve, reject) => {
    const argv = cpu === undefined ? [WORKLOAD, ...args] : ['taskset', '-c', String(cpu), WORKLOAD, ...args];
    const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`workload failed (${code}): ${err}`))));
  });
}

// ----------------------------------------------------------------------------
// Statistics

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const summary = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length });
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

// ----------------------------------------------------------------------------
// 1. Added cost per call

// Raw-syscall coverage (compat in tracepoint mode) is a cost on every
// syscall of every CPU, and bpftrace's share of it depends on the CPU (its
// tracepoint perf events are opened on one CPU, whose syscalls pay more): on
// getpid(2) these contenders also run the workload pinned to each CPU in
// turn, and that section takes the mean over the CPUs.
const RAW = ['B0', 'B3', 'O1', 'O2', 'O1c', 'O2c'];

async function cost(syscall) {
  // B3, O1c, O2c: raw-syscall coverage (compat in tracepoint mode). B2n,
  // C1, C2: bpftrace and the CLI writing to /dev/null (chroot only).
  const contenders = ['B0', 'B1', 'B2', 'O1', 'O2', 'B3', 'O1c', 'O2c', ...(syscall === 'chroot' ? ['B2n', 'C1', 'C2'] : [])];
  const calls = syscall === 'chroot' ? (QUICK ? 50_000 : 200_000) : QUICK ? 200_000 : 1_000_000;
  const pin = syscall === 'getpid';
  const perRound = [];
  const pinnedRounds = [];
  for (let round = 0; round < ROUNDS; round++) {
    const t = {};
    const tp = {};
    for (const c of contenders) {
      const h = start(c);
      await h.ready;
      await sleep(200);
      const args = ['--calls', String(calls), '--syscall', syscall];
      t[c] = (await workload(args)).ns_per_call;
      if (pin && RAW.includes(c)) {
        tp[c] = [];
        for (let cpu = 0; cpu < cpus(); cpu++) tp[c].push((await workload(args, cpu)).ns_per_call);
      }
      const s = await h.stop();
      // A CLI figure only counts if it printed every call.
      if ((c === 'C1' || c === 'C2') && (s.delivered < calls || s.lost > 0)) throw new Error(`${c} printed ${s.delivered} of ${calls} calls (${s.lost} lost)`);
      // A compat figure only counts if the raw programs were attached.
      if (c in COMPAT && (s.mode !== 'tracepoint' || s.blindSpots !== 0)) throw new Error(`${c} attached ${s.mode} with ${s.blindSpots} blind spots: the raw sys_enter/sys_exit programs are not all attached`);
    }
    perRound.push(t);
    log(`cost ${syscall} round ${round + 1}/${ROUNDS}: ${contenders.map((c) => `${c} ${t[c].toFixed(0)} ns`).join(', ')}`);
    if (pin) {
      pinnedRounds.push(tp);
      log(`cost ${syscall} round ${round + 1}/${ROUNDS}, pinned per CPU: ${RAW.map((c) => `${c} ${tp[c].map((x) => x.toFixed(0)).join('/')} ns`).join(', ')}`);
    }
  }
  const out = { calls, nsPerCall: {}, addedNs: {}, ratioToB2: {}, addedByCompat: {} };
  for (const c of contenders) out.nsPerCall[c] = summary(perRound.map((t) => t[c]));
  for (const c of contenders.slice(1)) out.addedNs[c] = summary(perRound.map((t) => t[c] - t.B0));
  for (const c of ['O1', 'O2', 'B1', 'B3', 'O1c', 'O2c']) out.ratioToB2[c] = summary(perRound.map((t) => (t[c] - t.B0) / (t.B2 - t.B0)));
  // The CLI against bpftrace with the same sink.
  if (syscall === 'chroot') {
    out.ratioToB2n = {};
    for (const c of ['C1', 'C2']) out.ratioToB2n[c] = summary(perRound.map((t) => (t[c] - t.B0) / (t.B2n - t.B0)));
  }
  // What compat adds to the same reader (per chroot: the raw programs'
  // share on a watched call); per getpid, rawCoverage() below.
  for (const [c, base] of Object.entries(COMPAT)) out.addedByCompat[c] = summary(perRound.map((t) => t[c] - t[base]));
  if (pin) out.raw = rawCoverage(pinnedRounds);
  return out;
}

/** The raw-syscall coverage figures from the pinned getpid(2) runs: per round, the mean over CPUs. */
function rawCoverage(rounds) {
  const m = rounds.map((tp) => Object.fromEntries(RAW.map((c) => [c, mean(tp[c])])));
  const out = { cpus: cpus(), rounds, nsPerCall: {}, addedNs: {}, timesB0: {}, ratioToB3: {}, ratioToB3PerCpu: {}, addedByCompat: {}, addedNsPerCpu: {} };
  for (const c of RAW) out.nsPerCall[c] = summary(m.map((t) => t[c]));
  for (const c of RAW.slice(1)) {
    out.addedNs[c] = summary(m.map((t) => t[c] - t.B0));
    out.timesB0[c] = summary(m.map((t) => t[c] / t.B0));
    out.addedNsPerCpu[c] = rounds[0][c].map((_, cpu) => summary(rounds.map((tp) => tp[c][cpu] - tp.B0[cpu])));
  }
  for (const c of ['O1c', 'O2c']) {
    out.ratioToB3[c] = summary(m.map((t) => (t[c] - t.B0) / (t.B3 - t.B0)));
    out.ratioToB3PerCpu[c] = rounds[0][c].map((_, cpu) => summary(rounds.map((tp) => (tp[c][cpu] - tp.B0[cpu]) / (tp.B3[cpu] - tp.B0[cpu]))));
  }
  for (const [c, base] of Object.entries(COMPAT)) out.addedByCompat[c] = summary(m.map((t) => t[c] - t[base]));
  return out;
}

// ----------------------------------------------------------------------------
// 2. Zero-loss throughput (ramp), batches per event at saturation

async function delivered(name, args, opts = {}) {
  const h = start(name, { count: true, ...opts });
  await h.ready;
  await sleep(200);
  const w = await workload(args);
  await sleep(300);
  const s = await h.stop();
  const seen = w.pids.reduce((n, pid) => n + (s.byPid?.[pid] ?? 0), 0);
  return { calls: w.calls, seconds: w.seconds, seen, stats: s };
}

async function throughput() {
  const rates = QUICK ? [5_000, 50_000, 0] : [2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 400_000, 0];
  const out = {};
  for (const name of ['B2', 'O2']) {
    const ramp = [];
    for (const rate of rates) {
      const r = await delivered(name, ['--seconds', '2', ...(rate ? ['--rate', String(rate)] : [])]);
      const achieved = r.calls / r.seconds;
      ramp.push({ target: rate || 'max', achieved, calls: r.calls, seen: r.seen, lost: r.calls - r.seen, stats: r.stats });
      log(`throughput ${name} at ${rate || 'max'}/s: ${r.seen}/${r.calls} delivered (${achieved.toFixed(0)}/s)`);
    }
    const zero = ramp.filter((x) => x.lost === 0);
    const sat = ramp.at(-1);
    out[name] = {
      ramp: ramp.map(({ stats, ...x }) => x),
      zeroLossRate: zero.length ? Math.max(...zero.map((x) => x.achieved)) : 0,
      batchesPerEvent: name === 'O2' && sat.stats.events ? sat.stats.batches / sat.stats.events : null,
      eventsPerBatch: name === 'O2' && sat.stats.batches ? sat.stats.events / sat.stats.batches : null,
    };
  }
  out.ratio = out.B2.zeroLossRate ? out.O2.zeroLossRate / out.B2.zeroLossRate : null;
  return out;
}

// ----------------------------------------------------------------------------
// 3. Loss accounting under a two-process storm, equal kernel buffer bytes

async function storm() {
  const bytes = 64 * 4096 * cpus(); // bpftrace's default: 64 pages per CPU
  const seconds = QUICK ? 3 : 10;
  const out = { bufferBytes: bytes, seconds };
  for (const name of ['B2', 'O2']) {
    const r = await delivered(name, ['--seconds', String(seconds), '--procs', '2'], { ringBufferBytes: bytes });
    const reported = name === 'O2' ? ['ringBufferFull', 'pendingFull', 'kretprobeMissed', 'recursionMissed'].reduce((n, k) => n + (r.stats.lost?.[k] ?? 0), 0) : r.stats.lost;
    out[name] = {
      generated: r.calls,
      delivered: r.seen,
      reportedLost: reported,
      lossFraction: 1 - r.seen / r.calls,
      unexplained: r.calls - r.seen - reported,
    };
    log(`storm ${name}: ${r.seen}/${r.calls} delivered, ${reported} reported lost, ${r.calls - r.seen - reported} unexplained`);
  }
  out.lossRatio = out.B2.lossFraction ? out.O2.lossFraction / out.B2.lossFraction : null;
  return out;
}

// ----------------------------------------------------------------------------
// 4. Latency, kernel timestamp to subscriber, at 1k events/s

async function latency() {
  // Rounds of their own process each: p99 moves from run to run, and the
  // spread is part of the figure.
  const rounds = [];
  for (let round = 0; round < ROUNDS; round++) {
    const h = start('O2', { latency: true });
    await h.ready;
    await sleep(200);
    await workload(['--seconds', QUICK ? '2' : '5', '--rate', '1000']);
    await sleep(300);
    const s = await h.stop();
    rounds.push(s.latency);
    log(`latency at 1k/s, round ${round + 1}/${ROUNDS}: p50 ${(s.latency.p50 / 1e6).toFixed(3)} ms, p99 ${(s.latency.p99 / 1e6).toFixed(3)} ms, max ${(s.latency.max / 1e6).toFixed(3)} ms`);
  }
  const of = (k) => summary(rounds.map((r) => r[k]));
  return { p50: of('p50').median, p99: of('p99').median, max: Math.max(...rounds.map((r) => r.max)), n: rounds.reduce((a, r) => a + r.n, 0), p50Rounds: of('p50'), p99Rounds: of('p99'), rounds };
}

// ----------------------------------------------------------------------------
// 5. Start-up to the first event; 6. peak RSS and kernel memory

async function startup() {
  // C1: the CLI as users start it (`watch --json`), its first chroot record.
  const rows = { B2: [], O2: [], C1: [] };
  const breakdown = [];
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of ['B2', 'O2', 'C1']) {
      // A workload already chrooting every ms, so the first event follows attach.
      // Its own process group: the loop forks its callers, and killing the
      // parent alone left them chrooting through the next rounds.
      const w = spawn(WORKLOAD, ['--seconds', '30', '--rate', '1000'], { stdio: 'ignore', detached: true });
      await sleep(100);
      const h = start(name, { count: true });
      const { t0 } = await h.ready;
      const deadline = Date.now() + 20_000;
      while (!h.firstEvent() && Date.now() < deadline) await sleep(2);
      const first = h.firstEvent();
      const s = await h.stop();
      process.kill(-w.pid, 'SIGTERM');
      rows[name].push(Number(first - t0) / 1e6);
      if (name === 'O2') {
        const p = h.phases;
        breakdown.push({
          nodeStartMs: Number(p.started - t0) / 1e6,
          importMs: Number(p.imported - p.started) / 1e6,
          loadVerifyAttachMs: Number(p.attached - p.imported) / 1e6,
          firstEventMs: Number(p['first-event'] - p.attached) / 1e6,
        });
      }
      void s;
    }
    log(`startup round ${round + 1}: B2 ${rows.B2.at(-1).toFixed(0)} ms, O2 ${rows.O2.at(-1).toFixed(0)} ms, C1 ${rows.C1.at(-1).toFixed(0)} ms`);
  }
  const med = (k) => median(breakdown.map((b) => b[k]));
  return {
    msToFirstEvent: { B2: summary(rows.B2), O2: summary(rows.O2), C1: summary(rows.C1) },
    ratio: summary(rows.O2.map((o, i) => o / rows.B2[i])),
    cliRatio: summary(rows.C1.map((c, i) => c / rows.B2[i])),
    o2Breakdown: { nodeStartMs: med('nodeStartMs'), importMs: med('importMs'), loadVerifyAttachMs: med('loadVerifyAttachMs'), firstEventMs: med('firstEventMs') },
  };
}

async function memory() {
  const bytes = 64 * 4096 * cpus();
  const out = {};
  for (const name of ['B2', 'O2']) {
    const rss = [];
    let kernel;
    for (let round = 0; round < Math.min(ROUNDS, 3); round++) {
      const before = bpfObjects();
      const h = start(name, { ringBufferBytes: bytes });
      await h.ready;
      await sleep(300);
      kernel = kernelBytes(before, bpfObjects());
      await workload(['--calls', '20000']);
      await sleep(300);
      const s = await h.stop();
      rss.push(s.peakRssBytes);
    }
    out[name] = { peakRssBytes: summary(rss), kernelMemlockBytes: kernel };
  }
  out.rssRatio = out.O2.peakRssBytes.median / out.B2.peakRssBytes.median;
  out.bufferBytes = bytes;
  return out;
}

// ----------------------------------------------------------------------------
// 7. Where the added cost goes: time inside the BPF programs

/**
 * Per chroot(2), the time the contender's own BPF programs ran (their
 * `run_time_ns` over the calls, with `kernel.bpf_stats_enabled` on) against
 * the whole added time of the same run: the rest is the tracepoint's
 * dispatch, the stats' own clock reads, wakeups and the consumer's share of
 * the CPUs. Its own rounds, since the stats add two clock reads to every
 * program run of every contender.
 */
async function inPrograms() {
  const STATS = '/proc/sys/kernel/bpf_stats_enabled';
  const was = readFileSync(STATS, 'utf8').trim();
  const calls = QUICK ? 50_000 : 200_000;
  const names = ['B0', 'B2', 'O1', 'O2'];
  const rounds = [];
  writeFileSync(STATS, '1');
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const t = {};
      for (const c of names) {
        const before = bpfObjects().progs;
        const h = start(c);
        await h.ready;
        await sleep(200);
        const seen = new Set(before.map((x) => x.id));
        const mine = () => bpfObjects().progs.filter((x) => !seen.has(x.id));
        const a = mine();
        const w = await workload(['--calls', String(calls)]);
        const b = mine();
        await h.stop();
        const programs = {};
        for (const x of b) {
          const y = a.find((z) => z.id === x.id);
          const ns = (x.run_time_ns ?? 0) - (y?.run_time_ns ?? 0);
          if (ns > 0) programs[x.name] = (programs[x.name] ?? 0) + ns / w.calls;
        }
        t[c] = { nsPerCall: w.ns_per_call, programs, inPrograms: Object.values(programs).reduce((n, x) => n + x, 0) };
      }
      rounds.push(t);
      log(`in programs round ${round + 1}/${ROUNDS}: ${names.slice(1).map((c) => `${c} ${(t[c].nsPerCall - t.B0.nsPerCall).toFixed(0)} ns added, ${t[c].inPrograms.toFixed(0)} in programs`).join('; ')}`);
    }
  } finally {
    writeFileSync(STATS, was);
  }
  const out = { calls, contenders: {} };
  for (const c of names.slice(1)) {
    const progNames = [...new Set(rounds.flatMap((t) => Object.keys(t[c].programs)))].sort();
    out.contenders[c] = {
      addedNs: summary(rounds.map((t) => t[c].nsPerCall - t.B0.nsPerCall)),
      inProgramsNs: summary(rounds.map((t) => t[c].inPrograms)),
      programs: Object.fromEntries(progNames.map((n) => [n, summary(rounds.map((t) => t[c].programs[n] ?? 0))])),
    };
  }
  return out;
}

// ----------------------------------------------------------------------------
// 8. In the VM: attach modes and LSM allow/deny, relative to tracepoint

async function vmCosts() {
  const variants = [
    ['none', {}],
    ['tracepoint', { mode: 'tracepoint' }],
    ['kprobe', { mode: 'kprobe' }],
    ['fentry', { mode: 'fentry' }],
    ['lsm-allow', { guard: { action: 'allow', path: '/' } }],
    ['lsm-deny', { guard: { action: 'deny', path: '/nonexistent-bench' } }],
  ];
  const calls = QUICK ? 20_000 : 50_000;
  const rounds = [];
  for (let round = 0; round < ROUNDS; round++) {
    const t = {};
    for (const [name, o] of variants) {
      const h = name === 'none' ? start('B0') : start('O1', o);
      await h.ready;
      t[name] = (await workload(['--calls', String(calls)])).ns_per_call;
      await h.stop();
    }
    rounds.push(t);
    log(`vm round ${round + 1}: ${Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')}`);
  }
  const added = (n) => rounds.map((t) => t[n] - t.none);
  const out = { calls, nsPerCall: {}, relativeToTracepoint: {} };
  for (const [name] of variants) out.nsPerCall[name] = summary(rounds.map((t) => t[name]));
  for (const [name] of variants.slice(1)) out.relativeToTracepoint[name] = summary(added(name).map((a, i) => a / added('tracepoint')[i]));
  return out;
}

// ----------------------------------------------------------------------------
// Report

function goals(r) {
  const g = [];
  const add = (name, value, ok, target) => g.push({ name, value, target, pass: ok });
  if (r.cost?.chroot) {
    add('added cost per chroot, subscriber: O2 ÷ B2', r.cost.chroot.ratioToB2.O2.median, r.cost.chroot.ratioToB2.O2.median <= 0.1, '≤ 0.1');
    const n = r.cost.chroot.ratioToB2n;
    if (n) {
      add('added cost per chroot, `watch --json` > /dev/null: C1 ÷ B2n', n.C1.median, n.C1.median <= 0.2, '≤ 0.2');
      add('added cost per chroot, `watch` table > /dev/null: C2 ÷ B2n', n.C2.median, n.C2.median <= 0.2, '≤ 0.2');
    }
  }
  if (r.throughput) {
    add('zero-loss throughput, O2 ÷ B2', r.throughput.ratio, (r.throughput.ratio ?? 0) >= 2, '≥ 2');
    add('threadsafe-function calls per event at saturation', r.throughput.O2.batchesPerEvent, (r.throughput.O2.batchesPerEvent ?? 1) <= 1 / 64, '≤ 1/64');
  }
  if (r.storm) add('unexplained events in the storm (ours)', r.storm.O2.unexplained, r.storm.O2.unexplained === 0, '= 0');
  if (r.latency) {
    add('latency p99 at 1k/s (ms)', r.latency.p99 / 1e6, r.latency.p99 / 1e6 < 1, '< 1 ms');
    add('latency p50 at 1k/s (ms)', r.latency.p50 / 1e6, r.latency.p50 / 1e6 < 0.1, '< 0.1 ms');
  }
  if (r.startup) {
    add('start-up to first event, O2 ÷ B2', r.startup.ratio.median, r.startup.ratio.median <= 0.5, '≤ 0.5');
    add('start-up to first event, `watch --json`: C1 ÷ B2', r.startup.cliRatio.median, r.startup.cliRatio.median <= 1, '≤ 1.0');
  }
  if (r.memory) add('peak RSS, O2 ÷ B2', r.memory.rssRatio, r.memory.rssRatio <= 1, '≤ 1.0');
  return g;
}

const fmt = (x, d = 2) => (x === null || x === undefined ? '–' : typeof x === 'number' ? (Math.abs(x) >= 1000 ? x.toFixed(0) : x.toFixed(d)) : String(x));
const mm = (s, d) => `${fmt(s.median, d)} (${fmt(s.min, d)}–${fmt(s.max, d)})`;

function markdown(r) {
  const out = [`# chroot-guard benchmarks: ${r.date}${r.label ? ` (${r.label})` : ''}`, '', `Kernel ${r.kernel}, ${r.cpus} CPUs, bpftrace ${r.bpftrace}, node ${process.version}. Medians of ${r.rounds} alternated rounds (min–max).`, ''];
  if (r.goals.length) {
    out.push('## Goals', '', '| goal | measured | target | |', '|---|---|---|---|');
    for (const g of r.goals) out.push(`| ${g.name} | ${fmt(g.value, 3)} | ${g.target} | ${g.pass ? 'pass' : 'miss'} |`);
    out.push('');
  }
  for (const sc of ['chroot', 'getpid']) {
    const c = r.cost?.[sc];
    if (!c) continue;
    const n = c.ratioToB2n;
    out.push(`## Cost per ${sc}(2) (${c.calls} calls)`, '', `| contender | ns per call | added ns | added ÷ B2 added |${n ? ' added ÷ B2n added |' : ''}`, `|---|---|---|---|${n ? '---|' : ''}`);
    for (const k of Object.keys(c.nsPerCall)) {
      const toB2n = n ? ` ${n[k] ? mm(n[k], 2) : k === 'B2n' ? '1' : '–'} |` : '';
      out.push(`| ${k} | ${mm(c.nsPerCall[k], 0)} | ${c.addedNs[k] ? mm(c.addedNs[k], 0) : '–'} | ${c.ratioToB2[k] ? mm(c.ratioToB2[k], 2) : k === 'B2' ? '1' : '–'} |${toB2n}`);
    }
    if (n) out.push('', 'B2n is B2 writing to /dev/null; C1 is `chroot-guard watch --json` and C2 `chroot-guard watch` (table), both writing to /dev/null: the CLI against bpftrace with the same sink.');
    if (c.raw) out.push('', 'B3, O1c, O2c here ran unpinned; B3\'s cost depends on the CPU the workload lands on: see the raw-syscall coverage section, pinned per CPU.');
    out.push('');
  }
  const g = r.cost?.getpid?.raw;
  if (g) {
    const cpuNames = Array.from({ length: g.cpus }, (_, i) => `CPU ${i}`).join(' / ');
    out.push(
      '## Raw-syscall coverage (compat in tracepoint mode): what it adds to every syscall',
      '',
      'Seeing 32-bit compat (`int $0x80`) and x32 chroot calls in tracepoint mode takes programs on raw `sys_enter`/`sys_exit`, which every syscall of the host then passes through. Measured on getpid(2) in the same alternated rounds as above, with the workload pinned to each CPU in turn (ns: the mean over the CPUs, whose syscalls all pay it): B3 is the bpftrace a user would write for it, O1c and O2c are O1 and O2 with `compat: true` in tracepoint mode, O1 and O2 are as above (compat off). bpftrace\'s tracepoint perf events sit on one CPU, whose syscalls pay more than the others\': with more CPUs its mean falls toward its cheapest CPU, so compare per CPU too.',
      '',
      `| contender | ns per getpid | added ns vs B0 | time ÷ B0 | added ÷ B3 added | added by compat (O1c − O1, O2c − O2) | added ns per CPU (${cpuNames}) | added ÷ B3 added per CPU (${cpuNames}) |`,
      '|---|---|---|---|---|---|---|---|',
    );
    out.push(`| B0 | ${mm(g.nsPerCall.B0, 0)} | – | 1 | – | – | – | – |`);
    for (const k of RAW.slice(1)) {
      const perCpu = (xs, d) => xs.map((x) => fmt(x.median, d)).join(' / ');
      out.push(`| ${k} | ${mm(g.nsPerCall[k], 0)} | ${mm(g.addedNs[k], 0)} | ${mm(g.timesB0[k], 2)} | ${g.ratioToB3[k] ? mm(g.ratioToB3[k], 2) : k === 'B3' ? '1' : '–'} | ${g.addedByCompat[k] ? mm(g.addedByCompat[k], 0) : '–'} | ${perCpu(g.addedNsPerCpu[k], 0)} | ${g.ratioToB3PerCpu[k] ? perCpu(g.ratioToB3PerCpu[k], 2) : k === 'B3' ? '1' : '–'} |`);
    }
    const ch = r.cost.chroot;
    if (ch?.addedByCompat) out.push('', `Per chroot(2) (unpinned, table above), compat adds ${mm(ch.addedByCompat.O1c, 0)} ns to O1 and ${mm(ch.addedByCompat.O2c, 0)} ns to O2.`);
    out.push('');
  }
  if (r.throughput) {
    out.push('## Zero-loss throughput (ramp, 2 s per step)', '', '| contender | highest zero-loss rate (/s) | events per threadsafe-function call at saturation |', '|---|---|---|');
    for (const k of ['B2', 'O2']) out.push(`| ${k} | ${fmt(r.throughput[k].zeroLossRate, 0)} | ${fmt(r.throughput[k].eventsPerBatch, 1)} |`);
    out.push('', `O2 ÷ B2: ${fmt(r.throughput.ratio)}`, '');
  }
  if (r.storm) {
    out.push(`## Two-process storm (${r.storm.seconds} s, ${r.storm.bufferBytes} bytes of kernel buffer each)`, '', '| contender | generated | delivered | reported lost | loss fraction | unexplained |', '|---|---|---|---|---|---|');
    for (const k of ['B2', 'O2']) {
      const s = r.storm[k];
      out.push(`| ${k} | ${s.generated} | ${s.delivered} | ${s.reportedLost} | ${fmt(s.lossFraction, 4)} | ${s.unexplained} |`);
    }
    out.push('', `Loss fraction O2 ÷ B2: ${fmt(r.storm.lossRatio)}`, '');
  }
  if (r.latency) {
    const ms = (s) => ({ median: s.median / 1e6, min: s.min / 1e6, max: s.max / 1e6 });
    const spread = r.latency.p99Rounds ? ` Medians of ${r.latency.rounds.length} rounds (min–max over rounds): p50 ${mm(ms(r.latency.p50Rounds), 3)} ms, p99 ${mm(ms(r.latency.p99Rounds), 3)} ms.` : '';
    out.push('## Latency at 1,000 events/s (kernel timestamp to subscriber)', '', `p50 ${fmt(r.latency.p50 / 1e6, 3)} ms, p99 ${fmt(r.latency.p99 / 1e6, 3)} ms, max ${fmt(r.latency.max / 1e6, 3)} ms over ${r.latency.n} events.${spread}`, '');
  }
  if (r.startup) {
    const b = r.startup.o2Breakdown;
    out.push('## Start-up to the first event', '', `B2 ${mm(r.startup.msToFirstEvent.B2, 0)} ms, O2 ${mm(r.startup.msToFirstEvent.O2, 0)} ms, C1 (\`watch --json\`) ${mm(r.startup.msToFirstEvent.C1, 0)} ms; O2 ÷ B2 ${mm(r.startup.ratio, 2)}, C1 ÷ B2 ${mm(r.startup.cliRatio, 2)}.`, `O2 breakdown (medians): node start ${fmt(b.nodeStartMs, 0)} ms, import (addon load) ${fmt(b.importMs, 0)} ms, load + verify + attach ${fmt(b.loadVerifyAttachMs, 0)} ms, to first event ${fmt(b.firstEventMs, 0)} ms.`, '');
  }
  if (r.memory) {
    out.push(`## Memory (kernel buffer ${r.memory.bufferBytes} bytes each)`, '', '| contender | peak RSS | programs (memlock) | maps (memlock) |', '|---|---|---|---|');
    for (const k of ['B2', 'O2']) out.push(`| ${k} | ${fmt(r.memory[k].peakRssBytes.median / 1048576, 1)} MiB | ${r.memory[k].kernelMemlockBytes.programs} B | ${r.memory[k].kernelMemlockBytes.maps} B |`);
    out.push('', `Peak RSS O2 ÷ B2: ${fmt(r.memory.rssRatio)}`, '');
  }
  if (r.programs) {
    out.push(
      `## Where the added cost per chroot goes (${r.programs.calls} calls, \`kernel.bpf_stats_enabled\` on)`,
      '',
      'Each contender\'s BPF programs: their run time over the calls, against the whole time the contender added in the same run. The rest is the tracepoints\' dispatch, the stats\' own clock reads (two per program run), wakeups and the consumer\'s share of the 2 CPUs.',
      '',
      '| contender | added ns | in its BPF programs | rest | per program |',
      '|---|---|---|---|---|',
    );
    for (const [k, c] of Object.entries(r.programs.contenders)) {
      const per = Object.entries(c.programs).map(([n, s]) => `${n} ${fmt(s.median, 0)}`).join(', ') || '–';
      out.push(`| ${k} | ${mm(c.addedNs, 0)} | ${mm(c.inProgramsNs, 0)} | ${fmt(c.addedNs.median - c.inProgramsNs.median, 0)} | ${per} |`);
    }
    out.push('');
  }
  if (r.vm) {
    out.push(`## In the VM (${r.vm.kernel}): cost per chroot relative to the tracepoint variant`, '', '| variant | ns per call | added ÷ tracepoint added |', '|---|---|---|');
    for (const k of Object.keys(r.vm.nsPerCall)) out.push(`| ${k} | ${mm(r.vm.nsPerCall[k], 0)} | ${r.vm.relativeToTracepoint[k] ? mm(r.vm.relativeToTracepoint[k], 2) : '–'} |`);
    out.push('');
  }
  out.push('Contenders: B0 no probe; B1 bpftrace printf on sys_enter_chroot; B2 bpftrace enter+exit printing pid, comm, path, ret; O1 chroot-guard kernel side, ring buffer drained by the Rust thread, no JS; O2 full path into a JS chrootWatch() subscriber; B3 bpftrace on raw_syscalls sys_enter/sys_exit filtered to id 61 (the ia32 chroot), printing as B2; O1c, O2c O1 and O2 with compat (raw sys_enter/sys_exit programs) in tracepoint mode.');
  return out.join('\n') + '\n';
}

function chart(r, svg) {
  const c = r.cost?.chroot;
  const t = r.throughput;
  if (!c || !t || spawnSync('gnuplot', ['--version']).status !== 0) return false;
  mkdirSync(join(ROOT, 'target/bench'), { recursive: true });
  const dat = join(ROOT, 'target/bench/chart.dat');
  const rows = ['B1', 'B2', 'O1', 'O2'].map((k) => `${k} ${c.addedNs[k].median.toFixed(0)} ${k === 'B2' || k === 'O2' ? t[k].zeroLossRate.toFixed(0) : 0}`);
  writeFileSync(dat, rows.join('\n') + '\n');
  const script = `set terminal svg size 900,360 dynamic font "sans,11"
set output '${svg}'
set multiplot layout 1,2 title "chroot-guard vs bpftrace (${r.date})"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set yrange [0:*]
set grid ytics
set title "added ns per chroot (lower is better)"
plot '${dat}' using 2:xtic(1) notitle lc rgb "#4e79a7"
set title "zero-loss throughput into the consumer, events/s (higher is better)"
plot '${dat}' every ::1::1 using 3:xtic(1) notitle lc rgb "#f28e2b", '' every ::3::3 using 3:xtic(1) notitle lc rgb "#59a14f"
unset multiplot
`;
  const g = spawnSync('gnuplot', [], { input: script, encoding: 'utf8' });
  return g.status === 0;
}

/** Every earlier run, oldest first, with its goals: the before and after of each change. */
function history(dir) {
  const runs = readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')));
  if (runs.length < 2) return '';
  const names = runs[runs.length - 1].goals.map((g) => g.name);
  const rows = runs.map(
    (r) => `| [${r.date}](results/${r.date}.md) | ${r.label || ''} | ${names.map((n) => {
      const g = r.goals.find((x) => x.name === n);
      return g ? `${fmt(g.value, 3)}${g.pass ? '' : ' (miss)'}` : '–';
    }).join(' | ')} |`,
  );
  return ['## History (before and after)', '', `| run | change | ${names.join(' | ')} |`, `|---|---|${names.map(() => '---').join('|')}|`, ...rows, ''].join('\n');
}

// ----------------------------------------------------------------------------

async function main() {
  for (const f of [WORKLOAD, ...(flag('--vm') ? [DRAIN] : [DRAIN, O2])]) if (!existsSync(f)) throw new Error(`${f} is missing: run cargo xtask bench`);
  const date = new Date().toISOString().slice(0, 19).replace(/:/g, '-');
  const r = {
    date,
    label: opt('--label', ''),
    kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(),
    cpus: cpus(),
    bpftrace: flag('--vm') ? null : execFileSync('bpftrace', ['--version'], { encoding: 'utf8' }).trim(),
    rounds: ROUNDS,
  };
  const started = Date.now();
  if (flag('--vm')) {
    r.vm = { kernel: r.kernel, ...(await vmCosts()) };
    process.stdout.write(JSON.stringify(r.vm) + '\n');
    return;
  }
  if (want('cost')) r.cost = { chroot: await cost('chroot'), getpid: await cost('getpid') };
  if (want('throughput')) r.throughput = await throughput();
  if (want('storm')) r.storm = await storm();
  if (want('latency')) r.latency = await latency();
  if (want('startup')) r.startup = await startup();
  if (want('memory')) r.memory = await memory();
  if (want('programs')) r.programs = await inPrograms();
  const vmFile = opt('--vm-results');
  if (vmFile && existsSync(vmFile)) r.vm = JSON.parse(readFileSync(vmFile, 'utf8'));
  r.goals = goals(r);
  r.seconds = (Date.now() - started) / 1000;
  if (QUICK || ONLY.length) {
    // Partial or smoke runs print only; the results page holds full runs.
    process.stdout.write(markdown(r));
    for (const g of r.goals) log(`${g.pass ? 'pass' : 'MISS'}: ${g.name}: ${fmt(g.value, 3)} (target ${g.target})`);
    return;
  }
  const dir = join(ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  const base = join(dir, date);
  writeFileSync(`${base}.json`, JSON.stringify(r, null, 2) + '\n');
  const md = markdown(r);
  writeFileSync(`${base}.md`, md);
  const hasChart = chart(r, `${base}.svg`);
  writeFileSync(
    join(ROOT, 'bench/RESULTS.md'),
    `${md}\n${hasChart ? `![cost per chroot and zero-loss throughput](results/${date}.svg)\n\n` : ''}Raw figures: [results/${date}.json](results/${date}.json). Run again with \`npm run bench\` (\`cargo xtask bench\`, \`--vm\` for the VM part).\n\n${history(dir)}`,
  );
  process.stdout.write(md);
  for (const g of r.goals) log(`${g.pass ? 'pass' : 'MISS'}: ${g.name}: ${fmt(g.value, 3)} (target ${g.target})`);
  log(`done in ${r.seconds.toFixed(0)} s; wrote ${base}.{json,md${hasChart ? ',svg' : ''}} and bench/RESULTS.md`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main().catch((e) => {
  process.stderr.write(`bench: ${e.stack ?? e}\n`);
  process.exit(1);
});

export { history, markdown };

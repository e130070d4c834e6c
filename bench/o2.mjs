// Contender O2 of the benchmarks: the full path into JavaScript, a
// chrootWatch() subscriber that counts events (per pid when --pids is given).
// Prints `phase <name> <monotonic ns>` lines while starting, then, when stdin
// closes, one JSON line: events seen, the session's totals, and latencies
// (kernel timestamp to the subscriber, ns) when --latency is given.
//
//   node bench/o2.mjs [--ring-buffer-bytes N] [--latency] [--mode M] [--compat]
//
// --compat is chrootWatch's `compat: true` (in tracepoint mode, the raw
// sys_enter/sys_exit programs for 32-bit compat and x32 calls: the bench's
// "O2c"). The totals name the attached mode and its blind spots.
import { readFileSync } from 'node:fs';

const phase = (name) => process.stdout.write(`phase ${name} ${process.hrtime.bigint()}\n`);
phase('started');
const { chrootWatch, boottimeNs } = await import('../dist/index.js');
phase('imported');

const arg = (name) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
};
const ring = arg('--ring-buffer-bytes');
const latency = process.argv.includes('--latency');
const mode = arg('--mode') ?? 'auto';
const compat = process.argv.includes('--compat');
const byPid = new Map();
const latencies = [];
let events = 0;
let lost = { ringBufferFull: 0, pendingFull: 0, kretprobeMissed: 0, recursionMissed: 0, lsmErrors: 0, allowLost: 0, denyLost: 0, auditLost: 0 };
let stats = () => ({});
let attached = { mode: null, blindSpots: [] };
let first = true;
// Monotonic and boot clocks differ by a constant while the machine is awake.
const offset = boottimeNs() - process.hrtime.bigint();

const sub = chrootWatch({
  mode,
  ...(ring ? { ringBufferBytes: Number(ring) } : {}),
  ...(compat ? { compat: true } : {}),
  onAttach: (info) => {
    stats = info.stats;
    attached = info;
    phase(`attached:${info.mode}`);
  },
  onLost: (r) => (lost = r.total),
}).subscribe((e) => {
  events++;
  byPid.set(e.pid, (byPid.get(e.pid) ?? 0) + 1);
  if (first) {
    first = false;
    phase('first-event');
  }
  if (latency) latencies.push(Number(process.hrtime.bigint() + offset - e.ts));
});

process.stdin.resume();
process.stdin.on('end', () => {
  // Let the last batches arrive.
  setTimeout(() => {
    const s = stats();
    sub.unsubscribe();
    latencies.sort((a, b) => a - b);
    const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] : null);
    const rss = Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
    process.stdout.write(
      JSON.stringify({ mode: attached.mode, blindSpots: attached.blindSpots.length, events, byPid: Object.fromEntries(byPid), ...s, lost, latency: { n: latencies.length, p50: pct(50), p99: pct(99), max: latencies.at(-1) ?? null }, peakRssBytes: rss }) + '\n',
    );
  }, 300);
});

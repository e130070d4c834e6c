/**
 * `watch`'s lines have two writers: the addon's reader thread
 * (`crates/loader/src/lines.rs`), which the CLI runs, and the TypeScript
 * writers (`tableLine` in ts/cli/output.ts; `chrootRecord`, `lostRecord`
 * in ts/cli/records.ts, which the schema tests hold to events.schema.json).
 * Here they meet on generated input, byte for byte: records encoded in the
 * kernel's layout (the addon's `eventLayout()`) with every flag, any bytes
 * in the paths and names (invalid UTF-8, controls, backslashes, C1 and
 * format characters, wide characters), integers at the edges of their
 * ranges; sequences of loss counter totals; and cgroup paths built from the
 * runtimes' and the kubelet's names. Needs the addon, no kernel program.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { lostSince, NO_LOSS, type LossCounts } from '../ts/batch.js';
import { containerOf } from '../ts/cgroup.js';
import { tableLine } from '../ts/cli/output.js';
import { addonLines } from '../ts/cli/printer.js';
import { chrootRecord, lostRecord } from '../ts/cli/records.js';
import { zoneOffsets } from '../ts/clock.js';
import { decoder, displayBytes, type ChrootEvent } from '../ts/events.js';
import { native } from '../ts/native.js';
import { bindingOutput } from '../ts/session.js';

const L = native().eventLayout();
/** What the CLI hands the addon, as the binding takes it. */
const output = (json: boolean) => bindingOutput(addonLines(json));
const json = () => output(true);
const table = () => output(false);

/** Bytes real names take, and those that need escaping in each form. */
const piece = fc.oneof(
  fc.constantFrom('/', 'a', 'bin', '\\', '"', '\n', '\x1b', '\x7f', '\u009b', '\u061c', '\u200e', '\u2028', '\u202e', '\u2066', 'é', '😀', '\\x41', ' '),
  fc.string({ maxLength: 8 }),
);
const nameBytes = (max: number) =>
  fc.oneof(
    fc.array(piece, { maxLength: 12 }).map((p) => Buffer.from(p.join(''), 'utf8').subarray(0, max)),
    fc.uint8Array({ maxLength: max }).map((b) => Buffer.from(b)),
  );
const u16 = fc.oneof(fc.constantFrom(0, 0xffff), fc.nat({ max: 0xffff }));
const u32 = fc.oneof(fc.constantFrom(0, 1, 0xffffffff), fc.nat({ max: 0xffffffff }));
const u64 = fc.oneof(fc.constantFrom(0n, 1n, 2n ** 53n + 1n, 2n ** 64n - 1n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));
// chroot(2) returns 0 or -errno; other values as far as a JS number is exact.
const ret = fc.oneof(fc.integer({ min: -4200, max: 0 }), fc.integer({ min: -(2 ** 53) + 1, max: 2 ** 53 - 1 }));
const i32 = fc.oneof(fc.constantFrom(-2147483648, -1, 0, 2147483647), fc.integer({ min: -2147483648, max: 2147483647 }));

const record = fc.record({
  mode: fc.oneof(fc.constantFrom(L.mode_fentry!, L.mode_kprobe!, L.mode_tracepoint!), fc.nat({ max: 255 })),
  flags: u32,
  exeFlags: u16,
  numbers: fc.array(u32, { minLength: 13, maxLength: 13 }),
  wide: fc.array(u64, { minLength: 4, maxLength: 4 }),
  ret,
  lsmRet: i32,
  // 1 is the root cgroup (found, where the lookup may be made); others
  // are removed (or the lookup failed), the same for both writers.
  cgroupId: fc.oneof(fc.constant(1n), u64),
  comm: nameBytes(16),
  parentComm: nameBytes(16),
  path: nameBytes(L.path_max! - 1),
  resolved: nameBytes(200),
  exe: nameBytes(200),
  parentExe: nameBytes(200),
});

const U32_FIELDS = ['pid', 'tid', 'ppid', 'uid', 'gid', 'euid', 'egid', 'mnt_ns', 'pid_ns', 'exe_dev', 'user_ns', 'ns_pid', 'ns_tid'] as const;
const U64_FIELDS = ['enter_ns', 'ts_ns', 'exe_ino', 'arg_addr'] as const;

type Record = typeof record extends fc.Arbitrary<infer R> ? R : never;

/** One batch (`[u32 length][u32 0][record][pad to 8]`…) of `records` in the kernel's layout. */
function batchOf(records: Record[]): Buffer {
  const parts: Buffer[] = [];
  for (const r of records) {
    const data = Buffer.concat([r.path, r.resolved, r.exe, r.parentExe]);
    const rec = Buffer.alloc(L.header! + data.length);
    rec.writeUInt8(L.kind_chroot!, L.kind!);
    rec.writeUInt8(r.mode, L.mode!);
    rec.writeUInt16LE(r.path.length, L.path_len!);
    rec.writeUInt16LE(r.resolved.length, L.resolved_len!);
    rec.writeUInt16LE(r.exe.length, L.exe_len!);
    rec.writeUInt16LE(r.parentExe.length, L.parent_exe_len!);
    rec.writeUInt16LE(r.exeFlags, L.exe_flags!);
    rec.writeUInt32LE(r.flags, L.flags!);
    U32_FIELDS.forEach((f, i) => rec.writeUInt32LE(r.numbers[i]!, L[f]!));
    U64_FIELDS.forEach((f, i) => rec.writeBigUInt64LE(r.wide[i]!, L[f]!));
    rec.writeBigUInt64LE(r.cgroupId, L.cgroup_id!);
    rec.writeBigInt64LE(BigInt(r.ret), L.ret!);
    rec.writeInt32LE(r.lsmRet, L.lsm_ret!);
    r.comm.copy(rec, L.comm!, 0, L.comm_len!);
    r.parentComm.copy(rec, L.parent_comm!, 0, L.comm_len!);
    data.copy(rec, L.data!);
    const head = Buffer.alloc(8);
    head.writeUInt32LE(rec.length, 0);
    parts.push(head, rec, Buffer.alloc((8 - (rec.length % 8)) % 8));
  }
  return Buffer.concat(parts);
}

const counts = fc.record({
  ringBufferFull: fc.nat({ max: 1e6 }),
  pendingFull: fc.nat({ max: 1e6 }),
  kretprobeMissed: fc.nat({ max: 1e6 }),
  recursionMissed: fc.nat({ max: 1e6 }),
  lsmErrors: fc.nat({ max: 1e6 }),
  allowLost: fc.nat({ max: 1e6 }),
  denyLost: fc.nat({ max: 1e6 }),
  auditLost: fc.nat({ max: 1e6 }),
});

const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const uid = fc.oneof(hex(32), fc.tuple(hex(8), hex(4), hex(4), hex(4), hex(12)).map((p) => p.join('-')));
const cgroupName = fc.oneof(
  fc.constantFrom('kubepods', 'kubepods.slice', 'kubepods-besteffort.slice', 'besteffort', 'burstable', 'docker', 'system.slice', 'init.scope', 'libpod_parent', ''),
  uid.map((u) => `kubepods-besteffort-pod${u.replaceAll('-', '_')}.slice`),
  uid.map((u) => `kubepods-pod${u.replaceAll('-', '_')}.slice`),
  uid.map((u) => `pod${u}`),
  fc.tuple(fc.constantFrom('cri-containerd-', 'crio-', 'crio-conmon-', 'docker-', 'libpod-', 'libpod-payload-', 'libpod-conmon-', ''), hex(64), fc.constantFrom('', '.scope', '.slice')).map((p) => p.join('')),
  fc.tuple(fc.string({ maxLength: 6 }), hex(64)).map(([a, id]) => `${a}:cri-containerd:${id}`),
  fc.string({ unit: fc.constantFrom(...'abcdef0123-_:.pod'), maxLength: 12 }),
);

describe('the decoder', () => {
  // It keeps each text field's last plain text and gives it again when the
  // bytes are the same (`LastText` in ts/events.ts): names from a small
  // pool, so that records repeat them, differ in one byte at equal length,
  // and go from plain to escaped and back.
  const pool = fc.constantFrom(...['perl', 'perk', 'perl\\', 'per\x01', '/', '\\', '/srv/jail', '/srv/jaiL', '/srv/j\xe9il', 'bash', ''].map((t) => Buffer.from(t, 'latin1')));
  it('gives every text field as displayBytes of its bytes, across batches that repeat names', () =>
    fc.assert(
      fc.property(fc.array(fc.array(fc.tuple(record, pool, pool, pool, pool), { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 4 }), (batches) => {
        for (const b of batches) {
          const events = decoder().decodeBatch(batchOf(b.map(([r, comm, parentComm, path, exe]) => ({ ...r, comm, parentComm, path, exe, parentExe: exe }))));
          for (const e of events) {
            expect(e.comm).toBe(displayBytes(e.commBytes));
            expect(e.parentComm).toBe(displayBytes(e.parentCommBytes));
            expect(e.path).toBe(displayBytes(e.pathBytes));
            expect(e.resolvedPath).toBe(e.resolvedPathBytes && displayBytes(e.resolvedPathBytes));
            expect(e.exe).toBe(e.exeBytes && displayBytes(e.exeBytes));
            expect(e.parentExe).toBe(e.parentExeBytes && displayBytes(e.parentExeBytes));
          }
        }
      }),
      { numRuns: 500 },
    ));
});

describe('the addon writes watch\'s lines as the TypeScript writers do', () => {
  /**
   * Generated batches: the addon's lines in `output`'s format against
   * `line` of each decoded event; `ts`, where given, sets each record's
   * time.
   */
  const sameLines = (output: () => ReturnType<typeof json>, line: (e: ChrootEvent) => string, ts?: fc.Arbitrary<bigint>) =>
    fc.assert(
      fc.property(fc.array(ts ? fc.tuple(record, ts).map(([r, t]) => ({ ...r, wide: [r.wide[0]!, t, r.wide[2]!, r.wide[3]!] })) : record, { minLength: 1, maxLength: 8 }), (records) => {
        const batch = batchOf(records);
        const expected = decoder().decodeBatch(batch).map((e) => line(e) + '\n').join('');
        expect(native().outputLines(batch, output(), []).toString('utf8')).toBe(expected);
      }),
      { numRuns: 300 },
    );

  it('--json: chroot records, byte for byte', () => sameLines(json, chrootRecord));

  // The machine's zone; half-hour offsets, with and without daylight
  // saving time (Lord Howe's moves by 30 minutes); zones that change; a
  // POSIX rule, which libc would read and Node.js's ICU does not: the
  // addon takes its offsets from JavaScript, so all print alike.
  const zones = [undefined, 'Asia/Kolkata', 'Australia/Lord_Howe', 'America/St_Johns', 'Europe/Berlin', 'CET-1CEST,M3.5.0,M10.5.0/3'];
  it.each(zones)('the table: rows, byte for byte, also across offset changes (TZ %s)', (tz) => {
    const saved = process.env.TZ;
    if (tz) process.env.TZ = tz;
    try {
      // Any time: before and after the window the offsets cover, the
      // first and the last offset hold, which for most zones is not what
      // JavaScript prints there; the machine's zone (UTC in CI) has one.
      if (tz === undefined && zoneOffsets(0, 2 ** 41).length === 2) sameLines(table, tableLine);
      // Times within the window, and a millisecond either side of each
      // change of offset in it.
      const o = table();
      const offsetNs = o.wallOffsetNs!;
      const tsOf = (ms: number) => BigInt(ms) * 1_000_000n - offsetNs;
      const changes = o.zone!.filter((_, i) => i % 2 === 0).slice(1);
      const lo = tsOf(o.zone![0]!) > 0n ? tsOf(o.zone![0]!) : 0n;
      const within = fc.bigInt({ min: lo, max: tsOf(Date.now() + 2 * 366 * 86_400_000) });
      const edges = changes.length ? fc.constantFrom(...changes.flatMap((ms) => [tsOf(ms - 1), tsOf(ms)]).filter((t) => t >= 0n)) : within;
      sameLines(table, tableLine, fc.oneof(within, edges));
    } finally {
      if (saved === undefined) delete process.env.TZ;
      else process.env.TZ = saved;
    }
  });

  it('lost records: the same reports at the same totals', () => {
    fc.assert(
      fc.property(fc.array(counts, { maxLength: 10 }), (totals) => {
        let seen: LossCounts = NO_LOSS;
        let since = 0n;
        let expected = '';
        totals.forEach((t, i) => {
          const report = lostSince(seen, t);
          if (!report) return;
          expected += lostRecord(report, since, BigInt(i + 1)) + '\n';
          since = BigInt(i + 1);
          seen = report.total;
        });
        expect(native().outputLines(Buffer.alloc(0), json(), totals).toString('utf8')).toBe(expected);
      }),
      { numRuns: 300 },
    );
  });

  it('containers and pods from cgroup paths', () => {
    fc.assert(
      fc.property(fc.array(cgroupName, { maxLength: 7 }), fc.boolean(), (names, rooted) => {
        const path = (rooted ? '/' : '') + names.join('/');
        const r = native().nativeContainerOf(path);
        expect({ containerRuntime: r.containerRuntime ?? null, containerId: r.containerId ?? null, podUid: r.podUid ?? null }).toEqual({ ...containerOf(path) });
      }),
      { numRuns: 2000 },
    );
  });
});

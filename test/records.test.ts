/**
 * The NDJSON records of `--json` (ts/cli/records.ts) are written by
 * serializers compiled from events.schema.json. Here they meet an oracle
 * built independently, on generated events and decisions: the record
 * object in the schema's property order (each `…Base64` field from its
 * `…Bytes` Buffer) through `jsonWithBigInts`, the general writer. Strings
 * come from every UTF-16 code unit (controls, C1, format characters, lone
 * surrogates), integers from the edges of their ranges, bigints up to
 * 2^64 − 1. Each output line must also pass the schema. Pure: no kernel.
 */
import { createRequire } from 'node:module';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { chrootRecord, decisionRecord } from '../ts/cli/records.js';
import { jsonWithBigInts } from '../ts/cli/output.js';
import type { ChrootDecision } from '../ts/decision.js';
import type { ChrootEvent } from '../ts/events.js';
import { ndjson } from './helpers.js';

const schema = createRequire(import.meta.url)('../events.schema.json') as { definitions: Record<string, { properties: Record<string, unknown> }> };

/**
 * Any UTF-16 string, mostly printable ASCII (with `"` and `\`, which JSON
 * escapes) as real paths are, with C0, DEL, C1 and any other code unit
 * (format characters, lone surrogates) mixed in.
 */
const unit = (min: number, max: number) => fc.integer({ min, max }).map((c) => String.fromCharCode(c));
const anyString = fc.string({
  unit: fc.oneof({ arbitrary: unit(0x20, 0x7e), weight: 8 }, { arbitrary: fc.constantFrom('"', '\\'), weight: 1 }, { arbitrary: unit(0, 0x1f), weight: 1 }, { arbitrary: unit(0x7f, 0x9f), weight: 1 }, { arbitrary: unit(0xa0, 0xffff), weight: 1 }),
  maxLength: 40,
});
const bytes = fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b));
const u32 = fc.oneof(fc.constantFrom(0, 1, 0xffffffff), fc.nat({ max: 0xffffffff }));
const i32 = fc.oneof(fc.constantFrom(-2147483648, -1, 0, 2147483647), fc.integer());
const u64 = fc.oneof(fc.constantFrom(0n, 2n ** 53n + 1n, 2n ** 64n - 1n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));
const orNull = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null });
const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const podUid = fc.oneof(hex(32), fc.tuple(hex(8), hex(4), hex(4), hex(4), hex(12)).map((p) => p.join('-')));

const event: fc.Arbitrary<ChrootEvent> = fc.record({
  ts: u64, enterTs: u64, pid: u32, tid: u32, nsPid: u32, nsTid: u32, ppid: u32,
  uid: u32, gid: u32, euid: u32, egid: u32,
  comm: anyString, commBytes: bytes, cgroupId: u64, mntNs: u32, pidNs: u32, userNs: u32,
  cgroupPath: orNull(anyString), cgroupLookup: fc.constantFrom('found', 'removed', 'failed', null),
  containerRuntime: fc.constantFrom('containerd', 'cri-o', 'docker', 'podman', 'unknown', null), containerId: orNull(hex(64)), podUid: orNull(podUid),
  exeDev: u32, exeIno: u64, exeUnknown: fc.boolean(), exe: orNull(anyString), exeBytes: orNull(bytes),
  exeTruncated: fc.boolean(), exeUnreachable: fc.boolean(), exeDeleted: fc.boolean(), exeMemfd: fc.boolean(),
  parentComm: anyString, parentCommBytes: bytes, parentExe: orNull(anyString), parentExeBytes: orNull(bytes),
  parentExeTruncated: fc.boolean(), parentExeUnreachable: fc.boolean(), parentExeDeleted: fc.boolean(), parentExeMemfd: fc.boolean(),
  path: anyString, pathBytes: bytes, pathTruncated: fc.boolean(), pathUnreadable: fc.boolean(), pathReadLate: fc.boolean(),
  resolvedPath: orNull(anyString), resolvedPathBytes: orNull(bytes), resolvedPathTruncated: fc.boolean(), resolvedPathUnreachable: fc.boolean(),
  callerChrooted: fc.boolean(), escapesRoot: orNull(fc.boolean()), cwdOutsideRoot: orNull(fc.boolean()),
  ret: i32, errno: orNull(anyString), lsmRet: orNull(i32), probe: fc.constantFrom('fentry', 'kprobe', 'tracepoint'),
});

const decision: fc.Arbitrary<ChrootDecision> = fc
  .tuple(event, fc.record({
    action: fc.constantFrom('allow', 'deny', 'audit'), ruleId: orNull(anyString), reason: fc.constantFrom('rule', 'default', 'internal-error', 'policy-torn'),
    error: orNull(anyString), initialNamespaces: fc.boolean(), denied: fc.boolean(), wouldDeny: fc.boolean(),
    policyMode: fc.constantFrom('enforce', 'audit'), generation: u32, source: fc.constantFrom('lsm', 'watch'),
  }))
  .map(([{ ret: _r, errno: _e, lsmRet: _l, probe: _p, enterTs: _t, ...identity }, verdict]) => ({ ...identity, ...verdict }) as ChrootDecision);

/** The oracle: the schema's properties in order, through the general writer. */
function oracle(type: 'chroot' | 'decision', x: object): string {
  const source = x as Record<string, unknown>;
  const record: Record<string, unknown> = {};
  for (const key of Object.keys(schema.definitions[type]!.properties)) {
    if (key === 'type') record.type = type;
    else if (key.endsWith('Base64')) {
      const b = source[key.replace(/Base64$/, 'Bytes')] as Buffer | null;
      record[key] = b === null ? null : b.toString('base64');
    } else record[key] = source[key];
  }
  return jsonWithBigInts(record);
}

describe('compiled NDJSON serializers', () => {
  const kinds = [
    ['chroot', event, chrootRecord],
    ['decision', decision, decisionRecord],
  ] as Array<['chroot' | 'decision', fc.Arbitrary<object>, (x: never) => string]>;
  for (const [type, arbitrary, write] of kinds) {
    it(`write a ${type} record exactly as the oracle does, and as the schema says`, () => {
      fc.assert(
        fc.property(arbitrary, (x) => {
          const line = write(x as never);
          expect(line).toBe(oracle(type, x));
          ndjson(line); // throws where the line does not fit the schema
        }),
        { numRuns: 2000 },
      );
    });
  }

  describe('where code generation is disallowed (--disallow-code-generation-from-strings)', () => {
    const realFunction = globalThis.Function;
    afterEach(() => {
      globalThis.Function = realFunction;
      vi.resetModules();
    });

    it('write the same records, field by field', async () => {
      // Fresh modules whose first use finds `new Function` throwing, as Node does under the flag.
      vi.resetModules();
      let refused = 0;
      globalThis.Function = function () {
        refused++;
        throw new EvalError('Code generation from strings disallowed for this context');
      } as unknown as FunctionConstructor;
      const records = await import('../ts/cli/records.js');
      const { decisionOf } = await import('../ts/decision.js');
      fc.assert(
        fc.property(event, decision, (e, d) => {
          expect(records.chrootRecord(e)).toBe(oracle('chroot', e));
          expect(records.decisionRecord(d)).toBe(oracle('decision', d));
          const { action, ruleId, reason, error, initialNamespaces, denied, policyMode, generation, source } = d;
          const verdict = { action, ruleId, reason, error, initialNamespaces, denied, policyMode, generation, source };
          const { ret: _r, errno: _n, lsmRet: _l, probe: _p, enterTs: _t, ...identity } = e;
          expect(decisionOf(e, verdict)).toEqual({ ...identity, ...verdict, wouldDeny: action === 'deny' });
        }),
        { numRuns: 300 },
      );
      // Tried once each: the two serializers, their two object builders, decisionOf.
      expect(refused).toBe(5);
    });
  });

  it('can fail: a record with a field changed differs from the oracle', () => {
    const e = fc.sample(event, 1)[0]!;
    expect(chrootRecord({ ...e, path: `${e.path}x` })).not.toBe(oracle('chroot', e));
  });
});

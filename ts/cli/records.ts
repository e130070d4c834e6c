/**
 * The CLI's NDJSON stream (`--json`): one record per line, each with a
 * `type` (`attach`, `chroot`, `decision`, `lost`), described by
 * `events.schema.json`. A pipeline that keeps stdout alone can account for
 * every call: `chroot` (or `decision`) records delivered plus the counts of
 * the `lost` records equal what the kernel saw.
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import { DECISION_FIELDS, type ChrootDecision } from '../decision.js';
import { CALL_FIELDS, IDENTITY_FIELDS, type ChrootEvent } from '../events.js';
import type { Refusal } from '../errors.js';
import type { LossCounts, LostReport } from '../batch.js';
import type { AttachInfo } from '../session.js';
import { jsonString, jsonWithBigInts } from './output.js';

/** The record kinds, as `type` names them. */
export type RecordType = 'attach' | 'chroot' | 'decision' | 'lost';

const refusal = (r: Refusal) => ({ mode: r.mode, program: r.program, target: r.target, stage: r.stage, code: r.code, errno: r.errno, reason: r.reason });

/** `attach`: which mode the programs run in (or `lsm` for the guard), why better ones were refused, and what they cannot see. */
export function attachRecord(ts: bigint, a: { mode: AttachInfo['mode'] | 'lsm'; refused?: readonly Refusal[]; blindSpots?: readonly Refusal[]; generation?: number; policyMode?: 'enforce' | 'audit' }): string {
  return jsonWithBigInts({
    type: 'attach',
    ts,
    mode: a.mode,
    refused: (a.refused ?? []).map(refusal),
    blindSpots: (a.blindSpots ?? []).map(refusal),
    ...(a.generation !== undefined ? { generation: a.generation } : {}),
    ...(a.policyMode !== undefined ? { policyMode: a.policyMode } : {}),
  });
}

/**
 * The fields `chroot` and `decision` records share (who called, with what,
 * and what the kernel resolved), each byte field as base64 in place of its
 * Buffer (`commBytes` → `commBase64`): key, and the expression on `e` that
 * gives its value.
 */
const IDENTITY: ReadonlyArray<readonly [string, string]> = IDENTITY_FIELDS.map((f) =>
  f.endsWith('Bytes') ? ([f.replace(/Bytes$/, 'Base64'), `e.${f} === null ? null : e.${f}.toString('base64')`] as const) : ([f, `e.${f}`] as const),
);

const require = createRequire(import.meta.url);

interface PropertySchema {
  type?: string | string[];
  const?: unknown;
  enum?: unknown[];
  oneOf?: PropertySchema[];
}

/** JavaScript that writes `value` (a local holding the field) as JSON, for a field the schema describes as `p`. */
function jsonOf(p: PropertySchema, value: string): string {
  const types = p.oneOf ? p.oneOf.flatMap((o) => o.type ?? []) : [p.type ?? (p.enum || p.const !== undefined ? 'string' : 'unknown')].flat();
  const nullable = types.includes('null');
  const kind = types.filter((t) => t !== 'null');
  let code: string;
  if (kind.length === 1 && kind[0] === 'integer') code = `'' + ${value}`; // number or bigint: exact either way
  else if (kind.length === 1 && kind[0] === 'boolean') code = `(${value} ? 'true' : 'false')`;
  else if (kind.length === 1 && kind[0] === 'string') code = `q(${value})`;
  else throw new Error(`events.schema.json: no serializer for a property of type ${JSON.stringify(p)}`);
  return nullable ? `(${value} === null ? 'null' : ${code})` : code;
}

/**
 * Compiles, once, the serializer of one record type: the JSON text of
 * `entries` (key, expression on `e`) in order, each value written as
 * `events.schema.json` types it, as one string concatenation: no object,
 * no replacer callback, no regular expression but {@link jsonString}'s
 * test, bigints written as they are. The same text as `jsonWithBigInts`
 * gives for the same record (test/records.test.ts checks it on generated
 * events).
 */
function compileRecord<T>(type: RecordType, entries: ReadonlyArray<readonly [string, string]>): (e: T) => string {
  const schema = require('chroot-guard/events.schema.json') as { definitions: Record<string, { properties: Record<string, PropertySchema> }> };
  const properties = schema.definitions[type]!.properties;
  const body = entries.map(([key, expression]) => {
    const p = properties[key];
    if (!p) throw new Error(`events.schema.json: the ${type} record has no property ${key}`);
    return `s += ${JSON.stringify(`,${JSON.stringify(key)}:`)}; v = ${expression}; s += ${jsonOf(p, 'v')};`;
  });
  return new Function('q', `return function ${type}Record(e) { let v; let s = ${JSON.stringify(`{"type":${JSON.stringify(type)}`)}; ${body.join(' ')} return s + '}'; };`)(jsonString) as (e: T) => string;
}

let chrootSerializer: ((e: ChrootEvent) => string) | undefined;
let decisionSerializer: ((d: ChrootDecision) => string) | undefined;

/** `chroot`: one chroot(2) call, every field of {@link ChrootEvent}. */
export function chrootRecord(e: ChrootEvent): string {
  chrootSerializer ??= compileRecord('chroot', [...IDENTITY, ...CALL_FIELDS.map((f) => [f, `e.${f}`] as const)]);
  return chrootSerializer(e);
}

/** `decision`: one decision of the guard, every field of {@link ChrootDecision}. */
export function decisionRecord(d: ChrootDecision): string {
  decisionSerializer ??= compileRecord('decision', [...IDENTITY, ...DECISION_FIELDS.map((f) => [f, `e.${f}`] as const)]);
  return decisionSerializer(d);
}

const counts = (c: LossCounts) => ({
  ringBufferFull: c.ringBufferFull,
  pendingFull: c.pendingFull,
  lsmErrors: c.lsmErrors,
  allowLost: c.allowLost,
  denyLost: c.denyLost,
  auditLost: c.auditLost,
});

/**
 * `lost`: what the kernel counted since the previous `lost` record (or the
 * attach), between `sinceTs` and `ts` (ns since boot, read when the counts
 * reached user space), and the running totals.
 */
export function lostRecord(report: LostReport, sinceTs: bigint, ts: bigint): string {
  return jsonWithBigInts({ type: 'lost', sinceTs, ts, ...counts(report), total: counts(report.total) });
}

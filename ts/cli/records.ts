/**
 * The CLI's NDJSON stream (`--json`): one record per line, each with a
 * `type` (`attach`, `chroot`, `decision`, `lost`), described by
 * `events.schema.json`. A pipeline that keeps stdout alone can account for
 * every call: `chroot` (or `decision`) records delivered plus the counts of
 * the `lost` records equal what the kernel saw.
 * @internal
 * @module
 */
import { DECISION_FIELDS, type ChrootDecision } from '../decision.js';
import { CALL_FIELDS, compileObject, IDENTITY_FIELDS, type ChrootEvent } from '../events.js';
import type { Refusal } from '../errors.js';
import type { LossCounts, LostReport } from '../batch.js';
import type { AttachInfo } from '../session.js';
import { jsonWithBigInts } from './output.js';

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
 * Buffer (`commBytes` → `commBase64`).
 */
const IDENTITY: ReadonlyArray<readonly [string, string]> = IDENTITY_FIELDS.map((f) =>
  f.endsWith('Bytes') ? ([f.replace(/Bytes$/, 'Base64'), `e.${f} === null ? null : e.${f}.toString('base64')`] as const) : ([f, `e.${f}`] as const),
);

const chrootObject = compileObject<(e: ChrootEvent) => object>(['e'], [['type', "'chroot'"], ...IDENTITY, ...CALL_FIELDS.map((f) => [f, `e.${f}`] as const)]);

const decisionObject = compileObject<(e: ChrootDecision) => object>(['e'], [['type', "'decision'"], ...IDENTITY, ...DECISION_FIELDS.map((f) => [f, `e.${f}`] as const)]);

/** `chroot`: one chroot(2) call, every field of {@link ChrootEvent}. */
export function chrootRecord(e: ChrootEvent): string {
  return jsonWithBigInts(chrootObject(e));
}

/** `decision`: one decision of the guard, every field of {@link ChrootDecision}. */
export function decisionRecord(d: ChrootDecision): string {
  return jsonWithBigInts(decisionObject(d));
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

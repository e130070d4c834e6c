/**
 * The CLI's NDJSON stream (`--json`): one record per line, each with a
 * `type` (`attach`, `chroot`, `decision`, `lost`), described by
 * `events.schema.json`. A pipeline that keeps stdout alone can account for
 * every call: `chroot` (or `decision`) records delivered plus the counts of
 * the `lost` records equal what the kernel saw.
 * @internal
 * @module
 */
import type { ChrootDecision } from '../decision.js';
import type { ChrootEvent } from '../events.js';
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

/** The fields `chroot` and `decision` records share: who called, with what, and what the kernel resolved; byte fields also as base64. */
function identity(e: Omit<ChrootEvent, 'ret' | 'errno' | 'lsmRet' | 'probe' | 'enterTs'>) {
  // Field by field: this runs per event (object rest/spread is far slower in V8).
  return {
    ts: e.ts,
    pid: e.pid,
    tid: e.tid,
    nsPid: e.nsPid,
    nsTid: e.nsTid,
    ppid: e.ppid,
    uid: e.uid,
    gid: e.gid,
    euid: e.euid,
    egid: e.egid,
    comm: e.comm,
    commBase64: e.commBytes.toString('base64'),
    cgroupId: e.cgroupId,
    mntNs: e.mntNs,
    pidNs: e.pidNs,
    userNs: e.userNs,
    exeDev: e.exeDev,
    exeIno: e.exeIno,
    exeUnknown: e.exeUnknown,
    exe: e.exe,
    exeBase64: e.exeBytes === null ? null : e.exeBytes.toString('base64'),
    exeTruncated: e.exeTruncated,
    exeUnreachable: e.exeUnreachable,
    exeDeleted: e.exeDeleted,
    exeMemfd: e.exeMemfd,
    parentComm: e.parentComm,
    parentCommBase64: e.parentCommBytes.toString('base64'),
    parentExe: e.parentExe,
    parentExeBase64: e.parentExeBytes === null ? null : e.parentExeBytes.toString('base64'),
    parentExeTruncated: e.parentExeTruncated,
    parentExeUnreachable: e.parentExeUnreachable,
    parentExeDeleted: e.parentExeDeleted,
    parentExeMemfd: e.parentExeMemfd,
    path: e.path,
    pathBase64: e.pathBytes.toString('base64'),
    pathTruncated: e.pathTruncated,
    pathUnreadable: e.pathUnreadable,
    pathReadLate: e.pathReadLate,
    resolvedPath: e.resolvedPath,
    resolvedPathBase64: e.resolvedPathBytes === null ? null : e.resolvedPathBytes.toString('base64'),
    resolvedPathTruncated: e.resolvedPathTruncated,
    resolvedPathUnreachable: e.resolvedPathUnreachable,
    callerChrooted: e.callerChrooted,
  };
}

/** `chroot`: one chroot(2) call, every field of {@link ChrootEvent}. */
export function chrootRecord(e: ChrootEvent): string {
  return jsonWithBigInts({ type: 'chroot', ...identity(e), enterTs: e.enterTs, ret: e.ret, errno: e.errno, lsmRet: e.lsmRet, probe: e.probe });
}

/** `decision`: one decision of the guard, every field of {@link ChrootDecision}. */
export function decisionRecord(d: ChrootDecision): string {
  return jsonWithBigInts({
    type: 'decision',
    ...identity(d),
    action: d.action,
    ruleId: d.ruleId,
    reason: d.reason,
    error: d.error,
    initialNamespaces: d.initialNamespaces,
    denied: d.denied,
    wouldDeny: d.wouldDeny,
    policyMode: d.policyMode,
    generation: d.generation,
    source: d.source,
  });
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

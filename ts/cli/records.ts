/**
 * The CLI's NDJSON stream (`--json`): one record per line, each with a
 * `type` (`attach`, `chroot`, `decision`, `lost`, and the agent's `guard`), described by
 * `events.schema.json`. A pipeline that keeps stdout alone can account for
 * every call: `chroot` (or `decision`) records delivered plus the counts of
 * the `lost` records equal what the kernel saw.
 * @internal
 * @module
 */
import { statSync } from 'node:fs';
import { DECISION_FIELDS, type ChrootDecision } from '../decision.js';
import { CALL_FIELDS, compileObject, copied, IDENTITY_FIELDS, type ChrootEvent, type FieldSource } from '../events.js';
import type { Refusal } from '../errors.js';
import { LOSS_COUNTERS, type LossCounts, type LostReport } from '../batch.js';
import type { AttachInfo } from '../session.js';
import { jsonString, jsonWithBigInts } from './output.js';
import { recordSchema, type PropertySchema } from '../event-schema.js';

/** The record kinds, as `type` names them. */
export type RecordType = 'attach' | 'chroot' | 'decision' | 'lost' | 'guard';

const refusal = (r: Refusal) => ({ mode: r.mode, program: r.program, target: r.target, stage: r.stage, code: r.code, errno: r.errno, reason: r.reason });
/** A refused mode: as {@link refusal}, and whether `auto` remembered it instead of trying again. */
const refusedMode = (r: Refusal) => ({ ...refusal(r), remembered: r.remembered });

/**
 * `MNT_NS_INIT_INO`: kernels since 6.18 give the initial mount namespace
 * this inode number (earlier ones number it at boot like any other).
 */
const FIXED_INITIAL_MNT_NS = 0xeffffff8;

/**
 * The initial mount namespace's inode number, as the loader reads it
 * (`initial_mnt_ns` in `crates/loader/src/identity.rs`): pid 1's, or this
 * process's when it carries the fixed number; null when neither can be
 * read. Read once.
 */
function initialMntNs(): number | null {
  if (initialMntNsRead === undefined) {
    initialMntNsRead = null;
    for (const [path, ok] of [['/proc/1/ns/mnt', () => true], ['/proc/self/ns/mnt', (ino: number) => ino === FIXED_INITIAL_MNT_NS]] as const) {
      try {
        const ino = statSync(path).ino;
        if (ok(ino)) {
          initialMntNsRead = ino;
          break;
        }
      } catch {
        // not readable here: try the next
      }
    }
  }
  return initialMntNsRead;
}
let initialMntNsRead: number | null | undefined;

/**
 * `attach`: which mode the programs run in (or `lsm` for the guard), why
 * better ones were refused, what they cannot see, and the initial mount
 * namespace of the host and boot the records come from (what
 * `initialNamespaces` conditions compare `mntNs` with: `replay` judges the
 * session's records by it).
 */
export function attachRecord(ts: bigint, a: { mode: AttachInfo['mode'] | 'lsm'; refused?: readonly Refusal[]; blindSpots?: readonly Refusal[]; generation?: number; policyMode?: 'enforce' | 'audit' }): string {
  const mntNs = initialMntNs();
  return jsonWithBigInts({
    type: 'attach',
    ts,
    mode: a.mode,
    refused: (a.refused ?? []).map(refusedMode),
    blindSpots: (a.blindSpots ?? []).map(refusal),
    ...(a.generation !== undefined ? { generation: a.generation } : {}),
    ...(a.policyMode !== undefined ? { policyMode: a.policyMode } : {}),
    ...(mntNs !== null ? { initialMntNs: mntNs } : {}),
  });
}

/**
 * The fields `chroot` and `decision` records share (who called, with what,
 * and what the kernel resolved), each byte field as base64 in place of its
 * Buffer (`commBytes` → `commBase64`), computed from the record's source `e`.
 */
const IDENTITY: readonly FieldSource[] = IDENTITY_FIELDS.map((f) => {
  if (!f.endsWith('Bytes')) return copied('e', 0, f);
  const base64 = (e: Record<string, unknown>) => (e[f] === null ? null : (e[f] as Buffer).toString('base64'));
  return { key: f.replace(/Bytes$/, 'Base64'), expression: `e.${f} === null ? null : e.${f}.toString('base64')`, get: base64 as (a: never) => unknown };
});

/** The JSON types a property may take (`integer`, `null`, …); enums and constants of strings count as `string`. */
function typesOf(p: PropertySchema): string[] {
  if (p.oneOf) return p.oneOf.flatMap(typesOf);
  if (p.type !== undefined) return [p.type].flat();
  const values = p.enum ?? (p.const !== undefined ? [p.const] : []);
  if (values.length > 0 && values.every((v) => typeof v === 'string')) return ['string'];
  throw new Error(`events.schema.json: no serializer for a property described as ${JSON.stringify(p)}`);
}

/** JavaScript that writes `value` (a local holding the field) as JSON, for a field the schema describes as `p`. */
function jsonOf(p: PropertySchema, value: string): string {
  const types = typesOf(p);
  const nullable = types.includes('null');
  const kind = types.filter((t) => t !== 'null');
  let code: string;
  if (kind.length === 1 && kind[0] === 'integer') code = `'' + ${value}`; // number or bigint: exact either way
  else if (kind.length === 1 && kind[0] === 'boolean') code = `(${value} ? 'true' : 'false')`;
  else if (kind.length === 1 && kind[0] === 'string') code = `q(${value})`;
  else throw new Error(`events.schema.json: no serializer for a property of types ${kind.join(', ')}`);
  return nullable ? `(${value} === null ? 'null' : ${code})` : code;
}

/**
 * The serializer of one record type, compiled on first use: the JSON text
 * of `fields` in order, each value written as `events.schema.json` types
 * it, as one string concatenation: no object, no replacer callback, no
 * regular expression but {@link jsonString}'s test, bigints written as they
 * are. The same text as `jsonWithBigInts` gives for the same record
 * (test/records.test.ts checks it on generated events), which is what it
 * falls back to where code generation is disallowed.
 */
function compileRecord<T>(type: RecordType, fields: readonly FieldSource[]): (e: T) => string {
  const properties = recordSchema(type)!.properties;
  const body = fields.map(({ key, expression }) => {
    const p = properties[key];
    if (!p) throw new Error(`events.schema.json: the ${type} record has no property ${key}`);
    return `s += ${JSON.stringify(`,${JSON.stringify(key)}:`)}; v = ${expression}; s += ${jsonOf(p, 'v')};`;
  });
  try {
    return new Function('q', `return function ${type}Record(e) { let v; let s = ${JSON.stringify(`{"type":${JSON.stringify(type)}`)}; ${body.join(' ')} return s + '}'; };`)(jsonString) as (e: T) => string;
  } catch {
    const objectOf = compileObject<(e: T) => object>(['e'], [{ key: 'type', expression: JSON.stringify(type), get: () => type }, ...fields]);
    return (e: T) => jsonWithBigInts(objectOf(e));
  }
}

let chrootSerializer: ((e: ChrootEvent) => string) | undefined;
let decisionSerializer: ((d: ChrootDecision) => string) | undefined;

/** `chroot`: one chroot(2) call, every field of {@link ChrootEvent}. */
export function chrootRecord(e: ChrootEvent): string {
  chrootSerializer ??= compileRecord('chroot', [...IDENTITY, ...CALL_FIELDS.map((f) => copied('e', 0, f))]);
  return chrootSerializer(e);
}

/** `decision`: one decision of the guard, every field of {@link ChrootDecision}. */
export function decisionRecord(d: ChrootDecision): string {
  decisionSerializer ??= compileRecord('decision', [...IDENTITY, ...DECISION_FIELDS.map((f) => copied('e', 0, f))]);
  return decisionSerializer(d);
}

const counts = (c: LossCounts) => Object.fromEntries(LOSS_COUNTERS.map((k) => [k, c[k]]));

/**
 * Which reader counted a `lost` record's losses, in a stream that carries
 * both (the agent's with a guard): `watch` (its `chroot` records) or
 * `guard` (its `decision` records). Streams of one reader leave it out.
 */
export type LostSource = 'watch' | 'guard';

/**
 * `lost`: what the kernel counted since the previous `lost` record (or the
 * attach), between `sinceTs` and `ts` (ns since boot, read when the counts
 * reached user space), and the running totals; `source` where the stream
 * has two readers ({@link LostSource}).
 */
export function lostRecord(report: LostReport, sinceTs: bigint, ts: bigint, source?: LostSource): string {
  return jsonWithBigInts({ type: 'lost', ...(source ? { source } : {}), sinceTs, ts, ...counts(report), total: counts(report.total) });
}

/** What the agent did with its guard's policy, as a `guard` record says it. */
export interface GuardRecordFields {
  /**
   * `pinned`: a new guard was pinned with the policy; `adopted`: a guard
   * pinned already (by `enforce --pin`, an earlier agent) took the policy;
   * `reloaded`: SIGHUP's policy replaced the one in force; `rejected`:
   * SIGHUP's policy could not be loaded and the one in force stays.
   */
  readonly event: 'pinned' | 'adopted' | 'reloaded' | 'rejected';
  /** The policy file. */
  readonly policy: string;
  /** The pin directory. */
  readonly pinDir: string;
  /** Generation of the policy in force afterwards; null when it cannot be read (nothing pinned any more). */
  readonly generation: number | null;
  /** Mode of the policy in force afterwards; null as `generation`. */
  readonly policyMode: 'enforce' | 'audit' | null;
  /** `rejected`: the error code (`INVALID_POLICY`, `PIN_FAILED`, ...); else null. */
  readonly code: string | null;
  /** `rejected`: each problem as `FILE:LINE:COL: message` (or the error's message); else empty. */
  readonly problems: readonly string[];
}

/** `guard`: the agent's guard took a policy, or refused one ({@link GuardRecordFields}); `ts` in ns since boot. */
export function guardRecord(ts: bigint, g: GuardRecordFields): string {
  return jsonWithBigInts({ type: 'guard', ts, event: g.event, policy: g.policy, pinDir: g.pinDir, generation: g.generation, policyMode: g.policyMode, code: g.code, problems: g.problems });
}

/**
 * chroot-guard policies: the types, the published JSON Schema
 * (`policy.schema.json`), parsing of YAML or JSON files with errors that
 * name the file, line and column, and the reference evaluator.
 * @module
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { Document, LineCounter, Node } from 'yaml';
import { ChrootWatchError } from './errors.js';
import type { ChrootEvent } from './events.js';

/** What a rule (or the default) does with a chroot call. */
export type PolicyAction = 'allow' | 'deny' | 'audit';

/**
 * Conditions of a rule: every condition given must hold (AND); a list
 * means any of its values (OR). No `match`, or an empty one, matches every
 * call.
 */
export interface PolicyMatch {
  /**
   * The new root is exactly this directory: an absolute path as the caller's
   * mount namespace sees it, like events' `resolvedPath` (the host path for
   * callers in the host's mount namespace; never relative to a chroot the
   * caller is already in). A bind mount shows a directory under another
   * path: add `mntNs`, uid or `alreadyChrooted` conditions where that matters.
   */
  readonly path?: string | readonly string[];
  /** The new root is this directory or anything below it (absolute, as `path`). */
  readonly subtree?: string | readonly string[];
  /** Real uid of the caller. */
  readonly uid?: number | readonly number[];
  /** Effective uid of the caller (the one CAP_SYS_CHROOT is checked against). */
  readonly euid?: number | readonly number[];
  /** Real gid of the caller. */
  readonly gid?: number | readonly number[];
  /** Effective gid of the caller. */
  readonly egid?: number | readonly number[];
  /** The caller's comm (at most 15 bytes). */
  readonly comm?: string | readonly string[];
  /** The caller's executable, absolute as `path` (`current->mm->exe_file`). */
  readonly exe?: string | readonly string[];
  /** cgroup v2 id of the caller, as in events' `cgroupId`. */
  readonly cgroupId?: number | readonly number[];
  /** The caller's root is not its mount namespace's root (a chroot from inside a chroot). */
  readonly alreadyChrooted?: boolean;
  /** Inode number of the caller's mount namespace (as events' `mntNs`, `/proc/PID/ns/mnt`). */
  readonly mntNs?: number | readonly number[];
}

/** One rule. */
export interface PolicyRule {
  /** Unique; decision events carry it. `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`. */
  readonly id: string;
  /** `deny` fails the call with EPERM in enforce mode; `audit` allows and reports. */
  readonly action: PolicyAction;
  /** Free text. */
  readonly description?: string;
  /** Conditions; absent: every call. */
  readonly match?: PolicyMatch;
}

/** A policy: see `policy.schema.json` (published with the package). */
export interface Policy {
  /** Editor support; ignored. */
  readonly $schema?: string;
  /** `enforce` denies for real; `audit` never denies and reports what would have been denied. */
  readonly mode: 'enforce' | 'audit';
  /** Action when no rule matches (default `allow`). */
  readonly default?: PolicyAction;
  /** Ordered rules; the first that matches decides. At most 64 after list expansion. */
  readonly rules: readonly PolicyRule[];
}

/** Where and what one problem of a policy file is. */
export interface PolicyProblem {
  /** The file, when the policy came from one. */
  readonly file?: string;
  /** 1-based line, when known. */
  readonly line?: number;
  /** 1-based column, when known. */
  readonly column?: number;
  /** JSON pointer of the offending value (e.g. `/rules/2/match/uid`). */
  readonly pointer: string;
  /** What is wrong and what was expected. */
  readonly message: string;
}

/**
 * A policy that does not parse or validate. `code` is `INVALID_POLICY`;
 * `problems` lists each problem with its position; `message` holds them as
 * `FILE:LINE:COL: message` lines.
 */
export class PolicyError extends ChrootWatchError {
  /** Every problem found, in file order. */
  readonly problems: readonly PolicyProblem[];

  constructor(problems: readonly PolicyProblem[]) {
    super('INVALID_POLICY', problems.map(formatProblem).join('\n'));
    this.name = 'PolicyError';
    this.problems = problems;
  }
}

/** `FILE:LINE:COL: message` (parts omitted when unknown). */
export function formatProblem(p: PolicyProblem): string {
  const where = [p.file, p.line, p.column].filter((x) => x !== undefined).join(':');
  return `${where || p.pointer}: ${p.message}`;
}

const require = createRequire(import.meta.url);

/** The policy's JSON Schema (draft-07), as published in `policy.schema.json`. */
export const policySchema: Record<string, unknown> = require('../policy.schema.json') as Record<string, unknown>;

// ajv and yaml load on first use: a watch-only program never pays for them
// (about 60 ms of start-up together).
let validator: ValidateFunction | undefined;
function validateSchema(value: unknown): boolean {
  if (!validator) {
    const { Ajv } = require('ajv') as typeof import('ajv');
    validator = new Ajv({ allErrors: true, strict: false, verbose: true }).compile(policySchema);
  }
  return validator(value);
}
const yaml = () => require('yaml') as typeof import('yaml');

/** Most compiled rules (each value of a uid, euid, gid, egid, mntNs, comm or cgroupId list counts once per combination). */
export const MAX_RULES = 64;
/** Most distinct `path`/`subtree` paths one policy may name. */
export const MAX_PATHS = 1024;
/** Most distinct `exe` paths one policy may name. */
export const MAX_EXES = 512;
/**
 * Longest `path`, `subtree` or `exe`, in bytes of UTF-8 once empty
 * components and a trailing `/` are dropped: PATH_MAX - 1, as the loader
 * (`RESOLVED_MAX - 1` in `crates/common`) and the kernel count. JSON
 * Schema's `maxLength` counts UTF-16 code units, not bytes, so this is
 * checked here and not in the schema.
 */
export const MAX_PATH_BYTES = 4095;
/** Longest `comm`, in bytes of UTF-8: TASK_COMM_LEN - 1 (`COMM_LEN - 1` in `crates/common`). */
export const MAX_COMM_BYTES = 15;
/**
 * Longest rule id, in bytes (ids are ASCII, so characters): `RULE_ID_BYTES`
 * in `crates/common`. The schema's id pattern spells the same bound
 * (`{0,63}` after the first character); a test holds them together.
 */
export const MAX_RULE_ID_BYTES = 64;

const EXPECTED: Record<string, string> = {
  path: 'an absolute path or a list of absolute paths',
  subtree: 'an absolute path or a list of absolute paths',
  exe: 'an absolute path or a list of absolute paths',
  uid: 'an id (0 to 4294967295) or a list of ids',
  euid: 'an id (0 to 4294967295) or a list of ids',
  mntNs: 'a mount namespace inode number or a list of them',
  gid: 'an id (0 to 4294967295) or a list of ids',
  egid: 'an id (0 to 4294967295) or a list of ids',
  comm: 'a comm (1 to 15 bytes) or a list of them',
  cgroupId: 'a cgroup id (a positive integer) or a list of them',
};

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  if (v === null) return 'null';
  return typeof v === 'string' ? `"${v}"` : typeof v === 'object' ? 'a map' : String(v);
}

function valueAt(root: unknown, pointer: string): unknown {
  return pointer
    .split('/')
    .slice(1)
    .reduce<unknown>((v, k) => (v && typeof v === 'object' ? (v as Record<string, unknown>)[k.replace(/~1/g, '/').replace(/~0/g, '~')] : undefined), root);
}

/** Turns ajv's errors into one clear message per offending value. */
function schemaProblems(errors: readonly ErrorObject[], value: unknown): Array<{ pointer: string; message: string; key?: string }> {
  const out: Array<{ pointer: string; message: string; key?: string }> = [];
  const done = new Set<string>();
  // A value that fits none of a oneOf's forms gets one message, from the
  // oneOf error; the errors of each form below it are dropped.
  const oneOfAt = errors.filter((e) => e.keyword === 'oneOf').map((e) => e.instancePath);
  const underOneOf = (e: ErrorObject) => e.keyword !== 'oneOf' && oneOfAt.some((p) => e.instancePath === p || e.instancePath.startsWith(`${p}/`));
  for (const e of errors) {
    if (underOneOf(e)) continue;
    const at = e.instancePath;
    const key = at.split('/').pop() ?? '';
    const got = valueAt(value, at);
    let message: string;
    let pointer = at;
    let keyOf: string | undefined;
    switch (e.keyword) {
      case 'additionalProperties': {
        const extra = (e.params as { additionalProperty: string }).additionalProperty;
        const allowed = Object.keys((e.parentSchema as { properties?: object }).properties ?? {}).filter((k) => k !== '$schema');
        message = `unknown key "${extra}" (expected one of: ${allowed.join(', ')})`;
        pointer = `${at}/${extra}`;
        keyOf = extra;
        break;
      }
      case 'required':
        message = `missing required key "${(e.params as { missingProperty: string }).missingProperty}"`;
        break;
      case 'enum':
        message = `"${key}" must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}; got ${describe(got)}`;
        break;
      case 'oneOf':
        message = `"${key}" must be ${EXPECTED[key] ?? 'one of the allowed forms'}; got ${describe(got)}`;
        break;
      case 'type':
        message = `${at === '' ? 'the policy' : `"${key}"`} must be ${(e.params as { type: string }).type === 'object' ? 'a map' : `of type ${(e.params as { type: string }).type}`}; got ${describe(got)}`;
        break;
      case 'pattern':
        message = at.endsWith('/id') ? `rule id ${describe(got)} must start with a letter or digit and use only letters, digits, '.', '_' and '-' (at most ${MAX_RULE_ID_BYTES})` : `must match ${(e.params as { pattern: string }).pattern}; got ${describe(got)}`;
        break;
      default:
        message = `"${key}" ${e.message ?? 'is invalid'}; got ${describe(got)}`;
    }
    const id = `${pointer}|${e.keyword}`;
    if (done.has(id)) continue;
    done.add(id);
    out.push({ pointer, message, ...(keyOf ? { key: keyOf } : {}) });
  }
  return out;
}

const asList = <T>(v: T | readonly T[] | undefined): readonly T[] => (v === undefined ? [] : Array.isArray(v) ? (v as readonly T[]) : [v as T]);

/** Checks the schema cannot: unique ids, clean paths, byte lengths, the compiler's limits. */
function semanticProblems(p: Policy): Array<{ pointer: string; message: string }> {
  const out: Array<{ pointer: string; message: string }> = [];
  const ids = new Map<string, number>();
  // Distinct canonical paths, and where each set first went over its limit.
  const paths = new Set<string>();
  const exes = new Set<string>();
  let pathsOver: string | undefined;
  let exesOver: string | undefined;
  let compiled = 0;
  p.rules.forEach((r, i) => {
    const at = `/rules/${i}`;
    if (ids.has(r.id)) out.push({ pointer: `${at}/id`, message: `duplicate rule id "${r.id}" (first used by rule ${ids.get(r.id)! + 1})` });
    else ids.set(r.id, i);
    const m = r.match ?? {};
    // Counted as the compiler counts its map entries: a subtree list that
    // names `/` is no condition, so its paths take no entry.
    const subtreeIsRoot = asList(m.subtree).some((p) => canonical(p) === '/');
    for (const key of ['path', 'subtree', 'exe'] as const) {
      asList(m[key]).forEach((path, j) => {
        const ptr = Array.isArray(m[key]) ? `${at}/match/${key}/${j}` : `${at}/match/${key}`;
        if (path.split('/').some((c) => c === '.' || c === '..')) out.push({ pointer: ptr, message: `"${key}" ${JSON.stringify(path)} has . or .. components: write the absolute path itself` });
        // Bytes of the form the loader stores (canonical_path), not characters.
        const bytes = Buffer.byteLength(canonical(path));
        if (bytes > MAX_PATH_BYTES) {
          out.push({ pointer: ptr, message: `"${key}" is ${bytes} bytes of UTF-8 (without repeated or trailing slashes); at most ${MAX_PATH_BYTES} (PATH_MAX - 1), as the kernel counts` });
        }
        if (key === 'exe') {
          exes.add(canonical(path));
          if (exes.size > MAX_EXES) exesOver ??= ptr;
        } else if (!(key === 'subtree' && subtreeIsRoot)) {
          paths.add(canonical(path));
          if (paths.size > MAX_PATHS) pathsOver ??= ptr;
        }
      });
    }
    asList(m.comm).forEach((c, j) => {
      if (Buffer.byteLength(c) > MAX_COMM_BYTES) {
        out.push({ pointer: Array.isArray(m.comm) ? `${at}/match/comm/${j}` : `${at}/match/comm`, message: `comm ${JSON.stringify(c)} is ${Buffer.byteLength(c)} bytes; the kernel keeps ${MAX_COMM_BYTES} (TASK_COMM_LEN - 1)` });
      }
    });
    asList(m.cgroupId).forEach((id, j) => {
      // YAML and JSON numbers become doubles: above 2^53 - 1 the value read
      // may not be the one written.
      if (!Number.isSafeInteger(id)) {
        out.push({ pointer: Array.isArray(m.cgroupId) ? `${at}/match/cgroupId/${j}` : `${at}/match/cgroupId`, message: `cgroupId ${id} is above ${Number.MAX_SAFE_INTEGER} (2^53 - 1), so it cannot be read exactly` });
      }
    });
    const n = [m.uid, m.euid, m.gid, m.egid, m.mntNs, m.comm, m.cgroupId].reduce<number>((acc, v) => acc * Math.max(1, asList(v as never).length), 1);
    compiled += n;
    if (compiled > MAX_RULES && compiled - n <= MAX_RULES) {
      out.push({ pointer: at, message: `the policy expands to more than ${MAX_RULES} rules here (${compiled}): each combination of uid, euid, gid, egid, mntNs, comm and cgroupId values is one rule` });
    }
  });
  if (pathsOver) out.push({ pointer: pathsOver, message: `distinct path number ${MAX_PATHS + 1} (path and subtree): the policy names ${paths.size}, at most ${MAX_PATHS}` });
  if (exesOver) out.push({ pointer: exesOver, message: `distinct executable number ${MAX_EXES + 1}: the policy names ${exes.size}, at most ${MAX_EXES}` });
  return out;
}

function position(doc: Document | undefined, lc: LineCounter | undefined, pointer: string, key?: string): { line?: number; column?: number } {
  if (!doc || !lc) return {};
  const path = pointer.split('/').slice(1).map((k) => (/^\d+$/.test(k) ? Number(k) : k.replace(/~1/g, '/').replace(/~0/g, '~')));
  let node: unknown;
  if (key !== undefined) {
    const { isMap, isScalar } = yaml();
    const parent = doc.getIn(path.slice(0, -1), true);
    if (isMap(parent)) node = parent.items.find((pair) => isScalar(pair.key) && pair.key.value === key)?.key;
  } else {
    node = path.length ? doc.getIn(path, true) : doc.contents;
    // A missing key: point at the map it is missing from.
    for (let n = path.length - 1; node === undefined && n >= 0; n--) node = doc.getIn(path.slice(0, n), true);
    node ??= doc.contents;
  }
  const range = (node as Node | undefined)?.range;
  if (!range) return {};
  const { line, col } = lc.linePos(range[0]);
  return { line, column: col };
}

function check(value: unknown, file: string | undefined, doc?: Document, lc?: LineCounter): Policy {
  const where = (pointer: string, message: string, key?: string): PolicyProblem => ({
    ...(file !== undefined ? { file } : {}),
    ...position(doc, lc, pointer, key),
    pointer,
    message,
  });
  // Problems in file order where positions are known (the count limits are
  // found after the rules they name).
  const fail = (problems: PolicyProblem[]) =>
    new PolicyError(problems.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0)));
  if (!validateSchema(value)) {
    throw fail(schemaProblems(validator?.errors ?? [], value).map((p) => where(p.pointer, p.message, p.key)));
  }
  const policy = value as unknown as Policy;
  const semantic = semanticProblems(policy);
  if (semantic.length) throw fail(semantic.map((p) => where(p.pointer, p.message)));
  return policy;
}

/**
 * Validates a policy object (for policies built in code).
 * @throws {PolicyError} `INVALID_POLICY`, problems named by JSON pointer.
 */
export function validatePolicy(value: unknown): Policy {
  return check(value, undefined);
}

/**
 * Parses and validates a policy written in YAML or JSON.
 * @param text The file's contents.
 * @param file Its name, for messages.
 * @throws {PolicyError} `INVALID_POLICY` with the line and column of each problem.
 */
export function parsePolicy(text: string, file?: string): Policy {
  const { LineCounter, parseDocument } = yaml();
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true });
  const [e] = doc.errors;
  if (e) {
    // The first syntax error: later ones are usually its echoes.
    throw new PolicyError([
      {
        ...(file !== undefined ? { file } : {}),
        ...(e.linePos ? { line: e.linePos[0].line, column: e.linePos[0].col } : {}),
        pointer: '',
        message: `not valid YAML or JSON: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`,
      },
    ]);
  }
  return check(doc.toJS({ maxAliasCount: 100 }), file, doc, lineCounter);
}

/**
 * Reads, parses and validates a policy file (YAML or JSON).
 * @throws {PolicyError} `INVALID_POLICY`, or with the read error when the file cannot be read.
 */
export function loadPolicy(file: string): Policy {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PolicyError([{ file, pointer: '', message: `cannot read the policy file: ${(err as Error).message}` }]);
  }
  return parsePolicy(text, file);
}

/** The same policy in audit mode. */
export function asAudit(p: Policy): Policy {
  return { ...p, mode: 'audit' };
}

/** Canonical form of a rule path: no empty components, no trailing slash. */
function canonical(p: string): string {
  return '/' + p.split('/').filter(Boolean).join('/');
}

/** What {@link evaluatePolicy} decided. */
export interface Evaluation {
  /** The matching rule's action, or the default's. */
  readonly action: PolicyAction;
  /** The matching rule's id, or null for the default. */
  readonly ruleId: string | null;
  /** Conditions that could not be evaluated from the event (e.g. `exe` from watch events). */
  readonly unknown: readonly string[];
}

/**
 * The reference evaluator: what the kernel program decides, computed in
 * JavaScript from an event's fields. Used for `enforce --audit` where the
 * BPF LSM cannot run (decisions then come from the watch probes, after the
 * fact), and by tests to cross-check the kernel. Like the kernel, a
 * condition that cannot be judged holds for deny rules and not for others:
 * a path cut short, or `exe` (watch events do not carry the executable;
 * such rules are listed in `unknown`).
 */
export function evaluatePolicy(policy: Policy, e: ChrootEvent): Evaluation {
  const unknown: string[] = [];
  for (const r of policy.rules) {
    const m = r.match ?? {};
    const any = <T>(v: T | readonly T[] | undefined, actual: T) => v === undefined || asList(v).includes(actual);
    const resolved = e.resolvedPath;
    const pathKnown = resolved !== null && !e.resolvedPathTruncated;
    // A subtree of `/` holds for every path: no condition (as the compiler).
    const subtree = m.subtree === undefined || asList(m.subtree).some((p) => canonical(p) === '/') ? undefined : asList(m.subtree).map(canonical);
    let pathOk = true;
    if (m.path !== undefined || subtree !== undefined) {
      if (!pathKnown) pathOk = r.action === 'deny';
      else {
        const exact = m.path === undefined || asList(m.path).some((p) => canonical(p) === resolved);
        const under = subtree === undefined || subtree.some((c) => resolved === c || resolved!.startsWith(`${c}/`));
        pathOk = exact && under;
      }
    }
    // The executable is not in watch events: like the kernel with an
    // executable it cannot judge, an exe condition holds for deny rules only.
    let exeOk = true;
    if (m.exe !== undefined) {
      unknown.push(`${r.id}: exe`);
      exeOk = r.action === 'deny';
    }
    const commOk = m.comm === undefined || asList(m.comm).includes(e.comm);
    if (
      pathOk &&
      exeOk &&
      any(m.uid, e.uid) &&
      any(m.euid, e.euid) &&
      any(m.gid, e.gid) &&
      any(m.egid, e.egid) &&
      commOk &&
      (m.cgroupId === undefined || asList(m.cgroupId).some((id) => BigInt(id) === e.cgroupId)) &&
      (m.alreadyChrooted === undefined || m.alreadyChrooted === e.callerChrooted) &&
      any(m.mntNs, e.mntNs)
    ) {
      return { action: r.action, ruleId: r.id, unknown };
    }
  }
  return { action: policy.default ?? 'allow', ruleId: null, unknown };
}

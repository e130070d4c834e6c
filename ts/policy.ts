/**
 * chroot-guard policies: the types, the published JSON Schema
 * (`policy.schema.json`), parsing of YAML or JSON files with errors that
 * name the file, line and column, and the reference evaluator.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { Document, LineCounter, Node } from 'yaml';
import { ChrootWatchError, type ChrootWatchErrorCode } from './errors.js';
import { native } from './native.js';
import type { ChrootEvent } from './events.js';

/** What a rule (or the default) does with a chroot call. */
export type PolicyAction = 'allow' | 'deny' | 'audit';

/**
 * Conditions of a rule: every condition given must hold (AND); a list
 * means any of its values (OR).
 *
 * Who can forge what (see the README's threat model): `comm` is chosen by
 * the caller (`prctl(PR_SET_NAME)`, or the name of any executable it
 * runs), so it never identifies a program; paths can be aliased by anyone
 * who can make mounts (a user namespace of their own is enough), so
 * `path`/`subtree`/`alreadyChrooted` hold against such callers only
 * together with `initialNamespaces: true` (or exclude the others with
 * `not: { initialNamespaces: true }`). uids, gids, `exe` (matched by file
 * identity), `cgroupId`, `mntNs` and `initialNamespaces` are set by the
 * kernel.
 */
export interface PolicyConditions {
  /**
   * The new root is exactly this directory: an absolute path as the caller's
   * mount namespace sees it, like events' `resolvedPath` (the host path for
   * callers in the host's mount namespace; never relative to a chroot the
   * caller is already in). Bytes that are not UTF-8 are written `\xHH`, a
   * backslash `\\`. A directory outside the caller's namespace (a detached
   * mount, another namespace's tree) has no such path: see
   * `resolvedPathUnreachable`. A bind mount shows a directory under another
   * path: add `initialNamespaces` where callers may make their own mounts.
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
  /**
   * The caller's comm (at most 15 bytes). Set by the caller itself
   * (`prctl(PR_SET_NAME)`, or by naming an executable so): a label, not an
   * identity. `check` warns when an allow or audit rule relies on it alone.
   */
  readonly comm?: string | readonly string[];
  /**
   * The caller's executable (`current->mm->exe_file`), matched by identity:
   * the device and inode of the file at this path when the policy loads
   * (it must exist then). A copy of the file, or another file bind-mounted
   * over the path, does not match; a hard link does; a file replaced after
   * loading (a package upgrade) no longer matches until the policy is loaded
   * again.
   */
  readonly exe?: string | readonly string[];
  /** cgroup v2 id of the caller, as in events' `cgroupId`. */
  readonly cgroupId?: number | readonly number[];
  /**
   * The caller's root is not its mount namespace's root (the kernel's
   * `current_chrooted()`): a chroot from inside a chroot, or a root left in
   * a detached tree or another namespace.
   */
  readonly alreadyChrooted?: boolean;
  /**
   * Inode number of the caller's mount namespace (as events' `mntNs`,
   * `/proc/PID/ns/mnt`). The kernel reuses the number of a namespace that
   * has ended for a new one: name only namespaces that outlive the policy.
   */
  readonly mntNs?: number | readonly number[];
  /**
   * Whether the caller is in the initial user namespace and the initial
   * mount namespace (pid 1's, read when the policy loads): the host's, where
   * paths mean what the host's administrator sees. Callers in user or mount
   * namespaces of their own can alias paths; this condition cannot be forged.
   */
  readonly initialNamespaces?: boolean;
}

/**
 * A rule's `match`: its conditions, and optionally `not`, conditions that,
 * when they all hold, make the rule not apply (`not: { initialNamespaces:
 * true }`: every caller but the host's). No `match`, or an empty one,
 * matches every call.
 */
export interface PolicyMatch extends PolicyConditions {
  /** When every one of these holds (lists: any value), the rule does not apply. At least one condition; no nested `not`. */
  readonly not?: PolicyConditions;
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
  /**
   * What applies when the kernel program cannot decide (a map insert or a
   * kernel read fails, e.g. under memory pressure, or the policy is replaced
   * twice during one decision): `default` (the default action; the
   * default), `allow` or `deny`. Such decisions are reported with
   * `reason: 'internal-error'` or `'policy-torn'` and counted in `lsmErrors`.
   */
  readonly failMode?: 'default' | 'allow' | 'deny';
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
        message = at.endsWith('/id') ? `rule id ${describe(got)} must start with a letter or digit and use only letters, digits, '.', '_' and '-' (at most 64)` : `must match ${(e.params as { pattern: string }).pattern}; got ${describe(got)}`;
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

/** The keys of {@link PolicyConditions} whose lists multiply into compiled rules. */
const EXPANDING = ['uid', 'euid', 'gid', 'egid', 'mntNs', 'comm', 'cgroupId'] as const;

/** Compiled rules one block of conditions expands into: the product of its list lengths. */
const expansions = (m: PolicyConditions): number => EXPANDING.reduce<number>((acc, k) => acc * Math.max(1, asList(m[k] as never).length), 1);

/** Checks the schema cannot: unique ids, clean paths, comm length, rule count. */
function semanticProblems(p: Policy): Array<{ pointer: string; message: string }> {
  const out: Array<{ pointer: string; message: string }> = [];
  const ids = new Map<string, number>();
  const paths = new Set<string>();
  const exes = new Set<string>();
  let compiled = 0;
  p.rules.forEach((r, i) => {
    const at = `/rules/${i}`;
    if (ids.has(r.id)) out.push({ pointer: `${at}/id`, message: `duplicate rule id "${r.id}" (first used by rule ${ids.get(r.id)! + 1})` });
    else ids.set(r.id, i);
    const m = r.match ?? {};
    const blocks: Array<[string, PolicyConditions]> = [[`${at}/match`, m]];
    if (m.not) blocks.push([`${at}/match/not`, m.not]);
    if ((m.not as PolicyMatch | undefined)?.not !== undefined) out.push({ pointer: `${at}/match/not/not`, message: 'a not block cannot hold another not' });
    for (const [where, c] of blocks) {
      for (const key of ['path', 'subtree', 'exe'] as const) {
        asList(c[key]).forEach((path, j) => {
          const ptr = Array.isArray(c[key]) ? `${where}/${key}/${j}` : `${where}/${key}`;
          const bytes = pathBytes(path);
          if (typeof bytes === 'string') out.push({ pointer: ptr, message: `"${key}" ${JSON.stringify(path)} ${bytes}` });
          else if (bytes.toString('latin1').split('/').some((x) => x === '.' || x === '..')) out.push({ pointer: ptr, message: `"${key}" ${JSON.stringify(path)} has . or .. components: write the absolute path itself` });
          else (key === 'exe' ? exes : paths).add(canonical(path));
        });
      }
      asList(c.comm).forEach((name, j) => {
        if (Buffer.byteLength(name) > 15) {
          out.push({ pointer: Array.isArray(c.comm) ? `${where}/comm/${j}` : `${where}/comm`, message: `comm ${JSON.stringify(name)} is ${Buffer.byteLength(name)} bytes; the kernel keeps 15 (TASK_COMM_LEN - 1)` });
        }
      });
    }
    const n = expansions(m) + (m.not ? expansions(m.not) : 0);
    compiled += n;
    if (compiled > MAX_RULES && compiled - n <= MAX_RULES) {
      out.push({ pointer: at, message: `the policy expands to more than ${MAX_RULES} rules here (${compiled}): each combination of uid, euid, gid, egid, mntNs, comm and cgroupId values is one rule, in match and in not` });
    }
  });
  if (paths.size > MAX_PATHS) out.push({ pointer: '/rules', message: `the policy names ${paths.size} distinct paths (path and subtree); at most ${MAX_PATHS}` });
  if (exes.size > MAX_EXES) out.push({ pointer: '/rules', message: `the policy names ${exes.size} distinct executables; at most ${MAX_EXES}` });
  return out;
}

/**
 * What would stop `policy` from loading on this host though it is valid:
 * `exe` files that do not exist here (an `exe` rule matches a file by
 * identity, read when the policy loads, so the loader refuses a missing
 * one). For `check`, which loads nothing.
 */
export function hostWarnings(policy: Policy): PolicyProblem[] {
  const out: PolicyProblem[] = [];
  policy.rules.forEach((r, i) => {
    const m = r.match ?? {};
    for (const [where, c] of [[`/rules/${i}/match`, m], [`/rules/${i}/match/not`, m.not ?? {}]] as const) {
      asList(c.exe).forEach((path, j) => {
        const bytes = pathBytes(path);
        if (typeof bytes !== 'string' && !existsSync(bytes)) {
          out.push({ pointer: Array.isArray(c.exe) ? `${where}/exe/${j}` : `${where}/exe`, message: `exe ${JSON.stringify(path)} does not exist on this host: enforce refuses the policy here (exe rules match the file's device and inode when the policy loads)` });
        }
      });
    }
  });
  return out;
}

/** Conditions that say who the caller is and that the caller cannot choose. */
const IDENTITY = ['uid', 'euid', 'gid', 'egid', 'exe', 'cgroupId', 'mntNs', 'initialNamespaces'] as const;

/**
 * What a valid policy grants that its author may not mean: an allow or
 * audit rule whose only say on who the caller is, is `comm` (which the
 * caller sets itself, with `prctl(PR_SET_NAME)` or by naming an executable
 * so): any local user can take its pass.
 */
export function policyWarnings(p: Policy): PolicyProblem[] {
  const out: PolicyProblem[] = [];
  p.rules.forEach((r, i) => {
    const m = r.match ?? {};
    if (r.action === 'deny' || m.comm === undefined || IDENTITY.some((k) => m[k] !== undefined)) return;
    out.push({
      pointer: `/rules/${i}/match/comm`,
      message: `rule "${r.id}" ${r.action === 'allow' ? 'allows' : 'lets through (audit)'} any caller whose comm matches: comm is set by the caller itself (prctl(PR_SET_NAME), or the executable's name), so any local user can match it; add a condition the caller cannot forge (uid/euid, exe, cgroupId, initialNamespaces)`,
    });
  });
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
  if (!validateSchema(value)) {
    throw new PolicyError(schemaProblems(validator?.errors ?? [], value).map((p) => where(p.pointer, p.message, p.key)));
  }
  const policy = value as unknown as Policy;
  const semantic = semanticProblems(policy);
  if (semantic.length) throw new PolicyError(semantic.map((p) => where(p.pointer, p.message)));
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

/**
 * The bytes a policy path names: UTF-8, except that `\xHH` (two hex
 * digits) stands for one byte (a directory whose name is not UTF-8) and
 * `\\` for a backslash. A string saying what is wrong when an escape is
 * bad. The loader decodes the same way (`path_bytes` in
 * `crates/loader/src/policy.rs`).
 */
export function pathBytes(p: string): Buffer | string {
  const out: number[] = [];
  const raw = Buffer.from(p, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i]!;
    if (b !== 0x5c) {
      out.push(b);
      continue;
    }
    const next = raw[i + 1];
    if (next === 0x5c) {
      out.push(0x5c);
      i++;
    } else if (next === 0x78 && /^[0-9a-fA-F]{2}$/.test(raw.subarray(i + 2, i + 4).toString('latin1'))) {
      out.push(parseInt(raw.subarray(i + 2, i + 4).toString('latin1'), 16));
      i += 3;
    } else {
      return 'has a backslash that is not \\xHH (one byte) or \\\\ (a backslash)';
    }
  }
  if (out.includes(0)) return 'names a NUL byte';
  return Buffer.from(out);
}

/**
 * Canonical form of a rule path, as bytes in a latin1 string (one char per
 * byte, comparable with {@link latin1} of a resolved path): escapes decoded,
 * no empty components, no trailing slash.
 */
function canonical(p: string): string {
  const bytes = pathBytes(p);
  const text = typeof bytes === 'string' ? p : bytes.toString('latin1');
  return '/' + text.split('/').filter(Boolean).join('/');
}

/** Raw bytes as a latin1 string: one char per byte, so byte strings compare and prefix-match as strings. */
const latin1 = (b: Buffer): string => b.toString('latin1');

/** A file as the kernel identifies it: what `exe` conditions match. */
export interface FileIdentity {
  /** `inode->i_sb->s_dev` in the kernel's encoding (`major << 20 | minor`), as events' `exeDev`. */
  readonly dev: number;
  /** `inode->i_ino`, as events' `exeIno`. */
  readonly ino: bigint;
}

/**
 * What a policy is matched against besides the call: the facts read when
 * it was compiled. The kernel program has them in its maps; the reference
 * evaluator needs them given. A guard reports the ones it compiled with
 * (`GuardInfo.context`); {@link policyContext} reads them for a policy.
 */
export interface PolicyContext {
  /** Inode number of the initial mount namespace (pid 1's at compile time), or null when unknown. */
  readonly initialMntNs: number | null;
  /** The identity of each `exe` path of the policy, by the path as written. */
  readonly exes: ReadonlyMap<string, FileIdentity>;
}

/** `PROC_USER_INIT_INO`: the initial user namespace's fixed inode number. */
export const INITIAL_USER_NS = 0xeffffffd;

/**
 * Reads the facts `policy` compiles with on this host (the initial mount
 * namespace, each `exe` file's identity), with the loader's own code, so
 * {@link evaluatePolicy} decides as the kernel would.
 * @throws {ChrootWatchError} `INVALID_ARGUMENT` when an `exe` file cannot be
 * identified (it must exist), `NATIVE_UNAVAILABLE` without the addon.
 */
export function policyContext(policy: Policy): PolicyContext {
  const r = native().policyContext(JSON.stringify(policy));
  if (!r.ok) throw new ChrootWatchError((r.errorCode ?? 'INTERNAL') as ChrootWatchErrorCode, r.errorMessage ?? 'could not read the policy\'s facts');
  return contextOf(r);
}

/** The public form of the addon's context. @internal */
export function contextOf(r: { initialMntNs: number; exes: ReadonlyArray<{ path: string; dev: number; ino: string }> }): PolicyContext {
  return { initialMntNs: r.initialMntNs || null, exes: new Map(r.exes.map((x) => [x.path, { dev: x.dev, ino: BigInt(x.ino) }])) };
}

/** What {@link evaluatePolicy} decided. */
export interface Evaluation {
  /** The matching rule's action, or the default's. */
  readonly action: PolicyAction;
  /** The matching rule's id, or null for the default. */
  readonly ruleId: string | null;
  /**
   * Conditions that could not be judged (`RULE: exe`, `RULE: path`,
   * `RULE: initialNamespaces`): a path cut short or not reachable, no
   * executable or no context for it, no initial mount namespace. Each held
   * for deny rules and not for others (inverted inside `not`), as in the
   * kernel.
   */
  readonly unknown: readonly string[];
}

/** A condition's outcome: true, false, or undefined when it cannot be judged. */
type Outcome = boolean | undefined;

/** Whether every condition of `c` holds for `e`; undefined ones are named in `unknown` and resolved to `unknownHolds`. */
function conditionsHold(c: PolicyConditions, e: ChrootEvent, ctx: PolicyContext | undefined, unknownHolds: boolean, note: (what: string) => void): boolean {
  const any = <T>(v: T | readonly T[] | undefined, actual: T) => v === undefined || asList(v).includes(actual);
  const resolve = (what: string, o: Outcome): boolean => {
    if (o !== undefined) return o;
    note(what);
    return unknownHolds;
  };
  // A subtree of `/` holds for every path: no condition (as the compiler).
  const subtree = c.subtree === undefined || asList(c.subtree).some((p) => canonical(p) === '/') ? undefined : asList(c.subtree).map(canonical);
  let path: Outcome = true;
  if (c.path !== undefined || subtree !== undefined) {
    const known = e.resolvedPathBytes !== null && !e.resolvedPathTruncated && !e.resolvedPathUnreachable;
    if (!known) path = undefined;
    else {
      const resolved = latin1(e.resolvedPathBytes!);
      const exact = c.path === undefined || asList(c.path).some((p) => canonical(p) === resolved);
      const under = subtree === undefined || subtree.some((s) => resolved === s || resolved.startsWith(`${s}/`));
      path = exact && under;
    }
  }
  let exe: Outcome = true;
  if (c.exe !== undefined) {
    const ids = asList(c.exe).map((p) => ctx?.exes.get(p));
    exe = e.exeUnknown || ids.some((id) => id === undefined) ? undefined : ids.some((id) => id!.dev === e.exeDev && id!.ino === e.exeIno);
  }
  let initial: Outcome = true;
  if (c.initialNamespaces !== undefined) {
    const mntNs = ctx?.initialMntNs ?? null;
    initial = mntNs === null ? undefined : (e.userNs === INITIAL_USER_NS && e.mntNs === mntNs) === c.initialNamespaces;
  }
  return (
    resolve('path', path) &&
    resolve('exe', exe) &&
    resolve('initialNamespaces', initial) &&
    any(c.uid, e.uid) &&
    any(c.euid, e.euid) &&
    any(c.gid, e.gid) &&
    any(c.egid, e.egid) &&
    (c.comm === undefined || asList(c.comm).some((name) => Buffer.from(name, 'utf8').equals(e.commBytes))) &&
    (c.cgroupId === undefined || asList(c.cgroupId).some((id) => BigInt(id) === e.cgroupId)) &&
    (c.alreadyChrooted === undefined || c.alreadyChrooted === e.callerChrooted) &&
    any(c.mntNs, e.mntNs)
  );
}

/**
 * The reference evaluator: what the kernel program decides, computed in
 * JavaScript from an event's fields. Used for `enforce --audit` where the
 * BPF LSM cannot run (decisions then come from the watch probes, after the
 * fact), and by tests to cross-check the kernel. `context` gives the facts
 * the kernel compiled the policy with (see {@link PolicyContext}); without
 * it `exe` and `initialNamespaces` cannot be judged.
 *
 * Like the kernel, a condition that cannot be judged (a path cut short or
 * not reachable, an unknown executable) holds for deny rules and not for
 * others, and the reverse inside a `not` block: uncertainty resolves toward
 * denying.
 */
export function evaluatePolicy(policy: Policy, e: ChrootEvent, context?: PolicyContext): Evaluation {
  const unknown: string[] = [];
  for (const r of policy.rules) {
    const m = r.match ?? {};
    const deny = r.action === 'deny';
    const note = (what: string) => unknown.push(`${r.id}: ${what}`);
    if (m.not && conditionsHold(m.not, e, context, !deny, note)) continue;
    if (conditionsHold(m, e, context, deny, note)) return { action: r.action, ruleId: r.id, unknown };
  }
  return { action: policy.default ?? 'allow', ruleId: null, unknown };
}

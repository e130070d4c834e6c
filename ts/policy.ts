/**
 * chroot-guard policies: the types, the published JSON Schema
 * (`policy.schema.json`), parsing of YAML or JSON files with errors that
 * name the file, line and column, and the reference evaluator.
 * @module
 */
import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { Document, LineCounter, Node } from 'yaml';
import { ChrootGuardError, errorFromBinding } from './errors.js';
import { native } from './native.js';
import type { ChrootEvent } from './events.js';
import { firstInvalidUtf8 } from './utf8.js';

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
export class PolicyError extends ChrootGuardError {
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

// The limits the compiler shares with the kernel maps are defined in
// `crates/common/src/policy.rs` (MAX_RULES, MAX_PATHS, MAX_EXES,
// RULE_ID_BYTES) and `crates/common/src/lib.rs` (RESOLVED_MAX, COMM_LEN).
// `check` runs without the addon, so they are repeated here; a test holds
// them to the addon's `policyLimits()` and to `policy.schema.json`.

/** Most compiled rules (each value of a uid, euid, gid, egid, mntNs, comm or cgroupId list counts once per combination): `MAX_RULES` in `crates/common`. */
export const MAX_RULES = 64;
/** Most distinct `path`/`subtree` paths one policy may name: `MAX_PATHS` in `crates/common`. */
export const MAX_PATHS = 1024;
/** Most distinct `exe` paths one policy may name: `MAX_EXES` in `crates/common`. */
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
/**
 * Largest policy, in bytes: {@link loadPolicy} reads at most this many
 * bytes of a file (one more to tell it is larger), so a huge file,
 * `/dev/zero` or an endless FIFO is refused without being read whole;
 * {@link parsePolicy} refuses longer text, and every policy (files and
 * objects alike) must fit in it once written as JSON, the form the loader
 * receives. A policy at the other limits ({@link MAX_RULES} rules,
 * {@link MAX_PATHS} paths, {@link MAX_EXES} executables) is a few tens of
 * KiB.
 */
export const MAX_POLICY_BYTES = 1024 * 1024;
/**
 * Deepest nesting of lists and maps in a policy file. A policy needs 5
 * (policy, rules, rule, match, list); the bound keeps every recursive step
 * (the YAML composer, conversion, validation) far from the stack's end.
 */
export const MAX_POLICY_DEPTH = 64;
/**
 * Most YAML aliases (`*name`) in one policy file. Besides the expansion
 * bound below, this bounds the YAML library's alias lookup, which scans
 * the document once per alias.
 */
export const MAX_ALIASES = 100;
/**
 * Most values (scalars, lists, maps) all aliases of a file may stand for
 * together, each alias counting the values of what it names with aliases
 * inside expanded: a "billion laughs" file (aliases of aliases, growing
 * tenfold per level) is refused at the alias that crosses this, before
 * anything is expanded.
 */
export const MAX_ALIAS_VALUES = 10_000;


const EXPECTED: Record<string, string> = {
  path: 'an absolute path or a list of absolute paths',
  subtree: 'an absolute path or a list of absolute paths',
  exe: 'an absolute path or a list of absolute paths',
  uid: 'an id (0 to 4294967295) or a list of ids',
  euid: 'an id (0 to 4294967295) or a list of ids',
  mntNs: 'a mount namespace inode number or a list of them',
  gid: 'an id (0 to 4294967295) or a list of ids',
  egid: 'an id (0 to 4294967295) or a list of ids',
  comm: `a comm (1 to ${MAX_COMM_BYTES} bytes) or a list of them`,
  cgroupId: 'a cgroup id (a positive integer) or a list of them',
};

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  if (v === null) return 'null';
  // Quoted with JSON's escapes: a value with a newline or an escape
  // sequence cannot forge a line of `check`'s output.
  if (typeof v === 'string') return v.length > 80 ? `${JSON.stringify(v.slice(0, 80))}… (${v.length} characters)` : JSON.stringify(v);
  return typeof v === 'object' ? 'a map' : String(v);
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
        message = `unknown key ${JSON.stringify(extra)} (expected one of: ${allowed.join(', ')})`;
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

/** The keys of {@link PolicyConditions} whose lists multiply into compiled rules. */
const EXPANDING = ['uid', 'euid', 'gid', 'egid', 'mntNs', 'comm', 'cgroupId'] as const;

/** Compiled rules one block of conditions expands into: the product of its list lengths. */
const expansions = (m: PolicyConditions): number => EXPANDING.reduce<number>((acc, k) => acc * Math.max(1, asList(m[k] as never).length), 1);

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
    const blocks: Array<[string, PolicyConditions]> = [[`${at}/match`, m]];
    if (m.not) blocks.push([`${at}/match/not`, m.not]);
    if ((m.not as PolicyMatch | undefined)?.not !== undefined) out.push({ pointer: `${at}/match/not/not`, message: 'a not block cannot hold another not' });
    for (const [where, c] of blocks) {
      // Counted as the compiler counts its map entries: a subtree list that
      // names `/` is no condition, so its paths take no entry.
      const subtreeIsRoot = asList(c.subtree).some((x) => canonical(x) === '/');
      for (const key of ['path', 'subtree', 'exe'] as const) {
        asList(c[key]).forEach((path, j) => {
          const ptr = Array.isArray(c[key]) ? `${where}/${key}/${j}` : `${where}/${key}`;
          const raw = pathBytes(path);
          if (typeof raw === 'string') return void out.push({ pointer: ptr, message: `"${key}" ${JSON.stringify(path)} ${raw}` });
          if (raw.toString('latin1').split('/').some((x) => x === '.' || x === '..')) out.push({ pointer: ptr, message: `"${key}" ${JSON.stringify(path)} has . or .. components: write the absolute path itself` });
          // Bytes of the form the loader stores (canonical_path), not
          // characters: `canonical` holds one char per byte.
          const canon = canonical(path);
          if (canon.length > MAX_PATH_BYTES) {
            out.push({ pointer: ptr, message: `"${key}" is ${canon.length} bytes of UTF-8 (a \\xHH escape counts one, without repeated or trailing slashes); at most ${MAX_PATH_BYTES} (PATH_MAX - 1), as the kernel counts` });
          }
          if (key === 'exe') {
            exes.add(canon);
            if (exes.size > MAX_EXES) exesOver ??= ptr;
          } else if (!(key === 'subtree' && subtreeIsRoot)) {
            paths.add(canon);
            if (paths.size > MAX_PATHS) pathsOver ??= ptr;
          }
        });
      }
      asList(c.comm).forEach((name, j) => {
        if (Buffer.byteLength(name) > MAX_COMM_BYTES) {
          out.push({ pointer: Array.isArray(c.comm) ? `${where}/comm/${j}` : `${where}/comm`, message: `comm ${JSON.stringify(name)} is ${Buffer.byteLength(name)} bytes; the kernel keeps ${MAX_COMM_BYTES} (TASK_COMM_LEN - 1)` });
        }
      });
      asList(c.cgroupId).forEach((id, j) => {
        // YAML and JSON numbers become doubles: above 2^53 - 1 the value read
        // may not be the one written.
        if (!Number.isSafeInteger(id)) {
          out.push({ pointer: Array.isArray(c.cgroupId) ? `${where}/cgroupId/${j}` : `${where}/cgroupId`, message: `cgroupId ${id} is above ${Number.MAX_SAFE_INTEGER} (2^53 - 1), so it cannot be read exactly` });
        }
      });
    }
    const n = expansions(m) + (m.not ? expansions(m.not) : 0);
    compiled += n;
    if (compiled > MAX_RULES && compiled - n <= MAX_RULES) {
      out.push({ pointer: at, message: `the policy expands to more than ${MAX_RULES} rules here (${compiled}): each combination of uid, euid, gid, egid, mntNs, comm and cgroupId values is one rule, in match and in not` });
    }
  });
  if (pathsOver) out.push({ pointer: pathsOver, message: `distinct path number ${MAX_PATHS + 1} (path and subtree): the policy names ${paths.size}, at most ${MAX_PATHS}` });
  if (exesOver) out.push({ pointer: exesOver, message: `distinct executable number ${MAX_EXES + 1}: the policy names ${exes.size}, at most ${MAX_EXES}` });
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
  // What the loader receives; for files, larger than the file only through
  // YAML aliases (or JSON's quoting).
  const json = Buffer.byteLength(JSON.stringify(policy));
  if (json > MAX_POLICY_BYTES) {
    throw fail([where('', `the policy is ${json} bytes as JSON (with YAML aliases expanded), larger than ${MAX_POLICY_BYTES}, the most a policy may be`)]);
  }
  return policy;
}

/**
 * Validates a policy object (for policies built in code): the schema, then
 * the limits the loader and the kernel set (rule count after list
 * expansion, distinct paths and executables, path and comm bytes), and at
 * most {@link MAX_POLICY_BYTES} as JSON.
 * @returns The same object, typed.
 * @throws {PolicyError} `INVALID_POLICY`, problems named by JSON pointer.
 */
export function validatePolicy(value: unknown): Policy {
  return check(value, undefined);
}

/** A problem at a byte offset of the text (a YAML node's `range[0]`). */
function problemAt(file: string | undefined, lc: LineCounter, offset: number, message: string): PolicyProblem {
  const { line, col } = lc.linePos(offset);
  return { ...(file !== undefined ? { file } : {}), line, column: col, pointer: '', message };
}

/**
 * What the YAML document must not do before it is converted: nest deeper
 * than {@link MAX_POLICY_DEPTH}, repeat a map key, use an alias that names
 * no earlier anchor or sits inside the value it names, use more than
 * {@link MAX_ALIASES} aliases or let them stand for more than
 * {@link MAX_ALIAS_VALUES} values. One pass, without recursion (so a deep
 * document cannot overflow the stack here), in the order the YAML library
 * resolves aliases: a node, then its children.
 */
function structureProblem(doc: Document): { offset: number; message: string } | undefined {
  const { isAlias, isCollection, isMap, isPair, isScalar } = yaml();
  const anchors = new Map<string, Node>();
  // Values each finished node stands for, aliases expanded. An anchor
  // without an entry yet is still open: an alias to it is inside it.
  const values = new Map<unknown, number>();
  let aliases = 0;
  let aliasValues = 0;
  const stack: Array<{ node: Node; depth: number; open: boolean }> = [];
  if (doc.contents) stack.push({ node: doc.contents, depth: 1, open: false });
  while (stack.length) {
    const top = stack[stack.length - 1]!;
    const n = top.node;
    if (top.open) {
      // All children done: a collection counts itself and them.
      stack.pop();
      let sum = 1;
      for (const item of (n as unknown as { items: unknown[] }).items) {
        if (isPair(item)) sum += (values.get(item.key) ?? 0) + (values.get(item.value) ?? 0);
        else sum += values.get(item) ?? 0;
      }
      values.set(n, sum);
      continue;
    }
    top.open = true;
    const offset = n.range?.[0] ?? 0;
    if (isAlias(n)) {
      stack.pop();
      const target = anchors.get(n.source);
      if (!target) return { offset, message: `alias *${n.source} names no anchor (&${n.source}) before it` };
      const v = values.get(target);
      if (v === undefined) return { offset, message: `alias *${n.source} is inside the value it names` };
      if (++aliases > MAX_ALIASES) return { offset, message: `more than ${MAX_ALIASES} aliases (*name); at most ${MAX_ALIASES} per policy` };
      aliasValues += v;
      if (aliasValues > MAX_ALIAS_VALUES) {
        return { offset, message: `aliases stand for more than ${MAX_ALIAS_VALUES} values from here on (a "billion laughs"?); at most ${MAX_ALIAS_VALUES} per policy` };
      }
      values.set(n, v);
      continue;
    }
    if (n.anchor) anchors.set(n.anchor, n);
    if (!isCollection(n)) {
      stack.pop();
      values.set(n, 1);
      continue;
    }
    if (top.depth > MAX_POLICY_DEPTH) return { offset, message: `lists and maps nested more than ${MAX_POLICY_DEPTH} deep` };
    // Duplicate keys, as the YAML library's uniqueKeys would find them
    // (equal scalar values), in linear time: the library compares each key
    // with every earlier one, minutes for a 1 MiB map.
    const keys = isMap(n) ? new Set<unknown>() : undefined;
    const children: Node[] = [];
    for (const item of n.items as unknown[]) {
      if (isPair(item)) {
        if (keys && isScalar(item.key)) {
          if (keys.has(item.key.value)) return { offset: item.key.range?.[0] ?? offset, message: `map keys must be unique: ${describe(item.key.value)} is repeated` };
          keys.add(item.key.value);
        }
        for (const c of [item.key, item.value]) if (c) children.push(c as Node);
      } else if (item) children.push(item as Node);
    }
    for (let i = children.length - 1; i >= 0; i--) stack.push({ node: children[i]!, depth: top.depth + 1, open: false });
  }
  return undefined;
}

/**
 * Parses and validates a policy written in YAML or JSON.
 * @param text The policy; at most {@link MAX_POLICY_BYTES} bytes as UTF-8.
 * @param file Its name, for messages.
 * @returns The policy, validated as by {@link validatePolicy}.
 * @throws {PolicyError} `INVALID_POLICY` with the line and column of each
 * problem: YAML syntax, the document's structure (nesting depth, repeated
 * keys, aliases: see {@link MAX_POLICY_DEPTH}, {@link MAX_ALIASES},
 * {@link MAX_ALIAS_VALUES}), the schema and the limits; a text that is too
 * large has no line.
 */
export function parsePolicy(text: string, file?: string): Policy {
  const size = Buffer.byteLength(text);
  if (size > MAX_POLICY_BYTES) {
    throw new PolicyError([{ ...(file !== undefined ? { file } : {}), pointer: '', message: `the policy is ${size} bytes, larger than ${MAX_POLICY_BYTES}, the most a policy may be` }]);
  }
  const { LineCounter, parseDocument } = yaml();
  const lineCounter = new LineCounter();
  // uniqueKeys: structureProblem finds repeated keys (the library's own
  // check takes quadratic time).
  const doc = parseDocument(text, { lineCounter, uniqueKeys: false });
  // The composer reports a stack overflow (nesting hundreds deep) as
  // RESOURCE_EXHAUSTION: that is the one to name. Otherwise the first
  // syntax error: later ones are usually its echoes.
  const e = doc.errors.find((x) => x.code === 'RESOURCE_EXHAUSTION') ?? doc.errors[0];
  if (e) {
    throw new PolicyError([
      {
        ...(file !== undefined ? { file } : {}),
        ...(e.linePos ? { line: e.linePos[0].line, column: e.linePos[0].col } : {}),
        pointer: '',
        message:
          e.code === 'RESOURCE_EXHAUSTION'
            ? `lists and maps nested more than ${MAX_POLICY_DEPTH} deep`
            : `not valid YAML or JSON: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`,
      },
    ]);
  }
  const bad = structureProblem(doc);
  if (bad) throw new PolicyError([problemAt(file, lineCounter, bad.offset, bad.message)]);
  let value: unknown;
  try {
    // structureProblem bounds the aliases: the library's own alias limit
    // (a heuristic with no position) is not needed on top.
    value = doc.toJS({ maxAliasCount: -1 });
  } catch (err) {
    throw new PolicyError([problemAt(file, lineCounter, doc.contents?.range?.[0] ?? 0, `cannot be converted: ${(err as Error).message}`)]);
  }
  return check(value, file, doc, lineCounter);
}

/**
 * The bytes of a policy file, at most {@link MAX_POLICY_BYTES}: open, fstat,
 * then read up to one byte more than the limit, so nothing larger is ever
 * read whole. A regular file's size is checked before reading; a device
 * (`/dev/zero`) or a FIFO is read until end of file or the limit. Opening a
 * FIFO waits for a writer, as any reader does.
 */
function readPolicyFile(file: string): Buffer {
  const fail = (message: string) => new PolicyError([{ file, pointer: '', message }]);
  const tooLarge = (size?: number) => fail(`the policy file is larger than ${MAX_POLICY_BYTES} bytes, the most a policy may be${size !== undefined ? ` (it is ${size} bytes)` : ''}`);
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    throw fail(`cannot read the policy file: ${(err as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw fail('cannot read the policy file: it is a directory');
    if (st.isFile() && st.size > MAX_POLICY_BYTES) throw tooLarge(st.size);
    const buf = Buffer.allocUnsafe(MAX_POLICY_BYTES + 1);
    let n = 0;
    for (let r; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += r;
    if (n > MAX_POLICY_BYTES) throw tooLarge();
    return buf.subarray(0, n);
  } catch (err) {
    throw err instanceof PolicyError ? err : fail(`cannot read the policy file: ${(err as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads, parses and validates a policy file (YAML or JSON, UTF-8): at most
 * {@link MAX_POLICY_BYTES} are read (see that constant), bytes that are not
 * UTF-8 are an error at their line and column (never replaced, which could
 * change a path), then as {@link parsePolicy}.
 * @throws {PolicyError} `INVALID_POLICY` for a file that cannot be read, is
 * a directory, is larger than the limit or is not UTF-8, and for every
 * problem {@link parsePolicy} finds.
 */
export function loadPolicy(file: string): Policy {
  const bytes = readPolicyFile(file);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    // The decoder and firstInvalidUtf8 accept the same sequences (Table 3-7).
    const bad = Math.max(0, firstInvalidUtf8(bytes));
    const lineStart = bytes.subarray(0, bad).lastIndexOf(0x0a) + 1;
    const line = bytes.subarray(0, lineStart).reduce((k, b) => k + (b === 0x0a ? 1 : 0), 1);
    // Columns count UTF-16 code units, as the YAML parser's do.
    const column = new TextDecoder('utf-8').decode(bytes.subarray(lineStart, bad)).length + 1;
    const seen = [...bytes.subarray(bad, bad + 4)].map((b) => `0x${b.toString(16).padStart(2, '0')}`).join(' ');
    throw new PolicyError([{ file, line, column, pointer: '', message: `not valid UTF-8: the bytes at offset ${bad} (${seen}) are not a character; policy files must be UTF-8` }]);
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
 * `crates/loader/src/policy/compile.rs`).
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
 * @throws {ChrootGuardError} `INVALID_ARGUMENT` when an `exe` file cannot be
 * identified (it must exist), `NATIVE_UNAVAILABLE` without the addon.
 */
export function policyContext(policy: Policy): PolicyContext {
  const r = native().policyContext(JSON.stringify(policy));
  if (r.failure) throw errorFromBinding(r.failure);
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

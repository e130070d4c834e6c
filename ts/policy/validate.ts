/**
 * Policies in: parsing of YAML or JSON text and files, with errors that name
 * the file, line and column, and validation against the published JSON
 * Schema (`policy.schema.json`) and the limits of `types.ts`; and the
 * warnings `check` gives about policies that are valid.
 * @module
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { Document, LineCounter, Node } from 'yaml';
import type { ChrootGuardError } from '../errors.js';
import { firstInvalidUtf8 } from '../utf8.js';
import {
  asList,
  canonical,
  MAX_ALIAS_VALUES,
  MAX_ALIASES,
  MAX_COMM_BYTES,
  MAX_EXES,
  MAX_PATH_BYTES,
  MAX_PATHS,
  MAX_POLICY_BYTES,
  MAX_POLICY_DEPTH,
  MAX_RULE_ID_BYTES,
  MAX_RULES,
  pathBytes,
  PolicyError,
  type Policy,
  type PolicyConditions,
  type PolicyMatch,
  type PolicyProblem,
} from './types.js';
import { openTrustedFile } from './trusted-file.js';

const require = createRequire(import.meta.url);

// By the package's own name (its exports list the schema): this file sits
// two folders below the package root, the bundles in dist/ one.
/** The policy's JSON Schema (draft-07), as published in `policy.schema.json`. */
export const policySchema: Record<string, unknown> = require('chroot-guard/policy.schema.json') as Record<string, unknown>;

// ajv and yaml load on first use: a watch-only program never pays for them
// (about 60 ms of start-up together).
let validator: ValidateFunction | undefined;
const yaml = () => require('yaml') as typeof import('yaml');

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

/** What a string a `pattern` of the agent config's schema refuses should be, by its key. */
const PATTERN_EXPECTED: Record<string, string> = {
  listen: 'HOST:PORT, e.g. 127.0.0.1:9641, [::1]:9641 or 0.0.0.0:9641 (a host name or IP address, a port)',
  pinDir: 'an absolute path (a directory on bpffs)',
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
function schemaProblems(errors: readonly ErrorObject[], value: unknown, noun: string): Array<{ pointer: string; message: string; key?: string }> {
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
      case 'minimum':
      case 'maximum':
        message = `"${key}" must be ${e.keyword === 'minimum' ? 'at least' : 'at most'} ${(e.params as { limit: number }).limit}; got ${describe(got)}`;
        break;
      case 'enum':
        message = `"${key}" must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}; got ${describe(got)}`;
        break;
      case 'oneOf':
        message = `"${key}" must be ${EXPECTED[key] ?? 'one of the allowed forms'}; got ${describe(got)}`;
        break;
      case 'type':
        // A key with a string form of its own says what that is: `listen: 9641` is a port without its host.
        if ((e.params as { type: string }).type === 'string' && PATTERN_EXPECTED[key] !== undefined) {
          message = `"${key}" must be ${PATTERN_EXPECTED[key]}; got ${describe(got)}`;
          break;
        }
        message = `${at === '' ? `the ${noun}` : `"${key}"`} must be ${(e.params as { type: string }).type === 'object' ? 'a map' : `of type ${(e.params as { type: string }).type}`}; got ${describe(got)}`;
        break;
      case 'pattern':
        message =
          noun === 'policy' && at.endsWith('/id')
            ? `rule id ${describe(got)} must start with a letter or digit and use only letters, digits, '.', '_' and '-' (at most ${MAX_RULE_ID_BYTES})`
            : PATTERN_EXPECTED[key] !== undefined
              ? `"${key}" must be ${PATTERN_EXPECTED[key]}; got ${describe(got)}`
              : `must match ${(e.params as { pattern: string }).pattern}; got ${describe(got)}`;
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

/**
 * A kind of YAML or JSON document this module reads: policies, and the
 * agent's configuration (`ts/agent/config.ts`). Each has its schema and
 * checks; they share the parsing, the limits on the document's structure,
 * the positions and the problem shape ({@link PolicyProblem}).
 * @internal
 */
export interface DocumentKind<T> {
  /** What the document is called in messages: `policy`, `agent config`. */
  readonly noun: string;
  /** Most bytes of the text (and of the file read). */
  readonly maxBytes: number;
  /** Validates against the kind's JSON Schema, ajv's errors on `errors` (compiled on first use). */
  readonly schema: () => ValidateFunction;
  /**
   * Checks the schema cannot make, on a value that fits it: problems at a
   * pointer of this document, or whole problems of another file it names
   * (the agent config's policy file), which keep their own position and
   * follow this document's own problems.
   */
  readonly semantic?: (value: T) => Array<{ pointer: string; message: string } | (PolicyProblem & { readonly file: string })>;
  /** The error that carries the problems (code `INVALID_POLICY`, `INVALID_CONFIG`). */
  readonly error: (problems: PolicyProblem[]) => ChrootGuardError;
  /** What a valid document may still get wrong (`check`'s warnings), at pointers of it. */
  readonly warnings?: (value: T) => Array<{ pointer: string; message: string }>;
}

/** Compiles a draft-07 schema with ajv (loaded on first use), as policies are checked. @internal */
export function compileSchema(schema: object): ValidateFunction {
  const { Ajv } = require('ajv') as typeof import('ajv');
  return new Ajv({ allErrors: true, strict: false, verbose: true }).compile(schema);
}

/**
 * Validates `value` as a document of `kind`; problems positioned in `doc`
 * when given. With `warnings`, the kind's warnings on a valid document are
 * pushed to it, positioned the same way. @internal
 */
export function checkDocument<T>(kind: DocumentKind<T>, value: unknown, file: string | undefined, doc?: Document, lc?: LineCounter, warnings?: PolicyProblem[]): T {
  const where = (pointer: string, message: string, key?: string): PolicyProblem => ({
    ...(file !== undefined ? { file } : {}),
    ...position(doc, lc, pointer, key),
    pointer,
    message,
  });
  // Problems in file order where positions are known (the count limits are
  // found after the rules they name).
  // Another file's problems (sort is stable) stay in their own order, after these.
  const fail = (problems: PolicyProblem[]) =>
    kind.error(problems.sort((a, b) => Number(a.file !== file) - Number(b.file !== file) || (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0)));
  const validate = kind.schema();
  if (!validate(value)) throw fail(schemaProblems(validate.errors ?? [], value, kind.noun).map((p) => where(p.pointer, p.message, p.key)));
  const semantic = kind.semantic?.(value as T) ?? [];
  if (semantic.length) throw fail(semantic.map((p) => ('file' in p ? p : where(p.pointer, p.message))));
  if (warnings && kind.warnings) warnings.push(...kind.warnings(value as T).map((w) => where(w.pointer, w.message)));
  return value as T;
}

const POLICY: DocumentKind<Policy> = {
  noun: 'policy',
  maxBytes: MAX_POLICY_BYTES,
  schema: () => (validator ??= compileSchema(policySchema)),
  semantic: (policy) => {
    const semantic = semanticProblems(policy);
    if (semantic.length) return semantic;
    // What the loader receives; for files, larger than the file only
    // through YAML aliases (or JSON's quoting).
    const json = Buffer.byteLength(JSON.stringify(policy));
    return json > MAX_POLICY_BYTES ? [{ pointer: '', message: `the policy is ${json} bytes as JSON (with YAML aliases expanded), larger than ${MAX_POLICY_BYTES}, the most a policy may be` }] : [];
  },
  error: (problems) => new PolicyError(problems),
  warnings: (policy) => [...policyWarnings(policy), ...hostWarnings(policy)],
};

function check(value: unknown, file: string | undefined, doc?: Document, lc?: LineCounter): Policy {
  return checkDocument(POLICY, value, file, doc, lc);
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
function structureProblem(doc: Document, noun: string): { offset: number; message: string } | undefined {
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
      if (++aliases > MAX_ALIASES) return { offset, message: `more than ${MAX_ALIASES} aliases (*name); at most ${MAX_ALIASES} per ${noun}` };
      aliasValues += v;
      if (aliasValues > MAX_ALIAS_VALUES) {
        return { offset, message: `aliases stand for more than ${MAX_ALIAS_VALUES} values from here on (a "billion laughs"?); at most ${MAX_ALIAS_VALUES} per ${noun}` };
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
  return parseDocument(POLICY, text, file);
}

/** Parses and validates a document of `kind`, as {@link parsePolicy} does a policy. @internal */
export function parseDocument<T>(kind: DocumentKind<T>, text: string, file?: string, warnings?: PolicyProblem[]): T {
  const size = Buffer.byteLength(text);
  if (size > kind.maxBytes) {
    throw kind.error([{ ...(file !== undefined ? { file } : {}), pointer: '', message: `the ${kind.noun} is ${size} bytes, larger than ${kind.maxBytes}, the most a ${kind.noun} may be` }]);
  }
  const { LineCounter, parseDocument: parseYaml } = yaml();
  const lineCounter = new LineCounter();
  // uniqueKeys: structureProblem finds repeated keys (the library's own
  // check takes quadratic time).
  const doc = parseYaml(text, { lineCounter, uniqueKeys: false });
  // The composer reports a stack overflow (nesting hundreds deep) as
  // RESOURCE_EXHAUSTION: that is the one to name. Otherwise the first
  // syntax error: later ones are usually its echoes.
  const e = doc.errors.find((x) => x.code === 'RESOURCE_EXHAUSTION') ?? doc.errors[0];
  if (e) {
    throw kind.error([
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
  const bad = structureProblem(doc, kind.noun);
  if (bad) throw kind.error([problemAt(file, lineCounter, bad.offset, bad.message)]);
  let value: unknown;
  try {
    // structureProblem bounds the aliases: the library's own alias limit
    // (a heuristic with no position) is not needed on top.
    value = doc.toJS({ maxAliasCount: -1 });
  } catch (err) {
    throw kind.error([problemAt(file, lineCounter, doc.contents?.range?.[0] ?? 0, `cannot be converted: ${(err as Error).message}`)]);
  }
  return checkDocument(kind, value, file, doc, lineCounter, warnings);
}

/**
 * The bytes of a policy file, at most {@link MAX_POLICY_BYTES}: open, fstat,
 * then read up to one byte more than the limit, so nothing larger is ever
 * read whole. A regular file's size is checked before reading; a device
 * (`/dev/zero`) or a FIFO is read until end of file or the limit. Opening a
 * FIFO waits for a writer, as any reader does. With `trusted`, opened by
 * `openTrustedFile` (`trusted-file.ts`), which refuses a file another user
 * could change before reading a byte of it.
 */
function readDocumentFile(kind: DocumentKind<unknown>, file: string, trusted = false): Buffer {
  const max = kind.maxBytes;
  const noun = kind.noun;
  let ours: ChrootGuardError | undefined;
  const fail = (message: string) => (ours = kind.error([{ file, pointer: '', message }]));
  const tooLarge = (size?: number) => fail(`the ${noun} file is larger than ${max} bytes, the most a ${noun} may be${size !== undefined ? ` (it is ${size} bytes)` : ''}`);
  let fd: number;
  let st: Stats;
  if (trusted) {
    ({ fd, stat: st } = openTrustedFile(file, (message) => fail(`cannot read the ${noun} file: ${message}`)));
  } else {
    try {
      fd = openSync(file, 'r');
    } catch (err) {
      throw fail(`cannot read the ${noun} file: ${(err as Error).message}`);
    }
  }
  try {
    st ??= fstatSync(fd);
    if (st.isDirectory()) throw fail(`cannot read the ${noun} file: it is a directory`);
    if (st.isFile() && st.size > max) throw tooLarge(st.size);
    const buf = Buffer.allocUnsafe(max + 1);
    let n = 0;
    for (let r; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += r;
    if (n > max) throw tooLarge();
    return buf.subarray(0, n);
  } catch (err) {
    throw err === ours ? err : fail(`cannot read the ${noun} file: ${(err as Error).message}`);
  } finally {
    closeSync(fd);
  }
}

/** Options of {@link loadPolicy}. */
export interface LoadPolicyOptions {
  /**
   * The policy is about to be loaded into the kernel as root: refuse a
   * file that a user other than root (or this process's effective uid)
   * could change, with `UNSAFE_POLICY_FILE`. The file, every directory on
   * its path from `/` and every symbolic link on the way must be owned by
   * root, and none writable by group or others (a sticky directory such as
   * `/tmp` excepted for its root-owned entries); the file is opened once,
   * judged on its descriptor and parsed from what that descriptor read.
   * `enforce` and the agent's guard (and `agent --check-config`) read with
   * it; `check` and `replay` do not. Default false.
   */
  readonly trusted?: boolean;
}

/**
 * Reads, parses and validates a policy file (YAML or JSON, UTF-8): at most
 * {@link MAX_POLICY_BYTES} are read (see that constant), bytes that are not
 * UTF-8 are an error at their line and column (never replaced, which could
 * change a path), then as {@link parsePolicy}.
 * @throws {PolicyError} `INVALID_POLICY` for a file that cannot be read, is
 * a directory, is larger than the limit or is not UTF-8, and for every
 * problem {@link parsePolicy} finds.
 * @throws {UnsafePolicyFileError} `UNSAFE_POLICY_FILE` with `trusted`, for
 * a file another user could change (nothing of it is parsed).
 */
export function loadPolicy(file: string, options: LoadPolicyOptions = {}): Policy {
  return loadDocument(POLICY, file, options.trusted === true);
}

/**
 * Reads, parses and validates a document file of `kind`, as {@link loadPolicy}
 * does a policy file (`trusted` as its option; `warnings` as
 * {@link checkDocument}'s). @internal
 */
export function loadDocument<T>(kind: DocumentKind<T>, file: string, trusted = false, warnings?: PolicyProblem[]): T {
  const bytes = readDocumentFile(kind as DocumentKind<unknown>, file, trusted);
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
    throw kind.error([{ file, line, column, pointer: '', message: `not valid UTF-8: the bytes at offset ${bad} (${seen}) are not a character; ${kind.noun} files must be UTF-8` }]);
  }
  return parseDocument(kind, text, file, warnings);
}

/**
 * `check`'s reading of a policy file: as {@link loadPolicy}, and what
 * {@link policyWarnings} and {@link hostWarnings} find, each with the line
 * and column of the value it names. @internal
 * @throws {PolicyError} as {@link loadPolicy}.
 */
export function loadPolicyWithWarnings(file: string): { policy: Policy; warnings: PolicyProblem[] } {
  const warnings: PolicyProblem[] = [];
  const policy = loadDocument(POLICY, file, false, warnings);
  return { policy, warnings };
}

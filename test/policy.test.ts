/**
 * Policies without the kernel: parsing, validation with positions, the
 * published schema, `chroot-guard check`, and the reference evaluator.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import {
  evaluatePolicy,
  loadPolicy,
  MAX_COMM_BYTES,
  MAX_EXES,
  MAX_PATH_BYTES,
  MAX_PATHS,
  MAX_RULE_ID_BYTES,
  MAX_RULES,
  parsePolicy,
  PolicyError,
  policySchema,
  validatePolicy,
  type ChrootEvent,
  type Policy,
} from '../ts/index.js';
import { native } from '../ts/native.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const dir = fileURLToPath(new URL('./policies/', import.meta.url));

/** Each malformed file and the one problem it must report, with its position. */
const MALFORMED: Record<string, [line: number, column: number, message: RegExp]> = {
  'bad-yaml.yaml': [5, 35, /not valid YAML or JSON: Flow sequence .* end with a \]/],
  'unknown-key.yaml': [7, 7, /unknown key "usr" \(expected one of: path, subtree, uid, euid, gid, egid, comm, exe, cgroupId, alreadyChrooted, mntNs\)/],
  'wrong-type.yaml': [6, 12, /"uid" must be an id \(0 to 4294967295\) or a list of ids; got "root"/],
  'duplicate-id.yaml': [8, 9, /duplicate rule id "jails" \(first used by rule 1\)/],
  'relative-path.yaml': [6, 16, /"subtree" must be an absolute path or a list of absolute paths; got "srv\/jails"/],
  'bad-action.json': [4, 32, /"action" must be one of allow, deny, audit; got "block"/],
  'long-comm.yaml': [6, 27, /comm "a-very-long-task-name" is 21 bytes; the kernel keeps 15/],
  // 2001 UTF-16 code units (what JSON Schema's maxLength counts), 6001 bytes (what the kernel counts).
  'long-path-bytes.yaml': [7, 16, /"subtree" is 6001 bytes of UTF-8 .*; at most 4095 \(PATH_MAX - 1\)/],
  'big-cgroup-id.yaml': [5, 24, /cgroupId 18446744073709552000 is above 9007199254740991 \(2\^53 - 1\)/],
};

describe('policy files', () => {
  it('has a test for every malformed fixture', () => {
    expect(readdirSync(dir).sort()).toEqual(Object.keys(MALFORMED).sort());
  });

  for (const [file, [line, column, message]] of Object.entries(MALFORMED)) {
    it(`${file}: one clear error at ${line}:${column}`, () => {
      let err: unknown;
      try {
        loadPolicy(`${dir}${file}`);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(PolicyError);
      const problems = (err as PolicyError).problems;
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatchObject({ file: `${dir}${file}`, line, column });
      expect(problems[0]!.message).toMatch(message);
      expect((err as PolicyError).code).toBe('INVALID_POLICY');
    });
  }

  it('chroot-guard check prints FILE:LINE:COL for each bad file and exits 2; good files pass', () => {
    const files = Object.keys(MALFORMED).map((f) => `${dir}${f}`);
    const r = spawnSync(process.execPath, [CLI, 'check', ...files, 'examples/build-farm.yaml'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    for (const [file, [line, column]] of Object.entries(MALFORMED)) expect(r.stderr).toContain(`${dir}${file}:${line}:${column}: `);
    expect(r.stdout).toContain('examples/build-farm.yaml: ok (enforce, 3 rules, default deny)');
    const good = spawnSync(process.execPath, [CLI, 'check', 'examples/build-farm.yaml'], { encoding: 'utf8' });
    expect(good.status).toBe(0);
  });

  it('check needs no privileges', () => {
    const r = spawnSync('setpriv', ['--bounding-set=-all', '--inh-caps=-all', process.execPath, CLI, 'check', 'examples/build-farm.yaml'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
  });

  it('JSON and YAML forms of one policy parse the same', () => {
    const yaml = loadPolicy('examples/build-farm.yaml');
    expect(parsePolicy(JSON.stringify(yaml), 'x.json')).toEqual(yaml);
  });

  it('the published schema documents every match key the evaluator and compiler know', () => {
    const match = (policySchema as { definitions: { match: { properties: object } } }).definitions.match.properties;
    expect(Object.keys(match).sort()).toEqual(['alreadyChrooted', 'cgroupId', 'comm', 'egid', 'euid', 'exe', 'gid', 'mntNs', 'path', 'subtree', 'uid'].sort());
    const onDisk = JSON.parse(readFileSync('policy.schema.json', 'utf8')) as object;
    expect(onDisk).toEqual(policySchema);
  });
});

/** The PolicyError `f` throws (fails the test when it throws anything else, or nothing). */
function policyError(f: () => unknown): PolicyError {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PolicyError);
  expect((err as PolicyError).code).toBe('INVALID_POLICY');
  return err as PolicyError;
}

const tmp = mkdtempSync(join(tmpdir(), 'cg-policy-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** `chroot-guard ARGS` (no privileges, no kernel needed for what these reach). */
const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });

/** A policy of `rules`, enforcing. */
const policyOf = (rules: Policy['rules']): Policy => ({ mode: 'enforce', rules });
/** `n` bytes of UTF-8, in two-byte characters where possible (so characters ≠ bytes). */
const bytesOf = (n: number) => 'é'.repeat(Math.floor(n / 2)) + 'x'.repeat(n % 2);
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * Every limit `check` and the loader share: the value, and a policy at a
 * given count. Built once, checked on both sides below.
 */
const LIMITS: Array<{ what: string; limit: number; native: keyof ReturnType<ReturnType<typeof native>['policyLimits']> | null; policy: (n: number) => Policy; message: RegExp }> = [
  { what: 'compiled rules: one list expanded', limit: MAX_RULES, native: 'maxRules', policy: (n) => policyOf([{ id: 'r', action: 'deny', match: { uid: range(n) } }]), message: /expands to more than 64 rules/ },
  {
    what: 'compiled rules: rules × list products',
    limit: MAX_RULES,
    native: 'maxRules',
    policy: (n) => policyOf([...range(Math.floor(n / 4)).map((i) => ({ id: `r${i}`, action: 'deny' as const, match: { uid: [1, 2], comm: ['a', 'b'] } })), ...range(n % 4).map((i) => ({ id: `s${i}`, action: 'allow' as const }))]),
    message: /expands to more than 64 rules/,
  },
  { what: 'distinct paths (path and subtree)', limit: MAX_PATHS, native: 'maxPaths', policy: (n) => policyOf([{ id: 'p', action: 'deny', match: { path: range(n).map((i) => `/srv/p${i}/`) } }]), message: /distinct path number 1025/ },
  {
    what: 'distinct paths, with a subtree list naming / (which takes no entry)',
    limit: MAX_PATHS,
    native: 'maxPaths',
    policy: (n) =>
      policyOf([
        { id: 'root', action: 'allow', match: { subtree: ['/', '/srv/not-counted'] } },
        { id: 'p', action: 'deny', match: { subtree: range(n).map((i) => `//srv//p${i}`) } },
      ]),
    message: /distinct path number 1025/,
  },
  { what: 'distinct executables', limit: MAX_EXES, native: 'maxExes', policy: (n) => policyOf([{ id: 'e', action: 'deny', match: { exe: range(n).map((i) => `/usr/bin/e${i}`) } }]), message: /distinct executable number 513/ },
  { what: 'comm bytes', limit: MAX_COMM_BYTES, native: 'maxCommBytes', policy: (n) => policyOf([{ id: 'c', action: 'deny', match: { comm: bytesOf(n) } }]), message: /bytes; the kernel keeps 15/ },
  { what: 'path bytes (three-byte characters)', limit: MAX_PATH_BYTES, native: 'maxPathBytes', policy: (n) => policyOf([{ id: 'p', action: 'deny', match: { subtree: `/${'路'.repeat(Math.floor((n - 1) / 3))}${'x'.repeat((n - 1) % 3)}` } }]), message: /is 4096 bytes of UTF-8/ },
  { what: 'path bytes, counted without repeated and trailing slashes', limit: MAX_PATH_BYTES, native: 'maxPathBytes', policy: (n) => policyOf([{ id: 'p', action: 'deny', match: { path: `//${bytesOf(n - 1)}//` } }]), message: /is 4096 bytes of UTF-8/ },
  { what: 'exe bytes', limit: MAX_PATH_BYTES, native: 'maxPathBytes', policy: (n) => policyOf([{ id: 'e', action: 'deny', match: { exe: `/${bytesOf(n - 1)}` } }]), message: /"exe" is 4096 bytes of UTF-8/ },
  { what: 'rule id length', limit: MAX_RULE_ID_BYTES, native: 'maxRuleIdBytes', policy: (n) => policyOf([{ id: 'i'.repeat(n), action: 'deny' }]), message: /must start with a letter or digit .* \(at most 64\)/ },
];

describe('check and the loader agree on every limit (the Rust compiler through the internal compilePolicy(), no kernel)', () => {
  it('the TypeScript limits are the compiler\'s (policyLimits())', () => {
    const rust = native().policyLimits();
    for (const l of LIMITS) if (l.native) expect(l.limit, l.what).toBe(rust[l.native]);
    expect(Object.keys(rust).sort()).toEqual([...new Set(LIMITS.map((l) => l.native))].sort());
    // The schema spells the id bound in its pattern, and documents the others.
    const rule = (policySchema as { definitions: { rule: { properties: { id: { pattern: string } } } } }).definitions.rule.properties.id.pattern;
    expect(rule).toBe(`^[A-Za-z0-9][A-Za-z0-9._-]{0,${MAX_RULE_ID_BYTES - 1}}$`);
    const text = JSON.stringify(policySchema);
    for (const n of [MAX_RULES, MAX_PATHS, MAX_EXES, MAX_PATH_BYTES, MAX_COMM_BYTES]) expect(text).toContain(`${n}`);
  });

  for (const l of LIMITS) {
    it(`${l.what}: ${l.limit} passes check and compiles; ${l.limit + 1} fails check with a position and is refused by the compiler`, () => {
      const at = l.policy(l.limit);
      const over = l.policy(l.limit + 1);
      // check: the same text the CLI would read, positions from it.
      expect(() => parsePolicy(JSON.stringify(at, null, 2), 'at.json')).not.toThrow();
      const err = policyError(() => parsePolicy(JSON.stringify(over, null, 2), 'over.json'));
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]!.line).toBeGreaterThan(1);
      expect(err.problems[0]!.column).toBeGreaterThan(0);
      expect(err.problems[0]!.message).toMatch(l.message);
      // The compiler enforce runs, on the JSON chrootGuard() sends.
      const compiled = native().compilePolicy(JSON.stringify(validatePolicy(at)));
      expect(compiled, compiled.errorMessage ?? '').toMatchObject({ ok: true });
      expect(native().compilePolicy(JSON.stringify(over))).toMatchObject({ ok: false });
    });
  }

  it('chroot-guard check passes each policy at the limit and fails each one over it with FILE:LINE:COL', () => {
    const files = LIMITS.flatMap((l, i) =>
      (['at', 'over'] as const).map((k) => {
        const file = join(tmp, `limit-${i}-${k}.json`);
        writeFileSync(file, JSON.stringify(l.policy(k === 'at' ? l.limit : l.limit + 1), null, 2));
        return { file, k };
      }),
    );
    const at = cli(['check', ...files.filter((f) => f.k === 'at').map((f) => f.file)]);
    expect(at.stderr).toBe('');
    expect(at.status).toBe(0);
    for (const { file, k } of files.filter((f) => f.k === 'over')) {
      const r = cli(['check', file]);
      expect(r.status, `${file} ${k}`).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`^${file}:\\d+:\\d+: `));
    }
  });
});

describe('evaluatePolicy (the reference for the kernel program)', () => {
  const event = (over: Partial<ChrootEvent>): ChrootEvent =>
    ({ uid: 0, gid: 0, euid: 0, egid: 0, comm: 'chroot', cgroupId: 1n, resolvedPath: '/srv/jails/a', resolvedPathTruncated: false, callerChrooted: false, ...over }) as ChrootEvent;
  const policy: Policy = {
    mode: 'enforce',
    default: 'allow',
    rules: [
      { id: 'nested', action: 'deny', match: { alreadyChrooted: true } },
      { id: 'exact', action: 'audit', match: { path: '/srv/jails/' } },
      { id: 'jails', action: 'deny', match: { subtree: ['/srv/jails'], uid: [1000, 1001] } },
      { id: 'jails-root', action: 'allow', match: { subtree: '/srv/jails', comm: 'debootstrap' } },
    ],
  };
  it('first match wins, lists are any-of, conditions are all-of', () => {
    expect(evaluatePolicy(policy, event({ callerChrooted: true })).ruleId).toBe('nested');
    expect(evaluatePolicy(policy, event({ resolvedPath: '/srv/jails' })).ruleId).toBe('exact');
    expect(evaluatePolicy(policy, event({ uid: 1001 }))).toMatchObject({ ruleId: 'jails', action: 'deny' });
    expect(evaluatePolicy(policy, event({ uid: 7, comm: 'debootstrap' }))).toMatchObject({ ruleId: 'jails-root', action: 'allow' });
    expect(evaluatePolicy(policy, event({ uid: 7 }))).toMatchObject({ ruleId: null, action: 'allow' });
    expect(evaluatePolicy(policy, event({ uid: 1000, resolvedPath: '/srv/jailsX' })).ruleId).toBeNull(); // a sibling, not below
  });
  it('a truncated path holds for deny rules only (fail closed)', () => {
    expect(evaluatePolicy(policy, event({ uid: 1000, resolvedPath: 'x/y', resolvedPathTruncated: true })).ruleId).toBe('jails');
    expect(evaluatePolicy(policy, event({ comm: 'debootstrap', resolvedPath: 'x/y', resolvedPathTruncated: true })).ruleId).toBeNull();
  });
});

/**
 * Policies without the kernel: parsing, validation with positions, the
 * published schema, `chroot-guard check`, and the reference evaluator.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { evaluatePolicy, loadPolicy, parsePolicy, PolicyError, policySchema, type ChrootEvent, type Policy } from '../ts/index.js';

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

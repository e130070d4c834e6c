/**
 * Policies without the kernel: parsing, validation with positions, the
 * published schema, `chroot-guard check`, and the reference evaluator.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { displayBytes, evaluatePolicy, INITIAL_USER_NS, loadPolicy, parsePolicy, pathBytes, PolicyError, policySchema, policyWarnings, validatePolicy, type ChrootEvent, type Policy } from '../ts/index.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const dir = fileURLToPath(new URL('./policies/', import.meta.url));

/** Each malformed file and the one problem it must report, with its position. */
const MALFORMED: Record<string, [line: number, column: number, message: RegExp]> = {
  'bad-yaml.yaml': [5, 35, /not valid YAML or JSON: Flow sequence .* end with a \]/],
  'unknown-key.yaml': [7, 7, /unknown key "usr" \(expected one of: path, subtree, uid, euid, gid, egid, comm, exe, cgroupId, alreadyChrooted, mntNs, initialNamespaces, not\)/],
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
    expect(r.stdout).toContain('examples/build-farm.yaml: ok (enforce, 2 rules, default deny)');
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
    expect(Object.keys(match).sort()).toEqual(['alreadyChrooted', 'cgroupId', 'comm', 'egid', 'euid', 'exe', 'gid', 'initialNamespaces', 'mntNs', 'not', 'path', 'subtree', 'uid'].sort());
    const onDisk = JSON.parse(readFileSync('policy.schema.json', 'utf8')) as object;
    expect(onDisk).toEqual(policySchema);
  });
});

describe('evaluatePolicy (the reference for the kernel program)', () => {
  type Over = Partial<Omit<ChrootEvent, 'resolvedPath' | 'comm'>> & { resolvedPath?: string | Buffer | null; comm?: string };
  const event = (over: Over): ChrootEvent => {
    const { resolvedPath = '/srv/jails/a', comm = 'chroot', ...rest } = over;
    const bytes = resolvedPath === null ? null : Buffer.isBuffer(resolvedPath) ? resolvedPath : Buffer.from(resolvedPath);
    return {
      uid: 0, gid: 0, euid: 0, egid: 0, cgroupId: 1n, mntNs: 11, userNs: INITIAL_USER_NS, exeDev: 5, exeIno: 77n, exeUnknown: false,
      resolvedPathTruncated: false, resolvedPathUnreachable: false, callerChrooted: false,
      comm, commBytes: Buffer.from(comm), resolvedPath: bytes === null ? null : displayBytes(bytes), resolvedPathBytes: bytes,
      ...rest,
    } as ChrootEvent;
  };
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
  it('a path cut short or not reachable holds for deny rules only (fail closed)', () => {
    for (const flag of ['resolvedPathTruncated', 'resolvedPathUnreachable'] as const) {
      expect(evaluatePolicy(policy, event({ uid: 1000, resolvedPath: '/y', [flag]: true })).ruleId).toBe('jails');
      const e = evaluatePolicy(policy, event({ comm: 'debootstrap', resolvedPath: '/y', [flag]: true }));
      expect(e.ruleId).toBeNull();
      expect(e.unknown).toContain('jails-root: path');
    }
  });
  it('not blocks exclude, and unknowns inside them resolve toward denying', () => {
    const p: Policy = {
      mode: 'enforce',
      rules: [
        { id: 'foreign-deny', action: 'deny', match: { subtree: '/srv', not: { initialNamespaces: true } } },
        { id: 'allow-but-jails', action: 'allow', match: { not: { subtree: '/srv/jails' } } },
      ],
      default: 'deny',
    };
    const ctx = { initialMntNs: 11, exes: new Map() };
    expect(evaluatePolicy(p, event({ resolvedPath: '/srv/x' }), ctx).ruleId).toBe('allow-but-jails');
    expect(evaluatePolicy(p, event({ resolvedPath: '/srv/x', mntNs: 12 }), ctx).ruleId).toBe('foreign-deny');
    expect(evaluatePolicy(p, event({ resolvedPath: '/srv/x', userNs: 4026532000 }), ctx).ruleId).toBe('foreign-deny');
    expect(evaluatePolicy(p, event({ resolvedPath: '/srv/jails/a' }), ctx)).toMatchObject({ ruleId: null, action: 'deny' });
    // Without the initial mount namespace, the not block of the deny rule does not hold: denied.
    expect(evaluatePolicy(p, event({ resolvedPath: '/srv/x' })).ruleId).toBe('foreign-deny');
    // An unreachable path: the allow rule's not block holds (unknown), so it does not allow.
    expect(evaluatePolicy(p, event({ resolvedPath: '/x', resolvedPathUnreachable: true }), ctx)).toMatchObject({ ruleId: null, action: 'deny' });
  });
  it('exe matches the identity the policy was compiled with; an unknown exe holds for deny rules only', () => {
    const p: Policy = { mode: 'enforce', rules: [{ id: 'tool', action: 'allow', match: { exe: '/usr/bin/tool' } }, { id: 'no-tool', action: 'deny', match: { exe: '/usr/bin/evil' } }] };
    const ctx = { initialMntNs: 11, exes: new Map([['/usr/bin/tool', { dev: 5, ino: 77n }], ['/usr/bin/evil', { dev: 5, ino: 78n }]]) };
    expect(evaluatePolicy(p, event({}), ctx).ruleId).toBe('tool');
    expect(evaluatePolicy(p, event({ exeIno: 78n }), ctx).ruleId).toBe('no-tool');
    expect(evaluatePolicy(p, event({ exeIno: 79n }), ctx).ruleId).toBeNull();
    expect(evaluatePolicy(p, event({ exeUnknown: true }), ctx).ruleId).toBe('no-tool');
    expect(evaluatePolicy(p, event({})).ruleId).toBe('no-tool'); // no context: unknown
  });
  it('paths compare as bytes: \\xHH names a byte that is not UTF-8', () => {
    const p: Policy = { mode: 'enforce', rules: [{ id: 'latin', action: 'deny', match: { subtree: '/srv/caf\\xe9' } }] };
    expect(pathBytes('/srv/caf\\xe9')).toEqual(Buffer.from([...Buffer.from('/srv/caf'), 0xe9]));
    expect(evaluatePolicy(p, event({ resolvedPath: Buffer.from([...Buffer.from('/srv/caf'), 0xe9, ...Buffer.from('/x')]) })).ruleId).toBe('latin');
    expect(evaluatePolicy(p, event({ resolvedPath: '/srv/café/x' })).ruleId).toBeNull();
    expect(() => parsePolicy(JSON.stringify({ mode: 'enforce', rules: [{ id: 'x', action: 'deny', match: { path: '/a\\q' } }] }))).toThrow(/backslash that is not/);
  });
  it('comm compares the raw bytes', () => {
    const p: Policy = { mode: 'enforce', rules: [{ id: 'c', action: 'deny', match: { comm: '\\x80' } }] };
    expect(evaluatePolicy(p, event({ comm: '\\x80', commBytes: Buffer.from([0x80]) })).ruleId).toBeNull();
    expect(evaluatePolicy(p, event({ comm: '\\x80' })).ruleId).toBe('c');
  });
  it('policyWarnings: an allow or audit rule that trusts comm alone', () => {
    const p = validatePolicy({
      mode: 'enforce',
      default: 'deny',
      rules: [
        { id: 'comm-only', action: 'audit', match: { comm: 'debootstrap', subtree: '/srv' } },
        { id: 'comm-and-uid', action: 'allow', match: { comm: 'mock', uid: 0 } },
        { id: 'deny-comm', action: 'deny', match: { comm: 'x' } },
      ],
    });
    expect(policyWarnings(p).map((w) => w.pointer)).toEqual(['/rules/0/match/comm']);
  });
  it('check warns (exit 0) about an allow rule on comm alone and an exe missing on this host', () => {
    const dirTmp = mkdtempSync(join(tmpdir(), 'cg-check-'));
    const file = join(dirTmp, 'p.yaml');
    writeFileSync(file, 'mode: enforce\nrules:\n  - id: tool\n    action: allow\n    match: { comm: debootstrap }\n  - id: gone\n    action: allow\n    match: { exe: [/bin/sh, /nonexistent/tool] }\n');
    const r = spawnSync(process.execPath, [CLI, 'check', file], { encoding: 'utf8' });
    rmSync(dirTmp, { recursive: true });
    expect(r.status).toBe(0);
    expect(r.stderr).toContain(`${file}: /rules/0/match/comm: warning: rule "tool" allows any caller whose comm matches`);
    expect(r.stderr).toContain(`${file}: /rules/1/match/exe/1: warning: exe "/nonexistent/tool" does not exist on this host`);
    expect(r.stderr).not.toContain('/rules/1/match/exe/0');
  });
});

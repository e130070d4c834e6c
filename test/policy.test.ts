/**
 * Policies without the kernel: parsing, validation with positions, the
 * published schema, `chroot-guard check`, and the reference evaluator.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lchownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  displayBytes,
  evaluatePolicy,
  INITIAL_USER_NS,
  loadPolicy,
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
  parsePolicy,
  pathBytes,
  PolicyError,
  policySchema,
  UnsafePolicyFileError,
  policyWarnings,
  validatePolicy,
  type ChrootEvent,
  type Policy,
} from '../ts/index.js';
import { native } from '../ts/native.js';
import { firstInvalidUtf8 } from '../ts/utf8.js';
import { AgentGuard } from '../ts/agent/guard.js';
import type { GuardRecordFields } from '../ts/cli/records.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const dir = fileURLToPath(new URL('./policies/', import.meta.url));

/** Each malformed file and the one problem it must report, with its position. */
const MALFORMED: Record<string, [line: number, column: number, message: RegExp]> = {
  'bad-yaml.yaml': [5, 35, /not valid YAML or JSON: Flow sequence .* end with a \]/],
  'unknown-key.yaml': [7, 7, /unknown key "usr" \(expected one of: path, subtree, uid, euid, gid, egid, comm, exe, cgroupId, alreadyChrooted, mntNs, initialNamespaces, escapesRoot, cwdOutsideRoot, not\)/],
  'wrong-type.yaml': [6, 12, /"uid" must be an id \(0 to 4294967295\) or a list of ids; got "root"/],
  'duplicate-id.yaml': [8, 9, /duplicate rule id "jails" \(first used by rule 1\)/],
  'relative-path.yaml': [6, 16, /"subtree" must be an absolute path or a list of absolute paths; got "srv\/jails"/],
  'bad-action.json': [4, 32, /"action" must be one of allow, deny, audit; got "block"/],
  'long-comm.yaml': [6, 27, /comm "a-very-long-task-name" is 21 bytes; the kernel keeps 15/],
  // Not replaced with U+FFFD (which would change the path): the first bad byte, column in characters.
  'not-utf8.yaml': [6, 23, /not valid UTF-8: the bytes at offset 86 \(0xe2 0x82 0x78 0x0a\) are not a character/],
  'deep-nesting.yaml': [5, 79, /lists and maps nested more than 64 deep/],
  'duplicate-key.yaml': [5, 43, /map keys must be unique: "subtree" is repeated/],
  'alias-unresolved.yaml': [5, 23, /alias \*jails names no anchor \(&jails\) before it/],
  'alias-cycle.yaml': [5, 23, /alias \*rules is inside the value it names/],
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
    expect(r.stdout).toContain('examples/build-farm.yaml: ok (enforce, 2 rules, default deny)');
    const good = spawnSync(process.execPath, [CLI, 'check', 'examples/build-farm.yaml', 'examples/no-escape.yaml'], { encoding: 'utf8' });
    expect(good.status).toBe(0);
    expect(good.stdout).toContain('examples/no-escape.yaml: ok (enforce, 1 rule, default allow)');
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
    expect(Object.keys(match).sort()).toEqual(['alreadyChrooted', 'cgroupId', 'comm', 'cwdOutsideRoot', 'egid', 'escapesRoot', 'euid', 'exe', 'gid', 'initialNamespaces', 'mntNs', 'not', 'path', 'subtree', 'uid'].sort());
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
const GOOD = 'mode: enforce\nrules:\n  - id: jails\n    action: deny\n    match: { subtree: /srv/jails }\n';

/** `chroot-guard ARGS` (no privileges, no kernel needed for what these reach). */
const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });

/**
 * `chroot-guard ARGS` as root without capabilities: a policy that reached
 * the loader would fail with EPERM (exit 4), on any host.
 */
const noCaps = (args: string[], cwd?: string) =>
  spawnSync('setpriv', ['--bounding-set=-all', '--inh-caps=-all', process.execPath, CLI, ...args], { encoding: 'utf8', timeout: 30_000, ...(cwd ? { cwd } : {}) });

/** A sparse 3 GiB file in the temp directory. */
function hugeFile(): string {
  const huge = join(tmp, 'huge.yaml');
  execFileSync('truncate', ['-s', '3G', huge]);
  return huge;
}

/** A real "billion laughs": lol1 to lol9, each nine aliases of the one before (10^9 strings expanded). */
function billionLaughs(): string {
  const lines = ['mode: enforce', 'rules: []', 'lol:', '  lol0: &lol0 "lol"'];
  for (let i = 1; i <= 9; i++) lines.push(`  lol${i}: &lol${i} [${Array(9).fill(`*lol${i - 1}`).join(', ')}]`);
  const bomb = join(tmp, 'billion-laughs.yaml');
  writeFileSync(bomb, lines.join('\n') + '\n');
  return bomb;
}

/** 100k unclosed `[`. */
function deepFile(): string {
  const file = join(tmp, 'deep.yaml');
  writeFileSync(file, '['.repeat(100_000));
  return file;
}

describe('policy input: nothing unbounded is read or expanded', () => {
  it(`reads at most MAX_POLICY_BYTES (${MAX_POLICY_BYTES}): exactly that many bytes pass, one more does not`, () => {
    const at = join(tmp, 'at-limit.yaml');
    writeFileSync(at, GOOD + '#'.repeat(MAX_POLICY_BYTES - GOOD.length - 1) + '\n');
    expect(readFileSync(at).length).toBe(MAX_POLICY_BYTES);
    expect(loadPolicy(at).rules).toHaveLength(1);
    const over = join(tmp, 'over-limit.yaml');
    writeFileSync(over, GOOD + '#'.repeat(MAX_POLICY_BYTES - GOOD.length) + '\n');
    const err = policyError(() => loadPolicy(over));
    expect(err.problems).toEqual([{ file: over, pointer: '', message: `the policy file is larger than ${MAX_POLICY_BYTES} bytes, the most a policy may be (it is ${MAX_POLICY_BYTES + 1} bytes)` }]);
    // The same limit for text handed to parsePolicy.
    expect(policyError(() => parsePolicy(readFileSync(over, 'utf8'), 'x.yaml')).problems[0]!.message).toMatch(/the policy is 1048577 bytes, larger than 1048576/);
  });

  it('a 3 GiB (sparse) file is refused from its size, without reading it', () => {
    const huge = hugeFile();
    const t = Date.now();
    expect(policyError(() => loadPolicy(huge)).problems[0]!.message).toBe(`the policy file is larger than ${MAX_POLICY_BYTES} bytes, the most a policy may be (it is 3221225472 bytes)`);
    expect(Date.now() - t).toBeLessThan(1000);
  });

  it('/dev/zero (no size) is read up to the limit and refused', () => {
    const t = Date.now();
    expect(policyError(() => loadPolicy('/dev/zero')).problems[0]!.message).toBe(`the policy file is larger than ${MAX_POLICY_BYTES} bytes, the most a policy may be`);
    expect(Date.now() - t).toBeLessThan(2000);
  });

  it('a FIFO is read to its end or the limit: an endless writer is refused, a policy written into it is read', async () => {
    const fifo = join(tmp, 'policy.fifo');
    execFileSync('mkfifo', [fifo]);
    // The writers are other processes: opening a FIFO waits for a writer.
    const endless = spawn('sh', ['-c', `exec yes '# more' > ${fifo}`], { stdio: 'ignore' });
    try {
      expect(policyError(() => loadPolicy(fifo)).problems[0]!.message).toBe(`the policy file is larger than ${MAX_POLICY_BYTES} bytes, the most a policy may be`);
    } finally {
      endless.kill();
    }
    // Gone before the next writer opens the FIFO: a `yes` the signal has
    // not reached yet would write its lines ahead of the policy.
    if (endless.exitCode === null && endless.signalCode === null) await new Promise((r) => endless.once('exit', r));
    const once = spawn('sh', ['-c', `printf '%s' "$0" > ${fifo}`, GOOD], { stdio: 'ignore' });
    expect(loadPolicy(fifo).rules[0]!.id).toBe('jails');
    once.kill();
  });

  it('a directory is refused by name', () => {
    expect(policyError(() => loadPolicy(tmp)).problems).toEqual([{ file: tmp, pointer: '', message: 'cannot read the policy file: it is a directory' }]);
    expect(policyError(() => loadPolicy(join(tmp, 'missing.yaml'))).problems[0]!.message).toMatch(/^cannot read the policy file: ENOENT/);
  });

  it('a real "billion laughs" file is refused at the alias that crosses MAX_ALIAS_VALUES, before anything is expanded', () => {
    const bomb = billionLaughs();
    const t = Date.now();
    const err = policyError(() => loadPolicy(bomb));
    expect(Date.now() - t).toBeLessThan(2000);
    // The aliases of lol1 to lol4 stand for 9 × 1 + 9 × 10 + 9 × 91 + 9 × 820 =
    // 8298 values; lol5's first alias (7381 more) crosses 10000.
    expect(err.problems).toEqual([
      { file: bomb, line: 9, column: 16, pointer: '', message: `aliases stand for more than ${MAX_ALIAS_VALUES} values from here on (a "billion laughs"?); at most ${MAX_ALIAS_VALUES} per policy` },
    ]);
    expect(readFileSync(bomb, 'utf8').split('\n')[8]!.slice(15)).toMatch(/^\*lol4,/);
  });

  it(`at most MAX_ALIASES (${MAX_ALIASES}) aliases; fewer work as YAML says`, () => {
    const uses = (n: number) => 'mode: enforce\nrules:\n  - id: a\n    action: deny\n    match:\n      subtree: &jails /srv/jails\n      path:\n' + '        - *jails\n'.repeat(n);
    expect(parsePolicy(uses(MAX_ALIASES), 'aliases.yaml').rules[0]!.match!.path).toEqual(Array(MAX_ALIASES).fill('/srv/jails'));
    expect(policyError(() => parsePolicy(uses(MAX_ALIASES + 1), 'aliases.yaml')).problems).toEqual([
      { file: 'aliases.yaml', line: MAX_ALIASES + 8, column: 11, pointer: '', message: `more than ${MAX_ALIASES} aliases (*name); at most ${MAX_ALIASES} per policy` },
    ]);
  });

  // Far past the YAML composer's own stack (about 800 levels); 100k [ as in
  // the issue, the other forms 10k (this file also runs in the VM, under TCG).
  it('100k levels of [, 10k of nested maps, "- " and closed lists give a PolicyError with a position, never a RangeError', () => {
    const deep = { 'flow lists': '['.repeat(100_000), 'flow maps': '{a: '.repeat(10_000), 'block lists': '- '.repeat(10_000) + 'x\n', 'closed lists': `${'['.repeat(10_000)}${']'.repeat(10_000)}` };
    for (const [what, text] of Object.entries(deep)) {
      const file = join(tmp, `deep-${what.replace(' ', '-')}.yaml`);
      writeFileSync(file, text);
      const err = policyError(() => loadPolicy(file));
      expect(err.problems, what).toHaveLength(1);
      expect(err.problems[0], what).toMatchObject({ file, line: 1, message: `lists and maps nested more than ${MAX_POLICY_DEPTH} deep` });
      expect(err.problems[0]!.column, what).toBeGreaterThan(MAX_POLICY_DEPTH);
    }
    // Right at the limit: the nesting is fine, the schema says what is wrong.
    const atLimit = `mode: enforce\nrules:\n  - id: a\n    action: deny\n    description: ${'['.repeat(MAX_POLICY_DEPTH - 3)}${']'.repeat(MAX_POLICY_DEPTH - 3)}\n`;
    expect(policyError(() => parsePolicy(atLimit)).problems[0]!.message).toBe('"description" must be of type string; got a list');
    expect(policyError(() => parsePolicy(atLimit.replace('[', '[[').replace(']', ']]'))).problems[0]!.message).toBe(`lists and maps nested more than ${MAX_POLICY_DEPTH} deep`);
  }, 180_000);

  it('a map with 30k keys is checked for repeated keys in linear time: about as long as a list of the same size', () => {
    const n = 30_000;
    const map = `mode: enforce\nrules: []\nx: {${Array.from({ length: n }, (_, i) => `k${i}: 1`).join(', ')}, k5: 2}\n`;
    const list = `mode: enforce\nrules: []\nx: [${Array.from({ length: n }, (_, i) => `k${i}-1`).join(', ')}, k5-2]\n`;
    const timed = (text: string) => {
      const t = Date.now();
      const err = policyError(() => parsePolicy(text));
      return { ms: Date.now() - t, message: err.problems[0]!.message };
    };
    const l = timed(list);
    const m = timed(map);
    expect(l.message).toBe('unknown key "x" (expected one of: mode, default, failMode, rules)');
    expect(m.message).toBe('map keys must be unique: "k5" is repeated');
    // The YAML library's own check compares each key with every earlier one:
    // about 18 times the list's time here at 30k keys (a minute at 90k).
    expect(m.ms).toBeLessThan(5 * l.ms + 1000);
  }, 120_000);

  it('objects (validatePolicy, as enforce and chrootGuard take them): deep, cyclic and huge values give a PolicyError', () => {
    let deep: unknown = '/x';
    for (let i = 0; i < 100_000; i++) deep = [deep];
    expect(policyError(() => validatePolicy({ mode: 'enforce', rules: [{ id: 'a', action: 'deny', match: { path: deep } }] })).problems[0]!.message).toBe(
      '"path" must be an absolute path or a list of absolute paths; got a list',
    );
    const cyclic: unknown[] = [];
    cyclic.push(cyclic);
    expect(policyError(() => validatePolicy({ mode: 'enforce', rules: [{ id: 'a', action: 'deny', match: { path: cyclic } }] })).problems).toHaveLength(1);
    // What the loader would receive is bounded as a file is.
    const big = { mode: 'enforce', rules: [{ id: 'a', action: 'deny', description: 'x'.repeat(MAX_POLICY_BYTES) }] };
    expect(policyError(() => validatePolicy(big)).problems).toEqual([
      { pointer: '', message: `the policy is ${JSON.stringify(big).length} bytes as JSON (with YAML aliases expanded), larger than ${MAX_POLICY_BYTES}, the most a policy may be` },
    ]);
  });

  it('firstInvalidUtf8 agrees with the fatal TextDecoder on edge sequences and random bytes', () => {
    const fatal = new TextDecoder('utf-8', { fatal: true });
    const valid = (b: Uint8Array) => {
      try {
        fatal.decode(b);
        return true;
      } catch {
        return false;
      }
    };
    const edges = [[0xc0, 0x80], [0xc2, 0x80], [0xe0, 0x9f, 0x80], [0xe0, 0xa0, 0x80], [0xed, 0xa0, 0x80], [0xed, 0x9f, 0xbf], [0xf0, 0x8f, 0xbf, 0xbf], [0xf0, 0x90, 0x80, 0x80], [0xf4, 0x8f, 0xbf, 0xbf], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80], [0xe2, 0x82], [0x80], [0xff]];
    // Random characters of each UTF-8 length, half of them with one byte overwritten.
    let seed = 1; // mulberry32: reproducible
    const random = (n: number) => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    const ranges = [[0, 0x80], [0x80, 0x800], [0x800, 0xd800], [0xe000, 0x10000], [0x10000, 0x110000]] as const;
    const cases = [
      ...edges.map((e) => Uint8Array.from(e)),
      ...Array.from({ length: 5000 }, () => {
        const b = Buffer.from(String.fromCodePoint(...Array.from({ length: 1 + random(3) }, () => { const [lo, hi] = ranges[random(ranges.length)]!; return lo + random(hi - lo); })));
        if (random(2)) b[random(b.length)] = random(256);
        return b;
      }),
    ];
    expect(cases.filter((b) => (firstInvalidUtf8(b) === -1) !== valid(b)).map((b) => Buffer.from(b).toString('hex'))).toEqual([]);
    // Both kinds were tried.
    expect(cases.filter((b) => valid(b)).length).toBeGreaterThan(2000);
    expect(cases.filter((b) => !valid(b)).length).toBeGreaterThan(1000);
  });

  it('check and enforce exit 2 on each, naming it, and load nothing (refused before the loader: no privileges needed to see it)', () => {
    const files = ['/dev/zero', tmp, billionLaughs(), hugeFile(), deepFile(), `${dir}not-utf8.yaml`, `${dir}long-path-bytes.yaml`];
    const check = cli(['check', ...files]);
    expect(check.status).toBe(2);
    for (const f of files) expect(check.stderr).toContain(`${f}:`);
    // enforce reads through the same loadPolicy: one of each kind. /dev/zero
    // (0666) is refused before it is read: anyone may write to it.
    for (const [f, code] of [['/dev/zero', 'UNSAFE_POLICY_FILE'], [files[2]!, 'INVALID_POLICY'], [files[3]!, 'INVALID_POLICY'], [`${dir}not-utf8.yaml`, 'INVALID_POLICY']] as const) {
      const r = noCaps(['enforce', '--policy', f]);
      expect(r.status, f).toBe(2);
      expect(r.stderr, f).toContain(`(${code})`);
      expect(r.stdout, f).toBe('');
    }
  }, 180_000);
});

/** A policy of `rules`, enforcing. */
const policyOf = (rules: Policy['rules']): Policy => ({ mode: 'enforce', rules });
/** `n` bytes of UTF-8, in two-byte characters where possible (so characters ≠ bytes). */
const bytesOf = (n: number) => 'é'.repeat(Math.floor(n / 2)) + 'x'.repeat(n % 2);
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** `n` distinct files (exe rules name files that exist: the loader reads their identity). */
function exeFiles(n: number): string[] {
  mkdirSync(`${tmp}/exes`, { recursive: true });
  return range(n).map((i) => {
    const f = `${tmp}/exes/e${i}`;
    if (!existsSync(f)) writeFileSync(f, '');
    return f;
  });
}

/** A file whose absolute path is `bytes` long (directories of at most 200 bytes a name), made if missing. */
function longFile(bytes: number): string {
  let dir = `${tmp}/long`;
  while (bytes - dir.length > 201) dir += `/${'d'.repeat(200)}`;
  mkdirSync(dir, { recursive: true });
  const file = `${dir}/${'f'.repeat(bytes - dir.length - 1)}`;
  if (!existsSync(file)) writeFileSync(file, '');
  return file;
}

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
  { what: 'distinct executables', limit: MAX_EXES, native: 'maxExes', policy: (n) => policyOf([{ id: 'e', action: 'deny', match: { exe: exeFiles(n) } }]), message: /distinct executable number 513/ },
  { what: 'comm bytes', limit: MAX_COMM_BYTES, native: 'maxCommBytes', policy: (n) => policyOf([{ id: 'c', action: 'deny', match: { comm: bytesOf(n) } }]), message: /bytes; the kernel keeps 15/ },
  { what: 'path bytes (three-byte characters)', limit: MAX_PATH_BYTES, native: 'maxPathBytes', policy: (n) => policyOf([{ id: 'p', action: 'deny', match: { subtree: `/${'路'.repeat(Math.floor((n - 1) / 3))}${'x'.repeat((n - 1) % 3)}` } }]), message: /is 4096 bytes of UTF-8/ },
  { what: 'path bytes, counted without repeated and trailing slashes', limit: MAX_PATH_BYTES, native: 'maxPathBytes', policy: (n) => policyOf([{ id: 'p', action: 'deny', match: { path: `//${bytesOf(n - 1)}//` } }]), message: /is 4096 bytes of UTF-8/ },
  {
    what: 'exe bytes',
    limit: MAX_PATH_BYTES,
    native: 'maxPathBytes',
    // The longest path a file can have; one byte more names no file, and is refused for its length first.
    policy: (n) => policyOf([{ id: 'e', action: 'deny', match: { exe: n > MAX_PATH_BYTES ? `${longFile(MAX_PATH_BYTES)}${'x'.repeat(n - MAX_PATH_BYTES)}` : longFile(n) } }]),
    message: /"exe" is 4096 bytes of UTF-8/,
  },
  { what: 'rule id length', limit: MAX_RULE_ID_BYTES, native: 'maxRuleIdBytes', policy: (n) => policyOf([{ id: 'i'.repeat(n), action: 'deny' }]), message: /must start with a letter or digit .* \(at most 64\)/ },
];

describe('policy files to load must be ones only root can change (enforce, the agent\'s guard)', () => {
  // Real files and owners (the tests run as root): a mkdtemp directory is
  // root's, 0700, in sticky /tmp, so the good file's whole path is fine.
  const base = realpathSync(mkdtempSync('/tmp/cg-trusted-'));
  afterAll(() => rmSync(base, { recursive: true, force: true }));
  const at = (...p: string[]) => join(base, ...p);
  const good = at('good.yaml');
  writeFileSync(good, GOOD, { mode: 0o644 });
  const world = at('world.yaml');
  writeFileSync(world, GOOD);
  chmodSync(world, 0o666);
  const nobody = at('nobody.yaml');
  writeFileSync(nobody, GOOD, { mode: 0o644 });
  chownSync(nobody, 65534, 65534);
  mkdirSync(at('group-dir'), { mode: 0o755 });
  chmodSync(at('group-dir'), 0o775);
  writeFileSync(at('group-dir', 'p.yaml'), GOOD, { mode: 0o644 });
  // A symbolic link to the good file, in a world-writable (not sticky) directory: anyone could replace it.
  mkdirSync(at('open-dir'));
  chmodSync(at('open-dir'), 0o777);
  symlinkSync(good, at('open-dir', 'link.yaml'));
  // A sticky world-writable directory, as /tmp: root's entries there are fine, another user's link is not.
  mkdirSync(at('sticky'));
  chmodSync(at('sticky'), 0o1777);
  writeFileSync(at('sticky', 'ok.yaml'), GOOD, { mode: 0o644 });
  symlinkSync(good, at('sticky', 'root-link.yaml'));
  symlinkSync(good, at('sticky', 'their-link.yaml'));
  lchownSync(at('sticky', 'their-link.yaml'), 65534, 65534);
  // A sticky directory of another user: they may remove anything in it.
  mkdirSync(at('their-sticky'));
  chmodSync(at('their-sticky'), 0o1777);
  chownSync(at('their-sticky'), 65534, 65534);
  writeFileSync(at('their-sticky', 'p.yaml'), GOOD, { mode: 0o644 });
  // A root-owned link in a good directory, relative, through `..`.
  mkdirSync(at('links'));
  symlinkSync('../good.yaml', at('links', 'rel.yaml'));

  /** Each refused path, the component the message must name, and the fix it must give. */
  const BAD: Array<[file: string, component: string, says: string, fix: string]> = [
    [world, world, '(a file, owner uid 0, gid 0, mode 0666) is writable by its group and others', `chmod go-w ${world}`],
    [nobody, nobody, '(a file, owner uid 65534, gid 65534, mode 0644) is owned by uid 65534, not root', `chown root: ${nobody}`],
    [at('group-dir', 'p.yaml'), at('group-dir'), '(a directory, owner uid 0, gid 0, mode 0775) is writable by its group (gid 0)', `chmod go-w ${at('group-dir')}`],
    [at('open-dir', 'link.yaml'), at('open-dir'), '(a directory, owner uid 0, gid 0, mode 0777) is writable by its group and others', `chmod go-w ${at('open-dir')}`],
    [at('sticky', 'their-link.yaml'), at('sticky', 'their-link.yaml'), '(a symbolic link, owner uid 65534, gid 65534) is owned by uid 65534, not root', `chown -h root: ${at('sticky', 'their-link.yaml')}`],
    [at('their-sticky', 'p.yaml'), at('their-sticky'), '(a directory, owner uid 65534, gid 65534, mode 1777) is owned by uid 65534, not root', `chown root: ${at('their-sticky')}`],
  ];
  const OK = [good, at('sticky', 'ok.yaml'), at('sticky', 'root-link.yaml'), at('links', 'rel.yaml')];

  it('loadPolicy(file, { trusted: true }) refuses each with UNSAFE_POLICY_FILE naming the component, its owner and mode, and the fix', () => {
    for (const [file, component, says, fix] of BAD) {
      let err: unknown;
      try {
        loadPolicy(file, { trusted: true });
      } catch (e) {
        err = e;
      }
      expect(err, file).toBeInstanceOf(UnsafePolicyFileError);
      const u = err as UnsafePolicyFileError;
      expect(u.code).toBe('UNSAFE_POLICY_FILE');
      expect(u.file).toBe(file);
      expect(u.component, file).toBe(component);
      expect(u.problem, file).toBe(`${component} ${says}: ${fix}`);
      expect(u.message).toContain(`refusing the policy file ${file}: ${component} ${says}`);
      // Without `trusted` (check, replay) every one of them reads.
      expect(loadPolicy(file).rules[0]!.id).toBe('jails');
    }
    for (const file of OK) expect(loadPolicy(file, { trusted: true }).rules[0]!.id, file).toBe('jails');
  });

  it('the walk follows links itself and still reads: a missing file, a loop, a directory at the end are INVALID_POLICY as before', () => {
    symlinkSync('loop-b', at('links', 'loop-a'));
    symlinkSync('loop-a', at('links', 'loop-b'));
    expect(policyError(() => loadPolicy(at('links', 'loop-a'), { trusted: true })).problems[0]!.message).toMatch(/^cannot read the policy file: more than 40 symbolic links on the way \(ELOOP\)$/);
    expect(policyError(() => loadPolicy(at('missing.yaml'), { trusted: true })).problems[0]!.message).toMatch(/^cannot read the policy file: ENOENT/);
    expect(policyError(() => loadPolicy(at('links'), { trusted: true })).problems[0]!.message).toBe('cannot read the policy file: it is a directory');
    expect(policyError(() => loadPolicy(at('good.yaml', 'x'), { trusted: true })).problems[0]!.message).toMatch(/^cannot read the policy file: ENOTDIR/);
  });

  it('enforce and enforce --pin exit 2 with the message before anything is loaded; a good file reaches the loader; check reads them all', () => {
    for (const [file, component, says, fix] of BAD.slice(0, 4)) {
      for (const pin of [[], ['--pin', '--pin-dir', at('no-pin')]]) {
        const r = noCaps(['enforce', '--policy', file, ...pin]);
        expect(r.status, file).toBe(2);
        expect(r.stdout).toBe('');
        expect(r.stderr, file).toContain(`chroot-guard: error: refusing the policy file ${file}: ${component} ${says}: ${fix}; `);
        expect(r.stderr).toContain('(UNSAFE_POLICY_FILE)');
      }
    }
    // A good one passes the check and reaches the loader, which has no capabilities here: EPERM, exit 4.
    for (const file of [good, at('sticky', 'root-link.yaml')]) expect(noCaps(['enforce', '--policy', file]).status, file).toBe(4);
    // A relative path is walked from the working directory.
    const rel = noCaps(['enforce', '--policy', 'p.yaml'], at('group-dir'));
    expect(rel.status).toBe(2);
    expect(rel.stderr).toContain(`refusing the policy file p.yaml: ${at('group-dir')} (a directory`);
    const check = cli(['check', ...BAD.map(([f]) => f)]);
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
  }, 120_000);

  it('agent --check-config reports a guard policy another user could change at guard.policy (exit 2)', () => {
    const config = at('agent.yaml');
    writeFileSync(config, `guard:\n  policy: ${world}\n`);
    const r = cli(['agent', '--check-config', '--config', config]);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.split('\n')).toEqual([
      `${config}:2:11: ${world} (a file, owner uid 0, gid 0, mode 0666) is writable by its group and others: chmod go-w ${world}; a policy another user could change is not loaded (UNSAFE_POLICY_FILE)`,
      'chroot-guard: error: invalid agent config (INVALID_CONFIG)',
      '',
    ]);
    writeFileSync(config, `guard:\n  policy: ${good}\n`);
    expect(cli(['agent', '--check-config', '--config', config]).status).toBe(0);
  });

  it("SIGHUP's decision (AgentGuard.reload): a file another user could change is rejected before the kernel, the policy in force stays", () => {
    // The kernel half (a pinned guard keeping its generation) is agent-guard.test.ts's, in the VM;
    // here the agent's reload runs up to where it would update the pinned guard, which it never reaches.
    const heard: GuardRecordFields[] = [];
    const hooks = { decision: () => {}, lost: () => {}, failed: () => {}, policy: (r: GuardRecordFields) => void heard.push(r) };
    const AgentGuardOf = AgentGuard as unknown as new (file: string, dir: string, h: typeof hooks) => AgentGuard;
    const pinDir = at('no-pin-here');
    for (const [file, component] of BAD) {
      heard.length = 0;
      expect(new AgentGuardOf(file, pinDir, hooks).reload(), file).toBe(false);
      expect(heard, file).toEqual([expect.objectContaining({ event: 'rejected', policy: file, code: 'UNSAFE_POLICY_FILE' })]);
      expect(heard[0]!.problems, file).toEqual([expect.stringMatching(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: ${component.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(`))]);
    }
    // A good file gets past the file check to the pinned guard, which is not there: rejected for that, not for the file.
    heard.length = 0;
    expect(new AgentGuardOf(good, pinDir, hooks).reload()).toBe(false);
    expect(heard[0]!.code).not.toBe('UNSAFE_POLICY_FILE');
    expect(heard[0]!.code).not.toBe('INVALID_POLICY');
  });
});

describe('check and the loader agree on every limit (the Rust compiler through the internal compilePolicy(), no kernel)', () => {
  it('the TypeScript limits are the compiler\'s (policyLimits())', () => {
    const rust = native().policyLimits();
    for (const l of LIMITS) if (l.native) expect(l.limit, l.what).toBe(rust[l.native]);
    expect(Object.keys(rust).sort()).toEqual([...new Set(LIMITS.map((l) => l.native))].sort());
    // The schema spells the id bound in its pattern, and documents the others.
    const rule = (policySchema as { definitions: { rule: { properties: { id: { pattern: string } } } } }).definitions.rule.properties.id.pattern;
    expect(rule).toBe(`^[A-Za-z0-9][A-Za-z0-9._-]{0,${MAX_RULE_ID_BYTES - 1}}$`);
  });

  it('policy.schema.json states every limit where it applies, with the TypeScript value', () => {
    type Described = { description: string };
    const s = policySchema as { description: string; properties: { rules: Described }; definitions: Record<string, Described & { properties?: Record<string, Described> }> };
    const match = s.definitions.match!.properties!;
    const stated: Array<[string, string]> = [
      [s.description, `at most 1 MiB (${MAX_POLICY_BYTES} bytes;`],
      [s.description, `nested at most ${MAX_POLICY_DEPTH} deep`],
      [s.description, `at most ${MAX_ALIASES} YAML aliases that stand for at most ${MAX_ALIAS_VALUES} values`],
      [s.properties.rules.description, `At most ${MAX_RULES} after lists are expanded`],
      [s.properties.rules.description, `at most ${MAX_PATHS} distinct paths`],
      [s.properties.rules.description, ` and ${MAX_EXES} executables.`],
      [s.definitions.rule!.properties!.id!.description, `at most ${MAX_RULE_ID_BYTES} characters (all ASCII, so ${MAX_RULE_ID_BYTES} bytes)`],
      [s.definitions.path!.description, `at most ${MAX_PATH_BYTES} bytes of UTF-8 (PATH_MAX - 1)`],
      [match.comm!.description, `1 to ${MAX_COMM_BYTES} bytes of UTF-8 (TASK_COMM_LEN - 1)`],
    ];
    for (const [text, phrase] of stated) expect(text).toContain(phrase);
    expect(MAX_POLICY_BYTES).toBe(1024 * 1024);
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
      expect(compiled.failure ?? null, compiled.failure?.message ?? '').toBeNull();
      expect(native().compilePolicy(JSON.stringify(over)).failure).toMatchObject({ code: 'INVALID_ARGUMENT' });
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
    const overs = files.filter((f) => f.k === 'over').map((f) => f.file);
    const over = cli(['check', ...overs]);
    expect(over.status).toBe(2);
    expect(over.stdout).toBe('');
    // One problem per file, each FILE:LINE:COL.
    expect(over.stderr.trimEnd().split('\n').map((l) => l.split(':')[0])).toEqual(overs);
    for (const f of overs) expect(over.stderr).toMatch(new RegExp(`^${f}:\\d+:\\d+: `, 'm'));
  }, 120_000);
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
  it('escapesRoot and cwdOutsideRoot: true and false match as given, null (unknown, or no new root) holds for deny rules only; examples/no-escape.yaml denies escapes', () => {
    const p: Policy = {
      mode: 'enforce',
      rules: [
        { id: 'left-cwd', action: 'audit', match: { cwdOutsideRoot: true, not: { uid: 0 } } },
        { id: 'escape', action: 'deny', match: { escapesRoot: true } },
        { id: 'stays', action: 'allow', match: { escapesRoot: false, cwdOutsideRoot: false } },
      ],
    };
    expect(evaluatePolicy(p, event({ uid: 1000, escapesRoot: false, cwdOutsideRoot: true })).ruleId).toBe('left-cwd');
    expect(evaluatePolicy(p, event({ escapesRoot: true, cwdOutsideRoot: false })).ruleId).toBe('escape');
    expect(evaluatePolicy(p, event({ escapesRoot: false, cwdOutsideRoot: false })).ruleId).toBe('stays');
    expect(evaluatePolicy(p, event({ escapesRoot: false, cwdOutsideRoot: true })).ruleId).toBeNull();
    // Unknown: the deny holds, the allow does not, and the audit's `not` (uid 0 known) decides.
    const unknown = evaluatePolicy(p, event({ uid: 1000, escapesRoot: null, cwdOutsideRoot: null }));
    expect(unknown).toMatchObject({ ruleId: 'escape', action: 'deny' });
    expect(unknown.unknown).toEqual(['left-cwd: cwdOutsideRoot', 'escape: escapesRoot']);
    expect(evaluatePolicy(p, event({ escapesRoot: false, cwdOutsideRoot: null }))).toMatchObject({ ruleId: null, unknown: ['stays: cwdOutsideRoot'] });
    const builtIn = loadPolicy('examples/no-escape.yaml');
    expect(evaluatePolicy(builtIn, event({ escapesRoot: true, cwdOutsideRoot: false }))).toMatchObject({ ruleId: 'no-escape', action: 'deny' });
    expect(evaluatePolicy(builtIn, event({ escapesRoot: null, cwdOutsideRoot: null })).ruleId).toBe('no-escape');
    expect(evaluatePolicy(builtIn, event({ escapesRoot: false, cwdOutsideRoot: true })).ruleId).toBeNull();
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
  it('displayed bytes are unambiguous and are the policy escape form: pathBytes(displayBytes(b)) is b', () => {
    expect(displayBytes(Buffer.from('/a\\xe9'))).toBe('/a\\\\xe9'); // a literal backslash
    expect(displayBytes(Buffer.from([0x2f, 0x61, 0xe9]))).toBe('/a\\xe9'); // a byte that is not UTF-8
    expect(displayBytes(Buffer.from('/café'))).toBe('/café');
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 40 }).filter((b) => !b.includes(0)), (raw) => {
        const b = Buffer.from(raw);
        const back = pathBytes(displayBytes(b));
        expect(Buffer.isBuffer(back) && back.equals(b)).toBe(true);
      }),
      { numRuns: 2000 },
    );
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
    const json = spawnSync(process.execPath, [CLI, 'check', '--json', file], { encoding: 'utf8' });
    rmSync(dirTmp, { recursive: true });
    expect(r.status).toBe(0);
    // At the value each names, as errors are: FILE:LINE:COL.
    expect(r.stderr).toContain(`${file}:5:20: warning: rule "tool" allows any caller whose comm matches`);
    expect(r.stderr).toContain(`${file}:8:29: warning: exe "/nonexistent/tool" does not exist on this host`);
    expect(r.stderr.match(/warning:/g)).toHaveLength(2);
    expect((JSON.parse(json.stdout) as Array<{ warnings: unknown[] }>)[0]!.warnings).toEqual([
      expect.objectContaining({ file, line: 5, column: 20, pointer: '/rules/0/match/comm' }),
      expect.objectContaining({ file, line: 8, column: 29, pointer: '/rules/1/match/exe/1' }),
    ]);
  });
});

/**
 * `replay` and `learn` without the kernel: the record decoder against the
 * record writer (every field back, byte for byte, integers up to 2^64 − 1),
 * malformed lines, the merge rule, and a 1,000,000-event recording written
 * by the writer, replayed by the CLI as a child process with exact counts
 * and a bounded peak RSS. Pure: no kernel, no root.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { attachRecord, chrootRecord, decisionRecord, guardRecord, lostRecord } from '../ts/cli/records.js';
import { NO_LOSS, type LossCounts, type LostReport } from '../ts/batch.js';
import { decisionOf, type ChrootDecision } from '../ts/decision.js';
import { displayBytes, type ChrootEvent } from '../ts/events.js';
import { mergeRoots } from '../ts/policy/learn.js';
import { decodeRecord, readRecording, type RecordingItem } from '../ts/recording.js';
import { CLI, ndjson } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'cg-replay-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const bytes = fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b));
const u32 = fc.oneof(fc.constantFrom(0, 1, 0xffffffff), fc.nat({ max: 0xffffffff }));
const i32 = fc.oneof(fc.constantFrom(-2147483648, -1, 0, 2147483647), fc.integer());
const u64 = fc.oneof(fc.constantFrom(0n, 2n ** 53n + 1n, 10n ** 15n, 2n ** 64n - 1n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));
const orNull = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null });

/** Any event the kernel's decoder could make: each display string is displayBytes of its bytes. */
const event: fc.Arbitrary<ChrootEvent> = fc
  .record({
    ts: u64, enterTs: u64, pid: u32, tid: u32, nsPid: u32, nsTid: u32, ppid: u32,
    uid: u32, gid: u32, euid: u32, egid: u32, commBytes: bytes, cgroupId: u64, mntNs: u32, pidNs: u32, userNs: u32,
    cgroupPath: orNull(fc.string()), cgroupLookup: fc.constantFrom('found', 'removed', 'failed', null),
    containerRuntime: fc.constantFrom('containerd', 'cri-o', 'docker', 'podman', 'unknown', null),
    containerId: orNull(fc.constant('3f'.repeat(32))), podUid: orNull(fc.constant('74c13223-5a00-11e9-b385-42010a80018d')),
    exeDev: u32, exeIno: u64, exeUnknown: fc.boolean(), exeBytes: orNull(bytes),
    exeTruncated: fc.boolean(), exeUnreachable: fc.boolean(), exeDeleted: fc.boolean(), exeMemfd: fc.boolean(),
    parentCommBytes: bytes, parentExeBytes: orNull(bytes),
    parentExeTruncated: fc.boolean(), parentExeUnreachable: fc.boolean(), parentExeDeleted: fc.boolean(), parentExeMemfd: fc.boolean(),
    pathBytes: bytes, pathTruncated: fc.boolean(), pathUnreadable: fc.boolean(), pathReadLate: fc.boolean(),
    resolvedPathBytes: orNull(bytes), resolvedPathTruncated: fc.boolean(), resolvedPathUnreachable: fc.boolean(),
    callerChrooted: fc.boolean(), escapesRoot: orNull(fc.boolean()), cwdOutsideRoot: orNull(fc.boolean()),
    ret: i32, errno: orNull(fc.string({ maxLength: 8 })), lsmRet: orNull(i32), probe: fc.constantFrom('fentry', 'kprobe', 'tracepoint'),
  })
  .map((e) => ({
    ...e,
    comm: displayBytes(e.commBytes),
    exe: e.exeBytes && displayBytes(e.exeBytes),
    parentComm: displayBytes(e.parentCommBytes),
    parentExe: e.parentExeBytes && displayBytes(e.parentExeBytes),
    path: displayBytes(e.pathBytes),
    resolvedPath: e.resolvedPathBytes && displayBytes(e.resolvedPathBytes),
  }) as ChrootEvent);

describe('the record decoder', () => {
  it('reads back every chroot record the writer writes, field for field (non-UTF-8 bytes, integers up to 2^64 - 1)', () => {
    fc.assert(
      fc.property(event, (e) => {
        const item = decodeRecord(chrootRecord(e), 1);
        expect(item).toMatchObject({ kind: 'call', record: 'chroot', decided: e.ret === 0 || e.lsmRet !== null });
        expect((item as { event: ChrootEvent }).event).toEqual(e);
      }),
      { numRuns: 2000 },
    );
  });

  it('reads back the caller facts and the verdict of every decision record', () => {
    const verdict = fc.record({
      action: fc.constantFrom('allow', 'deny', 'audit'), ruleId: orNull(fc.string()), reason: fc.constantFrom('rule', 'default', 'internal-error', 'policy-torn'),
      error: orNull(fc.string()), initialNamespaces: fc.boolean(), denied: fc.boolean(),
      policyMode: fc.constantFrom('enforce', 'audit'), generation: u32, source: fc.constantFrom('lsm', 'watch', 'replay'),
    });
    fc.assert(
      fc.property(event, verdict, (e, v) => {
        const d: ChrootDecision = decisionOf(e, v as Parameters<typeof decisionOf>[1]);
        const item = decodeRecord(decisionRecord(d), 7) as Extract<RecordingItem, { record: 'decision' }>;
        const { enterTs: _t, ret: _r, errno: _e, lsmRet: _l, probe: _p, ...facts } = e;
        expect(item).toMatchObject({ kind: 'call', record: 'decision', line: 7, decided: v.reason !== 'internal-error' });
        expect(item.event).toEqual(facts);
        expect(item.recorded).toEqual({ action: v.action, ruleId: v.ruleId, reason: v.reason, denied: v.denied, source: v.source });
      }),
      { numRuns: 500 },
    );
  });

  it('reads integers above 2^53 exactly only where they are values, never inside a string', () => {
    const path = Buffer.from('/srv/x","ts":12345678901234567890,"exeIno":99999999999999999999');
    const e = { ...syntheticEvent(0), pathBytes: path, path: displayBytes(path), resolvedPathBytes: path, resolvedPath: displayBytes(path), ts: 2n ** 64n - 1n, exeIno: 2n ** 53n + 1n };
    expect((decodeRecord(chrootRecord(e), 1) as { event: ChrootEvent }).event).toEqual(e);
    // As versions before recursionMissed wrote it: read as 0.
    const lost = '{"type":"lost","sinceTs":1152921504606846976,"ts":1152921504606846977,"ringBufferFull":1,"pendingFull":2,"kretprobeMissed":3,"lsmErrors":4,"allowLost":5,"denyLost":6,"auditLost":7,"total":{"ringBufferFull":1,"pendingFull":2,"kretprobeMissed":3,"lsmErrors":4,"allowLost":5,"denyLost":6,"auditLost":7}}';
    expect(decodeRecord(lost, 2)).toEqual({ kind: 'lost', line: 2, counts: { ringBufferFull: 1, pendingFull: 2, kretprobeMissed: 3, recursionMissed: 0, lsmErrors: 4, allowLost: 5, denyLost: 6, auditLost: 7 } });
    const withRecursion = lost.replace('"kretprobeMissed":3,', '"kretprobeMissed":3,"recursionMissed":8,');
    expect(decodeRecord(withRecursion, 3)).toEqual({ kind: 'lost', line: 3, counts: { ringBufferFull: 1, pendingFull: 2, kretprobeMissed: 3, recursionMissed: 8, lsmErrors: 4, allowLost: 5, denyLost: 6, auditLost: 7 } });
    expect(() => decodeRecord(withRecursion.replace('"recursionMissed":8', '"recursionMissed":-1'), 4)).toThrow(/recursionMissed/);
  });

  it('names each malformed line with its number, reads on, and the CLI exits 7 (neither 0 nor the invalid-policy 2)', async () => {
    // Integers JSON.parse reads exactly, so each bad line below changes one thing only.
    const good = chrootRecord({ ...syntheticEvent(3), ts: 5n, enterTs: 4n, cgroupId: 1n, exeIno: 2n });
    const o = JSON.parse(good) as Record<string, unknown>;
    const bad: Array<[string, RegExp]> = [
      ['{"type":"chroot"', /not JSON/],
      ['[1,2]', /not a JSON object/],
      ['{"type":"nope"}', /no record type "nope"/],
      [JSON.stringify({ ...o, pid: -1 }), /"pid"/],
      [JSON.stringify({ ...o, extra: 1 }), /no key "extra"/],
      [JSON.stringify({ ...o, pathBase64: '!!' }), /"pathBase64" is not base64/],
      [JSON.stringify({ ...o, path: `${String(o.path)}x` }), /"path" is not the display form/],
      [good.replace(/"ts":\d+/, '"ts":18446744073709551616'), /"ts" must be an integer from 0 to 2\^64 - 1/],
      ['x'.repeat(1024 * 1024 + 1), /longer than 1 MiB/],
    ];
    const text = [good, ...bad.map(([l]) => l), '', good].join('\n') + '\n';
    const items: RecordingItem[] = [];
    for await (const item of readRecording((async function* () {
      yield Buffer.from(text);
    })())) items.push(item);
    expect(items.map((i) => i.kind)).toEqual(['call', ...bad.map(() => 'malformed'), 'call']);
    bad.forEach(([, why], k) => expect(items[k + 1]).toMatchObject({ line: k + 2, message: expect.stringMatching(why) }));
    expect(items.at(-1)!.line).toBe(bad.length + 3);

    const file = join(dir, 'malformed.ndjson');
    writeFileSync(file, text);
    const policy = join(dir, 'allow.yaml');
    writeFileSync(policy, 'mode: enforce\ndefault: allow\nrules: []\n');
    const r = spawnSync(process.execPath, [CLI, 'replay', '--json', '--policy', policy, file], { encoding: 'utf8' });
    expect(r.status).toBe(7);
    for (let k = 0; k < bad.length; k++) expect(r.stderr).toContain(`${file}: line ${k + 2}: not a record`);
    const summary = ndjson(r.stdout).at(-1)!;
    expect(summary).toMatchObject({ type: 'summary', malformed: bad.length, lines: bad.length + 3, records: { chroot: 2 } });
    const learn = spawnSync(process.execPath, [CLI, 'learn', file], { encoding: 'utf8' });
    expect(learn.status).toBe(7);
    expect(learn.stderr).toContain(`line 2: not a record`);
  });
});

describe('the initial mount namespace', () => {
  it("is each session's own, as its attach record names it, unless --initial-mnt-ns says otherwise", () => {
    const e = { ...syntheticEvent(0), userNs: 0xeffffffd, mntNs: 4026531841 };
    const attach = (ns: number) => `{"type":"attach","ts":1,"mode":"tracepoint","refused":[],"blindSpots":[],"initialMntNs":${ns}}`;
    const file = join(dir, 'sessions.ndjson');
    // Two sessions of other boots: in the first the caller was in the initial namespaces, in the second not.
    writeFileSync(file, [attach(4026531841), chrootRecord(e), attach(4026531999), chrootRecord(e)].join('\n') + '\n');
    const policy = join(dir, 'initial.yaml');
    writeFileSync(policy, 'mode: enforce\ndefault: deny\nrules:\n  - id: host\n    action: allow\n    match: { initialNamespaces: true }\n');
    const replay = (...more: string[]) => spawnSync(process.execPath, [CLI, 'replay', '--json', '--policy', policy, ...more, file], { encoding: 'utf8' });
    const actions = (r: ReturnType<typeof replay>) => ndjson(r.stdout).filter((x) => x.type === 'decision').map((d) => [d.action, d.initialNamespaces]);
    const own = replay();
    expect(own.status, own.stderr).toBe(0);
    expect(actions(own)).toEqual([['allow', true], ['deny', false]]);
    expect(own.stderr).toContain('line 3: the recording\'s session ran with initial mount namespace 4026531999');
    expect(actions(replay('--initial-mnt-ns', '4026531999'))).toEqual([['deny', false], ['deny', false]]);
  });
});

describe('the merge rule', () => {
  const merged = (...roots: string[]) => Object.fromEntries([...mergeRoots(new Map(roots.map((r) => [r, 1])))].map(([p, r]) => [p, [r.calls, r.roots]]));
  it('covers roots below another, merges siblings under a parent two or more components deep, and never widens to / or a top-level directory', () => {
    expect(merged('/srv/chroots/a', '/srv/chroots/b', '/srv/chroots/b/inner')).toEqual({ '/srv/chroots': [3, 3] });
    expect(merged('/tmp/a', '/tmp/b')).toEqual({ '/tmp/a': [1, 1], '/tmp/b': [1, 1] });
    expect(merged('/a', '/b')).toEqual({ '/a': [1, 1], '/b': [1, 1] });
    // Repeated: the merged parents are siblings in turn.
    expect(merged('/srv/x/p/1', '/srv/x/p/2', '/srv/x/q/1', '/srv/x/q/2')).toEqual({ '/srv/x': [4, 4] });
    expect(merged('/srv/x/p/1', '/srv/y/q')).toEqual({ '/srv/x/p/1': [1, 1], '/srv/y/q': [1, 1] });
  });
});

describe('learn', () => {
  /** Executables by path (bytes), each one file: what a policy's exe names and the context identifies. */
  const EXES = [Buffer.from('/usr/bin/debootstrap'), Buffer.from('/opt/tools/mkroot'), Buffer.concat([Buffer.from('/opt/'), Buffer.from([0xff]), Buffer.from('\\bin/x')])];
  const ROOTS = ['/', '/srv/a', '/srv/a/b', '/srv/c', '/srv/d/e', '/tmp/x', '/tmp/y/z'].map((r) => Buffer.from(r)).concat([Buffer.concat([Buffer.from('/srv/'), Buffer.from([0xfe]), Buffer.from('\\q/r')])]);
  const base = syntheticEvent(0);
  const call = fc.record({
    exe: fc.nat({ max: EXES.length - 1 }),
    exeFlag: fc.constantFrom(null, null, null, null, 'exeUnknown', 'exeMemfd', 'exeDeleted', 'exeUnreachable', 'exeTruncated'),
    uid: fc.constantFrom(0, 1000),
    root: fc.nat({ max: ROOTS.length - 1 }),
    rootFlag: fc.constantFrom(null, null, null, null, 'resolvedPathUnreachable', 'resolvedPathTruncated'),
    failed: fc.constantFrom(false, false, false, false, false, false, false, false, false, true),
    record: fc.constantFrom('chroot', 'chroot', 'decision'),
    denied: fc.boolean(),
  });
  it('merges as it reads: 50,000 fresh sibling roots of one builder become their parent', async () => {
    const { learnPolicy } = await import('../ts/policy/learn.js');
    const e = syntheticEvent(0);
    const items = async function* () {
      for (let i = 0; i < 50_000; i++) {
        const root = Buffer.from(`/srv/builds/${i}`);
        yield { kind: 'call', line: i + 1, record: 'chroot', decided: true, event: { ...e, resolvedPathBytes: root, resolvedPath: root.toString() } } as RecordingItem;
      }
    };
    const learned = await learnPolicy(items());
    expect(learned.policy.rules.map((r) => r.match)).toEqual([{ exe: ['/usr/sbin/chroot'], uid: 0, subtree: ['/srv/builds'] }]);
    expect(learned.yaml).toContain('/srv/builds # 50000 calls, 50000 roots merged');
  });

  it('writes every rule\'s exe and paths as lists: a subtree rule, a chroot to / and a root with no path to judge', async () => {
    const { learnPolicy } = await import('../ts/policy/learn.js');
    const e = syntheticEvent(0);
    const at = (root: string, extra: Partial<ChrootEvent> = {}) => ({ ...e, resolvedPathBytes: Buffer.from(root), resolvedPath: root, ...extra });
    const events = [at('/srv/builds/1'), at('/'), at('/gone', { resolvedPathUnreachable: true })];
    const items = async function* () {
      for (const [i, event] of events.entries()) yield { kind: 'call', line: i + 1, record: 'chroot', decided: true, event } as RecordingItem;
    };
    const learned = await learnPolicy(items());
    expect(learned.policy.rules.map((r) => [r.id, r.match])).toEqual([
      ['chroot-uid0', { exe: ['/usr/sbin/chroot'], uid: 0, subtree: ['/srv/builds/1'] }],
      ['chroot-uid0-slash', { exe: ['/usr/sbin/chroot'], uid: 0, path: ['/'] }],
      ['chroot-uid0-any-root', { exe: ['/usr/sbin/chroot'], uid: 0 }],
    ]);
  });

  it('says what to do when what it learned is more than a policy holds', async () => {
    const { learnPolicy } = await import('../ts/policy/learn.js');
    const e = syntheticEvent(0);
    const items = async function* () {
      // Roots with no parent in common: none merge.
      for (let i = 0; i < 1100; i++) {
        const root = Buffer.from(`/r${i}`);
        yield { kind: 'call', line: i + 1, record: 'chroot', decided: true, event: { ...e, resolvedPathBytes: root, resolvedPath: root.toString() } } as RecordingItem;
      }
    };
    await expect(learnPolicy(items())).rejects.toThrow(/at most 1024 in what was learned: .* learn from a narrower recording/);
  });

  it("allows every call it learned from: replaying its policy over the same recording denies only the calls it names as not allowed, and those the recorded guard denied", async () => {
    const { learnPolicy } = await import('../ts/policy/learn.js');
    const { replayPolicy } = await import('../ts/policy/replay.js');
    const { parsePolicy } = await import('../ts/policy/validate.js');
    const context = { initialMntNs: null, exes: new Map(EXES.map((b, i) => [displayBytes(b), { dev: 8388609 + i, ino: BigInt(100 + i) }])) };
    await fc.assert(
      // Only chroot records fail before the LSM hook: a decision was made at it, on a resolved root.
      fc.asyncProperty(fc.array(call.map((c) => ({ ...c, failed: c.failed && c.record === 'chroot' })), { minLength: 1, maxLength: 60 }), async (calls) => {
        const items: RecordingItem[] = calls.map((c, i) => {
          const exe = EXES[c.exe]!;
          const root = ROOTS[c.root]!;
          const e: ChrootEvent = {
            ...base, uid: c.uid, exeBytes: exe, exe: displayBytes(exe), exeDev: 8388609 + c.exe, exeIno: BigInt(100 + c.exe),
            exeUnknown: false, exeMemfd: false, exeDeleted: false, exeUnreachable: false, exeTruncated: false,
            ...(c.exeFlag ? { [c.exeFlag]: true } : {}),
            resolvedPathBytes: c.failed ? null : root, resolvedPath: c.failed ? null : displayBytes(root), resolvedPathUnreachable: false, resolvedPathTruncated: false,
            ...(c.rootFlag && !c.failed ? { [c.rootFlag]: true } : {}),
            ret: c.failed ? -2 : 0, errno: c.failed ? 'ENOENT' : null,
          };
          if (c.record === 'chroot') return { kind: 'call', line: i + 1, record: 'chroot', event: e, decided: !c.failed };
          const { enterTs: _t, ret: _r, errno: _n, lsmRet: _l, probe: _p, ...facts } = e;
          return { kind: 'call', line: i + 1, record: 'decision', event: facts, decided: true, recorded: { action: c.denied ? 'deny' : 'allow', ruleId: null, reason: 'default', denied: c.denied, source: 'lsm' } };
        });
        const source = async function* () {
          yield* items;
        };
        const learned = await learnPolicy(source());
        expect(parsePolicy(learned.yaml)).toEqual(learned.policy);
        expect(learned.policy.rules.every((r) => r.action === 'allow') && learned.policy.default === 'deny').toBe(true);
        // No rule is wider than a root: no subtree /, and a rule without subtree only for roots that cannot be judged.
        for (const r of learned.policy.rules) expect([r.match?.subtree ?? []].flat()).not.toContain('/');
        const denied: number[] = [];
        await replayPolicy(learned.policy, source(), { context, onDecision: (d, item) => void (d.action !== 'allow' && denied.push(item.line)) });
        const mayBeDenied = new Set(
          calls.flatMap((c, i) => {
            const unnamed = c.exeFlag !== null;
            const unjudged = c.rootFlag !== null && !c.failed;
            const wasDenied = c.record === 'decision' && c.denied;
            return (unnamed && unjudged) || wasDenied ? [i + 1] : [];
          }),
        );
        expect(denied.filter((line) => !mayBeDenied.has(line))).toEqual([]);
        // From the first decision record on, the recording has a guard: its chroot records are skipped (each call once).
        const guardFrom = calls.findIndex((c) => c.record === 'decision');
        const skipped = (c: (typeof calls)[number], i: number) => guardFrom !== -1 && i > guardFrom && c.record === 'chroot';
        expect(learned.skipped).toBe(calls.filter(skipped).length);
        expect(learned.notAllowedCount).toBe(calls.filter((c, i) => c.exeFlag !== null && c.rootFlag !== null && !c.failed && !(c.record === 'decision' && c.denied) && !skipped(c, i)).length);
      }),
      { numRuns: 300 },
    );
  });
});

describe('a recording with a guard (the agent\'s stream with guard:): each call once', () => {
  // What the agent writes with a guard: the guard's attach (mode lsm) and guard records first,
  // then the watch's attach; for each call the guard decided, a decision record (source lsm)
  // AND the watch's chroot record, in either order; a call that failed before the LSM hook has
  // a chroot record only; lost records name their reader. Before it, a watch recording the
  // agent's stream was appended to: its chroot records are the only records of their calls.
  const verdict = (e: ChrootEvent, action: 'allow' | 'deny', ruleId: string | null) =>
    decisionOf(e, { action, ruleId, reason: ruleId === null ? 'default' : 'rule', error: null, initialNamespaces: true, denied: action === 'deny', policyMode: 'enforce', generation: 1, source: 'lsm' });
  const loss = (n: Partial<LossCounts>): LostReport => ({ ...NO_LOSS, ...n, total: { ...NO_LOSS, ...n } });
  // KINDS 0, 1 (builds), 2 (default), 3 (no-odd), 6 (ENOENT); as the recorded guard (under POLICY) decided them.
  const guarded = [0, 1, 2, 3, 7, 8].map((i) => syntheticEvent(i));
  const recorded = (e: ChrootEvent, i: number) => {
    const k = KINDS[i % KINDS.length]!;
    const allowed = k.rule === 'builds';
    // The watch saw the denied calls fail with EPERM (tracepoint mode: no lsmRet).
    const watched = allowed ? e : { ...e, ret: -1, errno: 'EPERM', lsmRet: null };
    return { k, allowed, decision: decisionRecord(verdict(e, allowed ? 'allow' : 'deny', k.rule)), chroot: chrootRecord(watched) };
  };
  const lines = [
    attachRecord(1n, { mode: 'tracepoint' }),
    chrootRecord(syntheticEvent(0)),
    chrootRecord(syntheticEvent(1)),
    attachRecord(2n, { mode: 'lsm', generation: 1, policyMode: 'enforce' }),
    guardRecord(3n, { event: 'pinned', policy: '/etc/chroot-guard/policy.yaml', pinDir: '/sys/fs/bpf/chroot-guard', generation: 1, policyMode: 'enforce', code: null, problems: [] }),
    attachRecord(4n, { mode: 'tracepoint' }),
    ...[0, 1, 2, 3, 7, 8].flatMap((i, j) => {
      const r = recorded(guarded[j]!, i);
      return j % 2 ? [r.chroot, r.decision] : [r.decision, r.chroot];
    }),
    // ENOENT: the guard never saw it (KIND 6).
    chrootRecord(syntheticEvent(6)),
    lostRecord(loss({}), 5n, 6n, 'watch'),
    lostRecord(loss({}), 5n, 6n, 'guard'),
  ];
  const file = join(dir, 'agent-guard.ndjson');
  writeFileSync(file, lines.join('\n') + '\n');

  it('replay counts each call once: the decisions stand for the calls from the guard on, the chroot records there are skipped and counted as such', () => {
    const policy = join(dir, 'guarded.yaml');
    writeFileSync(policy, POLICY);
    const r = spawnSync(process.execPath, [CLI, 'replay', '--json', '--policy', policy, file], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = ndjson(r.stdout);
    const decisions = out.filter((x) => x.type === 'decision');
    // The two calls of the earlier watch recording, then one per guarded call (KINDS 0, 1, 2, 3, 0, 1): never a call twice.
    expect(decisions.map((d) => [d.pid, d.ruleId])).toEqual([
      [1000, 'builds'], [1001, 'builds'],
      [1000, 'builds'], [1001, 'builds'], [1002, null], [1003, 'no-odd'], [1007, 'builds'], [1008, 'builds'],
    ]);
    expect(out.at(-1)).toEqual({
      type: 'summary', command: 'replay', policyMode: 'enforce',
      lines: lines.length,
      records: { attach: 3, chroot: 9, decision: 6, lost: 2, other: 1 },
      malformed: 0,
      decided: 8, undecided: 0, undecidedByErrno: {}, undecidable: 0,
      skipped: 7,
      actions: { allow: 6, deny: 2, audit: 0 },
      unjudged: 0,
      rules: [
        { id: 'no-odd', action: 'deny', matched: 1 },
        { id: 'builds', action: 'allow', matched: 6 },
        { id: 'never', action: 'allow', matched: 0 },
      ],
      default: { action: 'deny', matched: 1 },
      lost: { ...NO_LOSS },
      complete: true,
    });
    const table = spawnSync(process.execPath, [CLI, 'replay', '--summary-only', '--policy', policy, file], { encoding: 'utf8' });
    expect(table.stdout).toContain(`8 decided calls (9 chroot and 6 decision records, ${lines.length} lines): 6 allow, 2 deny\n7 chroot records not replayed: the recording has a guard, whose decision records stand for the same calls (each call counted once)\n`);
    // Without a guard, every chroot record stands for its call, as before (the denied calls
    // then look like calls that failed before the LSM hook: tracepoint mode has no lsmRet).
    const watchOnly = join(dir, 'watch-only.ndjson');
    writeFileSync(watchOnly, lines.filter((l) => !l.includes('"type":"decision"') && !l.includes('"mode":"lsm"')).join('\n') + '\n');
    const plain = ndjson(spawnSync(process.execPath, [CLI, 'replay', '--json', '--summary-only', '--policy', policy, watchOnly], { encoding: 'utf8' }).stdout)[0]!;
    expect(plain).toMatchObject({ records: { chroot: 9, decision: 0 }, skipped: 0, decided: 6, undecided: 3, undecidedByErrno: { EPERM: 2, ENOENT: 1 } });
  });

  it('learn learns each call once, by the same rule, and not the calls the guard denied', async () => {
    const r = spawnSync(process.execPath, [CLI, 'learn', file], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('learned 1 rule (enforce, default deny) from 6 calls');
    expect(r.stderr).toContain('7 chroot records skipped: the recording has a guard, whose decision records stand for the same calls');
    expect(r.stderr).toContain('2 calls the recorded guard denied are not allowed');
    expect(r.stdout).toContain('# 7 chroot records skipped: the recording\'s guard decisions stand for the same calls (each call once).');
    expect(r.stdout).toContain('# 6 calls by /usr/sbin/chroot as uid 0');
    const { learnPolicy } = await import('../ts/policy/learn.js');
    const learned = await learnPolicy(readRecording(file));
    expect({ learned: learned.learned, skipped: learned.skipped, deniedInRecording: learned.deniedInRecording, undecided: learned.undecided }).toEqual({ learned: 6, skipped: 7, deniedInRecording: 2, undecided: 0 });
  });
});

/**
 * The synthetic recording: `N` chroot records from the writer, in a cycle
 * of {@link KINDS} whose outcomes under {@link POLICY} are known by
 * construction, and a lost record every {@link LOST_EVERY} records.
 */
const N = 1_000_000;
const LOST_EVERY = 100_000;
const POLICY = `mode: enforce
default: deny
rules:
  - id: no-odd
    action: deny
    match: { subtree: "/srv/odd\\\\xff" }
  - id: builds
    action: allow
    match: { subtree: /srv/build, uid: 0 }
  - id: never
    action: allow
    match: { path: /nowhere }
`;
/** One kind of call: its new root (null: failed before the LSM hook), uid, and what the policy says. */
const KINDS: Array<{ root: Buffer | null; uid: number; rule: string | null; unreachable?: boolean }> = [
  { root: Buffer.from('/srv/build/a'), uid: 0, rule: 'builds' },
  { root: Buffer.from('/srv/build/b/c'), uid: 0, rule: 'builds' },
  { root: Buffer.from('/srv/build/a'), uid: 1000, rule: null },
  { root: Buffer.concat([Buffer.from('/srv/odd'), Buffer.from([0xff]), Buffer.from('/x')]), uid: 0, rule: 'no-odd' },
  { root: Buffer.from('/srv/odd\\xff/x'), uid: 0, rule: null }, // a backslash, not the byte: the default
  { root: Buffer.from('/srv/build/a'), uid: 0, rule: 'no-odd', unreachable: true }, // cannot be judged: holds for the deny rule
  { root: null, uid: 0, rule: null }, // ENOENT: undecided
];

function syntheticEvent(i: number): ChrootEvent {
  const k = KINDS[i % KINDS.length]!;
  const exe = Buffer.from('/usr/sbin/chroot');
  const path = k.root ?? Buffer.from('/nonexistent');
  return {
    ts: 2n ** 60n + BigInt(i), enterTs: 2n ** 60n - 1n, pid: 1000 + (i % 30000), tid: 1000 + (i % 30000), nsPid: 1, nsTid: 1, ppid: 999,
    uid: k.uid, gid: 0, euid: k.uid, egid: 0, comm: 'chroot', commBytes: Buffer.from('chroot'), cgroupId: 2n ** 63n + 5n, mntNs: 4026531841, pidNs: 4026531836, userNs: 4026531837,
    cgroupPath: '/system.slice/docker-' + 'ab'.repeat(32) + '.scope', cgroupLookup: 'found', containerRuntime: 'docker', containerId: 'ab'.repeat(32), podUid: null,
    exeDev: 8388609, exeIno: 2n ** 62n + 7n, exeUnknown: false, exe: displayBytes(exe), exeBytes: exe, exeTruncated: false, exeUnreachable: false, exeDeleted: false, exeMemfd: false,
    parentComm: 'sh', parentCommBytes: Buffer.from('sh'), parentExe: '/usr/bin/dash', parentExeBytes: Buffer.from('/usr/bin/dash'),
    parentExeTruncated: false, parentExeUnreachable: false, parentExeDeleted: false, parentExeMemfd: false,
    path: displayBytes(path), pathBytes: path, pathTruncated: false, pathUnreadable: false, pathReadLate: false,
    resolvedPath: k.root && displayBytes(k.root), resolvedPathBytes: k.root, resolvedPathTruncated: false, resolvedPathUnreachable: k.unreachable === true,
    callerChrooted: false, escapesRoot: k.root ? false : null, cwdOutsideRoot: k.root ? false : null,
    ret: k.root ? 0 : -2, errno: k.root ? null : 'ENOENT', lsmRet: null, probe: 'tracepoint',
  };
}

/** Writes the recording in 4 MiB blocks (never whole in memory); returns what it holds. */
function writeRecording(file: string, n: number): { lostCalls: number } {
  const fd = openSync(file, 'w');
  // Records of one kind differ only in pid, tid and ts: the writer's record of each kind, cut
  // where those go (the first event of a kind has pid and tid 1000 + kind, unique in the text).
  const pieces = KINDS.map((_, k) => {
    const e = syntheticEvent(k);
    return chrootRecord(e).replace(`"ts":${e.ts},`, '"ts":\u0001,').replace(`"pid":${e.pid},"tid":${e.tid},`, '"pid":\u0001,"tid":\u0001,').split('\u0001');
  });
  let block = '';
  let lostCalls = 0;
  for (let i = 0; i < n; i++) {
    const [a, b, c, d] = pieces[i % KINDS.length]!;
    const pid = 1000 + (i % 30000);
    block += `${a}${2n ** 60n + BigInt(i)}${b}${pid}${c}${pid}${d}\n`;
    if ((i + 1) % LOST_EVERY === 0) {
      block += `{"type":"lost","sinceTs":1,"ts":2,"ringBufferFull":3,"pendingFull":0,"kretprobeMissed":0,"lsmErrors":0,"allowLost":0,"denyLost":0,"auditLost":0,"total":{"ringBufferFull":${3 * ((i + 1) / LOST_EVERY)},"pendingFull":0,"kretprobeMissed":0,"lsmErrors":0,"allowLost":0,"denyLost":0,"auditLost":0}}\n`;
      lostCalls += 3;
    }
    if (block.length > 4 << 20) {
      writeSync(fd, block);
      block = '';
    }
  }
  writeSync(fd, block);
  closeSync(fd);
  return { lostCalls };
}

/** Runs the CLI under /usr/bin/time: exit code, stdout, and peak RSS (KiB, the kernel's maxrss). */
function timed(args: string[]) {
  const started = Date.now();
  const r = spawnSync('/usr/bin/time', ['-f', 'maxrss=%M', process.execPath, CLI, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const rss = Number(/maxrss=(\d+)/.exec(r.stderr)?.[1]);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, rssKiB: rss, ms: Date.now() - started };
}

describe('the progress line', () => {
  it('shows bytes read of the total and records per second on a terminal, then clears itself; nothing on a pipe', () => {
    const policy = join(dir, 'progress.yaml');
    writeFileSync(policy, POLICY);
    const file = join(dir, 'progress.ndjson');
    writeRecording(file, 30_000);
    const args = [CLI, 'replay', '--summary-only', '--policy', policy, file];
    // script(1) gives the command a terminal; what it wrote comes back on stdout.
    const tty = spawnSync('script', ['-qec', [process.execPath, ...args].join(' '), '/dev/null'], { encoding: 'utf8' });
    expect(tty.status, tty.stderr).toBe(0);
    const drawn = [...tty.stdout.matchAll(/\r\x1b\[Kreplay: ([\d.]+) MiB of ([\d.]+) MiB \((\d+)%\), ([\d,]+) records, ([\d,]+)\/s/g)];
    expect(drawn.length).toBeGreaterThan(0);
    expect(Number(drawn[0]![2])).toBeCloseTo(statSync(file).size / 2 ** 20, 0);
    // Cleared before the summary.
    const last = tty.stdout.lastIndexOf('\r\x1b[Kreplay:');
    expect(tty.stdout.indexOf('\r\x1b[K', last + 1)).toBeGreaterThan(last);
    expect(tty.stdout).toContain('decided calls');
    const pipe = spawnSync(process.execPath, args, { encoding: 'utf8' });
    expect(pipe.status).toBe(0);
    expect(pipe.stderr).not.toContain('replay:');
    expect(pipe.stderr).not.toContain('\x1b');
  });
});

describe('a 1,000,000-event recording', () => {
  it('is replayed by the CLI in constant memory, with exact counts per rule', () => {
    const policy = join(dir, 'policy.yaml');
    writeFileSync(policy, POLICY);
    // The generated records are what the writer writes for those events.
    const probe = join(dir, 'probe.ndjson');
    writeRecording(probe, 3 * KINDS.length);
    expect(readFileSync(probe, 'utf8').trimEnd().split('\n')).toEqual([...Array(3 * KINDS.length).keys()].map((i) => chrootRecord(syntheticEvent(i))));
    const small = join(dir, 'small.ndjson');
    const large = join(dir, 'large.ndjson');
    const written = Date.now();
    writeRecording(small, N / 100);
    const { lostCalls } = writeRecording(large, N);
    const writeMs = Date.now() - written;

    const base = timed(['replay', '--json', '--summary-only', '--policy', policy, small]);
    const run = timed(['replay', '--json', '--summary-only', '--policy', policy, large]);
    expect(run.status, run.stderr).toBe(0);
    const [summary] = ndjson(run.stdout);
    const per = (pred: (k: (typeof KINDS)[number]) => boolean) => KINDS.reduce((n, k, j) => n + (pred(k) ? Math.floor(N / KINDS.length) + (j < N % KINDS.length ? 1 : 0) : 0), 0);
    const decided = per((k) => k.root !== null);
    expect(summary).toEqual({
      type: 'summary', command: 'replay', policyMode: 'enforce',
      lines: N + N / LOST_EVERY,
      records: { attach: 0, chroot: N, decision: 0, lost: N / LOST_EVERY, other: 0 },
      malformed: 0,
      decided,
      undecided: per((k) => k.root === null),
      undecidedByErrno: { ENOENT: per((k) => k.root === null) },
      undecidable: 0,
      skipped: 0,
      actions: { allow: per((k) => k.rule === 'builds'), deny: decided - per((k) => k.rule === 'builds'), audit: 0 },
      unjudged: per((k) => k.unreachable === true),
      rules: [
        { id: 'no-odd', action: 'deny', matched: per((k) => k.rule === 'no-odd') },
        { id: 'builds', action: 'allow', matched: per((k) => k.rule === 'builds') },
        { id: 'never', action: 'allow', matched: 0 },
      ],
      default: { action: 'deny', matched: per((k) => k.root !== null && k.rule === null) },
      lost: { ringBufferFull: lostCalls, pendingFull: 0, kretprobeMissed: 0, recursionMissed: 0, lsmErrors: 0, allowLost: 0, denyLost: 0, auditLost: 0 },
      complete: false,
    });
    // Constant memory: a recording 100 times larger (1 GB) peaks no more than 16 MiB above the
    // 10 MB one (the input is read in 64 KiB chunks and each line is decoded and dropped; what
    // varies is when V8 collects), and under 128 MiB in all: Node.js alone peaks at about 40 MiB
    // here, with the policy stack and the addon about 65 MiB before the first record.
    const size = statSync(large).size;
    console.log(`1M replay: ${(size / 2 ** 20).toFixed(0)} MiB in ${run.ms} ms, peak RSS ${(run.rssKiB / 1024).toFixed(1)} MiB (10k: ${(base.rssKiB / 1024).toFixed(1)} MiB in ${base.ms} ms); written in ${writeMs} ms`);
    expect(size).toBeGreaterThan(N * 900);
    expect(run.rssKiB).toBeLessThan(base.rssKiB + 16 * 1024);
    expect(run.rssKiB).toBeLessThan(128 * 1024);
  }, 180_000);
});

/**
 * Container attribution: the cgroup path parser (examples of each
 * runtime's layout, and properties over generated ones), the lookup cache,
 * old recordings without the fields, and real chroot calls made from
 * cgroups this test creates with each runtime's naming, looked up from the
 * id the kernel reported; one of them removed before its event is decoded.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { cgroupAttribution, cgroupCacheSize, clearCgroupCache, containerOf, lookUpCgroup, CGROUP_CACHE_ENTRIES, type ContainerRuntime } from '../ts/cgroup.js';
import { AgentMetrics, OTHER_CONTAINERS } from '../ts/agent/metrics.js';
import { chrootRecord } from '../ts/cli/records.js';
import type { ChrootEvent } from '../ts/events.js';
import { decodeRecord } from '../ts/recording.js';
import { cgroup2Mount, record, removeCgroupDir } from './helpers.js';

const ID = '3f4e5a6b7c8d9e0f'.repeat(4);
const UID = '74c13223-5a00-11e9-b385-42010a80018d';
const UID_ = UID.replaceAll('-', '_');

/** Real layouts (kubelet, containerd, CRI-O, Docker, Podman), and what each says. */
const LAYOUTS: Array<[string, ContainerRuntime | null, string | null, string | null]> = [
  [`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice/cri-containerd-${ID}.scope`, 'containerd', ID, UID],
  [`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/crio-${ID}.scope`, 'cri-o', ID, UID],
  [`/kubepods.slice/kubepods-pod${UID_}.slice/crio-${ID}.scope/container`, 'cri-o', ID, UID],
  [`/kubepods.slice/kubepods-pod${UID_}.slice/docker-${ID}.scope`, 'docker', ID, UID],
  [`/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${UID_}.slice/cri-containerd-${ID}.scope`, 'containerd', ID, UID],
  [`/kubepods/besteffort/pod${UID}/${ID}`, 'unknown', ID, UID],
  [`/kubepods/pod${UID}/${ID}`, 'unknown', ID, UID],
  [`/kubepods/burstable/pod${UID}/crio-${ID}`, 'cri-o', ID, UID],
  [`/kubepods-besteffort-pod${UID_}.slice:cri-containerd:${ID}`, 'containerd', ID, UID],
  [`/kubepods/pod${'a'.repeat(32)}/${ID}`, 'unknown', ID, 'a'.repeat(32)], // a static pod's uid: a hash
  [`/system.slice/docker-${ID}.scope`, 'docker', ID, null],
  [`/system.slice/docker-${ID}.scope/init.scope`, 'docker', ID, null], // systemd inside the container
  [`/docker/${ID}`, 'docker', ID, null],
  [`/machine.slice/libpod-${ID}.scope`, 'podman', ID, null],
  [`/machine.slice/libpod-${ID}.scope/container`, 'podman', ID, null],
  [`/libpod_parent/libpod-${ID}`, 'podman', ID, null],
  [`/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-${ID}.scope`, 'podman', ID, null], // rootless
  [`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice`, null, null, UID], // the pod's own cgroup
  [`/system.slice/crio-conmon-${ID}.scope`, null, null, null], // the monitor, not the container
  [`/machine.slice/libpod-conmon-${ID}.scope`, null, null, null],
  ['/', null, null, null],
  ['/system.slice/cron.service', null, null, null],
  [`/system.slice/docker-${ID.slice(1)}.scope`, null, null, null], // 63 digits
  [`/system.slice/docker-${ID.toUpperCase()}.scope`, null, null, null],
  [`/pod${UID}/${ID}`, 'unknown', ID, null], // a pod-like name outside kubepods is not a pod
];

describe('containerOf', () => {
  it.each(LAYOUTS)('%s', (path, containerRuntime, containerId, podUid) => {
    expect(containerOf(path)).toEqual({ containerRuntime, containerId, podUid });
  });

  const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
  const uuid = fc.tuple(hex(8), hex(4), hex(4), hex(4), hex(12)).map((p) => p.join('-'));
  const podUid = fc.oneof(uuid, hex(32));
  /** A cgroup name that is no container's and no pod's (no 64-hex run, no `pod`). */
  const plain = fc.stringMatching(/^[a-z@._-]{1,20}$/).filter((n) => !n.includes('pod') && n !== 'docker' && n !== '.' && n !== '..');
  const prefix = fc.array(plain, { maxLength: 3 }).map((p) => p.map((n) => `/${n}`).join(''));
  const qos = fc.constantFrom('', 'besteffort', 'burstable');
  const tail = fc.constantFrom('', '/init.scope', '/container');
  /** Each layout as a function of (prefix, qos, pod uid, container id) and what it should say. */
  const layout = fc.constantFrom<Array<[(p: string, q: string, u: string, id: string) => string, ContainerRuntime, boolean]>>(
    [(p, q, u, id) => `${p}/kubepods.slice${q && `/kubepods-${q}.slice`}/kubepods${q && `-${q}`}-pod${u.replaceAll('-', '_')}.slice/cri-containerd-${id}.scope`, 'containerd', true],
    [(p, q, u, id) => `${p}/kubepods.slice${q && `/kubepods-${q}.slice`}/kubepods${q && `-${q}`}-pod${u.replaceAll('-', '_')}.slice/crio-${id}.scope`, 'cri-o', true],
    [(p, q, u, id) => `${p}/kubepods${q && `/${q}`}/pod${u}/${id}`, 'unknown', true],
    [(p, _q, _u, id) => `${p}/system.slice/docker-${id}.scope`, 'docker', false],
    [(p, _q, _u, id) => `${p}/docker/${id}`, 'docker', false],
    [(p, _q, _u, id) => `${p}/machine.slice/libpod-${id}.scope`, 'podman', false],
  );

  it('reads back the container id, runtime and pod uid of every layout, below any prefix, from the container or a cgroup inside it', () => {
    fc.assert(
      fc.property(layout, prefix, qos, podUid, hex(64), tail, ([make, runtime, inPod], p, q, u, id, t) => {
        expect(containerOf(make(p, q, u, id) + t)).toEqual({ containerRuntime: runtime, containerId: id, podUid: inPod ? u : null });
      }),
      { numRuns: 3000 },
    );
  });

  it('finds no container in a path without a 64-hex-digit name, and never throws on any string', () => {
    fc.assert(
      fc.property(prefix, (p) => {
        expect(containerOf(p)).toEqual({ containerRuntime: null, containerId: null, podUid: null });
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), (s) => {
        const c = containerOf(s);
        if (c.containerId !== null) expect(c.containerId).toMatch(/^[0-9a-f]{64}$/);
        if (c.podUid !== null) expect(c.podUid).toMatch(/^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$/);
        expect(c.containerRuntime === null).toBe(c.containerId === null);
      }),
      { numRuns: 5000 },
    );
  });
});

describe('recordings', () => {
  it('read a chroot record written before container attribution (no cgroupPath, …) with those fields null', () => {
    const e = { cgroupId: 5n, ts: 1n, enterTs: 1n } as Partial<ChrootEvent>;
    const line = chrootRecord({
      ...(decodeRecord(
        '{"type":"chroot","ts":1,"pid":1,"tid":1,"nsPid":1,"nsTid":1,"ppid":0,"uid":0,"gid":0,"euid":0,"egid":0,"comm":"x","commBase64":"eA==","cgroupId":5,"mntNs":1,"pidNs":1,"userNs":1,"exeDev":0,"exeIno":0,"exeUnknown":true,"exe":null,"exeBase64":null,"exeTruncated":false,"exeUnreachable":false,"exeDeleted":false,"exeMemfd":false,"parentComm":"","parentCommBase64":"","parentExe":null,"parentExeBase64":null,"parentExeTruncated":false,"parentExeUnreachable":false,"parentExeDeleted":false,"parentExeMemfd":false,"path":"/","pathBase64":"Lw==","pathTruncated":false,"pathUnreadable":false,"pathReadLate":false,"resolvedPath":"/","resolvedPathBase64":"Lw==","resolvedPathTruncated":false,"resolvedPathUnreachable":false,"callerChrooted":false,"escapesRoot":false,"cwdOutsideRoot":false,"enterTs":1,"ret":0,"errno":null,"lsmRet":null,"probe":"tracepoint"}',
        1,
      ) as { event: ChrootEvent }).event,
      ...e,
    });
    const back = (decodeRecord(line, 1) as { event: ChrootEvent }).event;
    expect(back).toMatchObject({ cgroupId: 5n, cgroupPath: null, cgroupLookup: null, containerRuntime: null, containerId: null, podUid: null });
    // Written back, the nulls are there: the reader of this version reads them as they are.
    expect(JSON.parse(line)).toMatchObject({ cgroupPath: null, cgroupLookup: null, containerRuntime: null, containerId: null, podUid: null });
  });

  it('still refuse a record with an unknown key or a bad value in the new fields', () => {
    const e = (decodeRecord(chrootRecord({ ...sample(), cgroupLookup: 'found' }), 1) as { event: ChrootEvent }).event;
    expect(e.cgroupLookup).toBe('found');
    expect(() => decodeRecord(chrootRecord(sample()).replace('"cgroupLookup":"found"', '"cgroupLookup":"maybe"'), 1)).toThrow(/cgroupLookup/);
    expect(() => decodeRecord(chrootRecord(sample()).replace('"podUid":null', '"podUid":null,"podName":"x"'), 1)).toThrow(/podName/);
  });
});

describe("the agent's container metric", () => {
  const calls = async (m: AgentMetrics) => (await m.registry.getSingleMetricAsString('chroot_guard_container_chroot_calls_total')).split('\n').filter((l) => !l.startsWith('#'));
  const from = (containerId: string | null, podUid: string | null = null, lookup: ChrootEvent['cgroupLookup'] = 'found') =>
    ({ ...sample(), cgroupLookup: lookup, containerRuntime: containerId ? 'containerd' : null, containerId, podUid }) as ChrootEvent;

  it('counts by runtime only, by default', async () => {
    const m = new AgentMetrics();
    for (const e of [from(ID), from(ID.replace('3', '4')), from(null), from(null, null, 'removed')]) m.event(e);
    expect(await calls(m)).toEqual([
      'chroot_guard_container_chroot_calls_total{container_runtime="containerd"} 2',
      'chroot_guard_container_chroot_calls_total{container_runtime="none"} 1',
      'chroot_guard_container_chroot_calls_total{container_runtime="unresolved"} 1',
    ]);
  });

  it(`gives the first containerSeries containers series of their own, the rest "${OTHER_CONTAINERS}"`, async () => {
    const m = new AgentMetrics({ containerSeries: 2 });
    const ids = ['a', 'b', 'c', 'd'].map((c) => c.repeat(64));
    for (const id of [...ids, ids[0]!, ids[3]!]) m.event(from(id, UID));
    m.event(from(null));
    expect(await calls(m)).toEqual([
      `chroot_guard_container_chroot_calls_total{container_runtime="containerd",pod_uid="${UID}",container_id="${ids[0]}"} 2`,
      `chroot_guard_container_chroot_calls_total{container_runtime="containerd",pod_uid="${UID}",container_id="${ids[1]}"} 1`,
      'chroot_guard_container_chroot_calls_total{container_runtime="containerd",pod_uid="other",container_id="other"} 3',
      'chroot_guard_container_chroot_calls_total{container_runtime="none",pod_uid="",container_id=""} 1',
    ]);
  });
});

/** An event to write: every field set. */
function sample(): ChrootEvent {
  const b = Buffer.from('/');
  return {
    ts: 1n, enterTs: 1n, pid: 1, tid: 1, nsPid: 1, nsTid: 1, ppid: 0, uid: 0, gid: 0, euid: 0, egid: 0, comm: 'x', commBytes: Buffer.from('x'),
    cgroupId: 9n, cgroupPath: `/system.slice/docker-${ID}.scope`, cgroupLookup: 'found', containerRuntime: 'docker', containerId: ID, podUid: null,
    mntNs: 1, pidNs: 1, userNs: 1, exeDev: 0, exeIno: 0n, exeUnknown: true, exe: null, exeBytes: null, exeTruncated: false, exeUnreachable: false, exeDeleted: false, exeMemfd: false,
    parentComm: '', parentCommBytes: Buffer.alloc(0), parentExe: null, parentExeBytes: null, parentExeTruncated: false, parentExeUnreachable: false, parentExeDeleted: false, parentExeMemfd: false,
    path: '/', pathBytes: b, pathTruncated: false, pathUnreadable: false, pathReadLate: false,
    resolvedPath: '/', resolvedPathBytes: b, resolvedPathTruncated: false, resolvedPathUnreachable: false, callerChrooted: false, escapesRoot: false, cwdOutsideRoot: false,
    ret: 0, errno: null, lsmRet: null, probe: 'tracepoint',
  };
}

const mount = process.getuid?.() === 0 ? cgroup2Mount() : null;
const why = process.getuid?.() !== 0 ? 'needs root (cgroups, chroot, BPF)' : 'no cgroup2 file system is mounted here';
const top = `/chroot-guard-test-${process.pid}`;
/** Every cgroup made, deepest last (removed in reverse). */
const made: string[] = [];

function makeCgroup(path: string): string {
  let at = '';
  for (const part of path.split('/').filter(Boolean)) {
    at += `/${part}`;
    if (!made.includes(at)) {
      mkdirSync(`${mount}${at}`);
      made.push(at);
    }
  }
  return at;
}

/**
 * A process that moves itself into the cgroup `path`, then chroots to `/`
 * (a shell that execs chroot(8): one pid, and light enough for the VM's
 * emulated CPUs); its pid.
 */
function chrootFrom(path: string): number {
  const r = spawnSync('sh', ['-c', 'echo 0 > "$1/cgroup.procs" && exec chroot / true', 'sh', `${mount}${path}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`chroot from ${path}: ${r.stderr}`);
  return r.pid!;
}

/** The real calls' time limit: under the VM's emulation a process start takes seconds. */
const SLOW = 300_000;

/** rmdir of the cgroup `path` (under the mount). */
const removeCgroup = (path: string): void => removeCgroupDir(`${mount}${path}`);

afterAll(() => {
  for (const c of made.reverse()) {
    try {
      removeCgroup(c);
    } catch {
      // already removed by the test
    }
  }
});

describe.skipIf(mount === null)(`real chroot calls from cgroups named like each runtime's (${mount ?? why})`, { timeout: SLOW }, () => {
  if (mount === null) console.log(`skipped: ${why}`);

  it('each event carries its cgroup path, container id, runtime and pod uid', async () => {
    const rec = await record();
    try {
      const cases = LAYOUTS.filter(([p]) => p !== '/').map(([p, runtime, id, uid]) => ({ path: makeCgroup(top + p), runtime, id, uid }));
      const pids = cases.map((c) => chrootFrom(c.path));
      await rec.until(() => pids.every((pid) => rec.of(pid).length === 1), SLOW);
      cases.forEach((c, i) => {
        const e = rec.of(pids[i]!)[0]!;
        expect(e.errno).toBeNull();
        expect(e.cgroupId).toBe(BigInt(statSync(`${mount}${c.path}`).ino));
        expect({ path: e.cgroupPath, lookup: e.cgroupLookup, runtime: e.containerRuntime, id: e.containerId, uid: e.podUid }).toEqual({ path: c.path, lookup: 'found', runtime: c.runtime, id: c.id, uid: c.uid });
      });
    } finally {
      rec.stop();
    }
  });

  it('says "removed" for a cgroup removed after the call and before its event was decoded', async () => {
    const rec = await record();
    try {
      const path = makeCgroup(`${top}/system.slice/docker-${'0badc0de'.repeat(8)}.scope`);
      const id = BigInt(statSync(`${mount}${path}`).ino);
      // The call and the rmdir in one synchronous run: events are decoded
      // (and their cgroups looked up) on this thread, so only after it.
      const pid = chrootFrom(path);
      removeCgroup(path);
      made.splice(made.indexOf(path), 1);
      await rec.until(() => rec.of(pid).length === 1, SLOW);
      expect(rec.of(pid)[0]).toMatchObject({ cgroupId: id, cgroupPath: null, cgroupLookup: 'removed', containerRuntime: null, containerId: null, podUid: null });
    } finally {
      rec.stop();
    }
  });

  it('looks each id up once, keeps the CGROUP_CACHE_ENTRIES used last, and makes no syscall for a cached id', () => {
    const path = makeCgroup(`${top}/docker/${ID}`);
    const id = BigInt(statSync(`${mount}${path}`).ino);
    clearCgroupCache();
    const time = (n: number, f: (i: number) => unknown) => {
      const t = process.hrtime.bigint();
      for (let i = 0; i < n; i++) f(i);
      return Number(process.hrtime.bigint() - t) / n;
    };
    const lookup = time(2000, () => lookUpCgroup(id));
    const removed = time(2000, (i) => lookUpCgroup(2n ** 50n + BigInt(i)));
    const found = { cgroupPath: path, cgroupLookup: 'found', containerRuntime: 'docker', containerId: ID, podUid: null };
    expect(cgroupAttribution(id)).toEqual(found);
    const same = time(1_000_000, () => cgroupAttribution(id));
    expect(cgroupAttribution(1n).cgroupPath).toBe('/');
    const alternating = time(1_000_000, (i) => cgroupAttribution(i & 1 ? 1n : id));
    console.log(`cgroup lookup: ${(lookup / 1000).toFixed(1)} µs per existing cgroup, ${(removed / 1000).toFixed(1)} µs per removed one; cached: ${same.toFixed(0)} ns (same id), ${alternating.toFixed(0)} ns (two ids in turn)`);
    // Once removed, the cgroup cannot be looked up: answers that still name it come from the cache.
    removeCgroup(path);
    made.splice(made.indexOf(path), 1);
    expect(lookUpCgroup(id).cgroupLookup).toBe('removed');
    expect(cgroupAttribution(1n).cgroupPath).toBe('/');
    expect(cgroupAttribution(id)).toEqual(found);
    // Used recently, it stays while other ids fill the cache ...
    for (let i = 0; i < CGROUP_CACHE_ENTRIES + 100; i++) {
      cgroupAttribution(2n ** 51n + BigInt(i));
      if (i % 1000 === 0) expect(cgroupAttribution(id)).toEqual(found);
    }
    expect(cgroupCacheSize()).toBe(CGROUP_CACHE_ENTRIES);
    expect(cgroupAttribution(id)).toEqual(found);
    // ... and once the least recently used, it goes first, and is looked up again.
    for (let i = 0; i < CGROUP_CACHE_ENTRIES; i++) cgroupAttribution(2n ** 52n + BigInt(i));
    expect(cgroupCacheSize()).toBe(CGROUP_CACHE_ENTRIES);
    expect(cgroupAttribution(id)).toMatchObject({ cgroupPath: null, cgroupLookup: 'removed' });
    clearCgroupCache();
  });
});

/**
 * The deploy examples (examples/systemd/, examples/kubernetes/,
 * examples/Containerfile) against the tools that judge them and against
 * each other: `systemd-analyze verify` on the unit; `kubernetes-validate
 * --strict` (from `cargo xtask setup`'s .cache/venv) on every manifest for
 * Kubernetes 1.30 (the first with securityContext.appArmorProfile) and 1.37
 * (the newest schema it ships); the ConfigMap's agent config through
 * `agent --check-config`; its metrics port against the container's port,
 * probes and Service; the agent run with exactly the capabilities the unit
 * and the DaemonSet grant, its system calls and socket families within the
 * unit's filters; the Containerfile's RUN on the tarballs it copies, then
 * its ENTRYPOINT. Host only (test/QUARANTINE.md): the install needs the npm
 * registry.
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync, symlinkSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cgroup2Mount, removeCgroupDir } from './helpers.js';
import { freePort } from './http.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const KUBERNETES_VALIDATE = join(ROOT, '.cache/venv/bin/kubernetes-validate');
const K8S_DIR = join(ROOT, 'examples/kubernetes');
const UNIT = join(ROOT, 'examples/systemd/chroot-guard-agent.service');
const CONTAINERFILE = join(ROOT, 'examples/Containerfile');
const PACKED = join(ROOT, 'npm-pack');
/** The Kubernetes versions the manifests must be valid for (see the file comment). */
const K8S_VERSIONS = ['1.30.0', '1.37.0'];
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; engines: { node: string } };

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'cg-deploy-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// ---- readers for the three formats ----------------------------------------

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** Every document of every YAML file in examples/kubernetes/, with its file. */
function manifests(): { file: string; doc: Obj }[] {
  return readdirSync(K8S_DIR)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) =>
      parseAllDocuments(readFileSync(join(K8S_DIR, f), 'utf8')).map((d) => {
        if (d.errors.length) throw new Error(`${f}: ${d.errors[0]!.message}`);
        return { file: f, doc: d.toJS() as Obj };
      }),
    );
}
const find = (kind: string) => {
  const all = manifests().filter((m) => m.doc.kind === kind);
  expect(all, `one ${kind} in examples/kubernetes/`).toHaveLength(1);
  return all[0]!.doc;
};

/** A unit file's `[Section]` → key → values (a key may repeat). */
function readUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1]!, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) throw new Error(`unit line outside a section or without "=": ${line}`);
    const key = line.slice(0, eq);
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1)]);
  }
  return sections;
}
const unit = () => readUnit(readFileSync(UNIT, 'utf8'));
const unitValues = (key: string) => unit().get('Service')?.get(key) ?? [];

/** A Containerfile's instructions, continuation lines joined, `${ARG}` not yet substituted. */
function readContainerfile(): { op: string; args: string }[] {
  const joined = readFileSync(CONTAINERFILE, 'utf8')
    .split('\n')
    .filter((l) => !l.trimStart().startsWith('#'))
    .join('\n')
    .replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const sp = l.indexOf(' ');
      return { op: l.slice(0, sp).toUpperCase(), args: l.slice(sp + 1).trim() };
    });
}
function containerfile() {
  const ins = readContainerfile();
  const args = new Map(ins.filter((i) => i.op === 'ARG').map((i) => i.args.split('=') as [string, string]));
  const sub = (s: string) => s.replace(/\$\{(\w+)\}/g, (_, k: string) => args.get(k) ?? `\${${k}}`);
  const one = (op: string) => {
    const all = ins.filter((i) => i.op === op);
    expect(all, `one ${op} in the Containerfile`).toHaveLength(1);
    return sub(all[0]!.args);
  };
  const copy = one('COPY').split(/\s+/);
  return {
    args,
    from: one('FROM'),
    copySources: copy.slice(0, -1),
    copyDest: copy.at(-1)!,
    run: one('RUN'),
    entrypoint: JSON.parse(one('ENTRYPOINT')) as string[],
    cmd: JSON.parse(one('CMD')) as string[],
  };
}

/** The arguments of the `docker run` in the Containerfile's header comment, quotes removed. */
function dockerRunArgs(): string[] {
  const header = readFileSync(CONTAINERFILE, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('#'))
    .map((l) => l.replace(/^# ?/, ''))
    .join('\n')
    .replace(/\\\n/g, ' ');
  const runs = header.split('\n').filter((l) => /^\s*docker run /.test(l));
  expect(runs, 'one `docker run` in the Containerfile\'s comments').toHaveLength(1);
  return [...runs[0]!.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]!).slice(2);
}

/** Writes the ConfigMap's agent config to a file; returns its path and text. */
function configMapConfig(): { file: string; text: string; key: string } {
  const cm = find('ConfigMap');
  const keys = Object.keys(cm.data ?? {});
  expect(keys).toHaveLength(1);
  const key = keys[0]!;
  const file = join(dir, key);
  writeFileSync(file, cm.data[key]);
  return { file, text: cm.data[key], key };
}

/** The DaemonSet's one container. */
function agentContainer(): Obj {
  const containers = find('DaemonSet').spec.template.spec.containers as Obj[];
  expect(containers).toHaveLength(1);
  return containers[0]!;
}

/** The port a probe or Service names: a number, or a container port's name. */
function resolvePort(container: Obj, port: number | string): number {
  if (typeof port === 'number') return port;
  const p = (container.ports as Obj[]).find((x) => x.name === port);
  if (!p) throw new Error(`no container port named ${port}`);
  return p.containerPort as number;
}

// ---- Kubernetes ------------------------------------------------------------

describe('examples/kubernetes/', () => {
  beforeAll(() => {
    if (!existsSync(KUBERNETES_VALIDATE)) throw new Error(`no ${KUBERNETES_VALIDATE}: run \`cargo xtask setup\` (it installs kubernetes-validate into .cache/venv)`);
  });

  /** Runs kubernetes-validate --strict on `file` for `version`: exit status and output lines. */
  const validate = (file: string, version: string) => {
    const r = spawnSync(KUBERNETES_VALIDATE, ['--strict', '-k', version, file], { encoding: 'utf8' });
    return { status: r.status, lines: `${r.stdout}${r.stderr}`.split('\n').filter(Boolean) };
  };

  for (const version of K8S_VERSIONS) {
    it(`every manifest passes kubernetes-validate --strict for Kubernetes ${version}`, () => {
      const files = readdirSync(K8S_DIR).filter((f) => f.endsWith('.yaml'));
      expect(files).toEqual(expect.arrayContaining(['daemonset.yaml', 'servicemonitor.yaml']));
      for (const f of files) {
        const { status, lines } = validate(join(K8S_DIR, f), version);
        expect(status, lines.join('\n')).toBe(0);
        for (const line of lines) {
          // Passed, or a custom resource (a group outside *.k8s.io), which
          // it has no schema for: the ServiceMonitor, checked below instead.
          const crd = /^WARN .* Couldn't find schema for kind \w+ with api version ([\w.-]+)\/\w+ /.exec(line);
          if (crd) expect(crd[1], line).not.toMatch(/(^|\.)k8s\.io$|^apps$|^v1$/);
          else expect(line).toMatch(/^INFO .* passed for resource /);
        }
      }
      const docs = manifests().filter((m) => !m.doc.apiVersion.includes('.') || m.doc.apiVersion.includes('k8s.io'));
      expect(docs.map((m) => m.doc.kind).sort()).toEqual(['ConfigMap', 'DaemonSet', 'Namespace', 'Service', 'ServiceAccount']);
    });
  }

  it('the validator rejects a field the schema does not have (it is strict)', () => {
    const broken = join(dir, 'broken.yaml');
    writeFileSync(broken, readFileSync(join(K8S_DIR, 'daemonset.yaml'), 'utf8').replace('hostPID: true', 'hostPID: true\n      hostPIDs: true'));
    const { status, lines } = validate(broken, K8S_VERSIONS[0]!);
    expect(status).not.toBe(0);
    expect(lines.join('\n')).toMatch(/'hostPIDs' was unexpected/);
  });

  it("the ConfigMap's agent config passes `agent --check-config`", () => {
    const { file } = configMapConfig();
    const r = spawnSync(process.execPath, [CLI, 'agent', '--check-config', '--config', file], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${file}: ok\n`);
  });

  // The kubelet's layout of a ConfigMap volume (its atomic writer): the
  // keys are links into a timestamped directory through `..data`, all root's,
  // in a directory writable by all. The agent refuses a config there unless
  // the directory is sticky (then only root's entries are used); mounted by
  // subPath, the file sits in a directory the runtime made (0755).
  it('the config as a ConfigMap volume lays it out: refused in a 0777 directory, read in a 1777 one and by subPath', () => {
    const { text, key } = configMapConfig();
    const check = (file: string) => spawnSync(process.execPath, [CLI, 'agent', '--check-config', '--config', file], { encoding: 'utf8' });
    for (const mode of [0o777, 0o1777]) {
      const volume = join(dir, `configmap-${mode.toString(8)}`);
      const data = join(volume, '..2026_12_02_00_00_00.123456789');
      mkdirSync(data, { recursive: true });
      writeFileSync(join(data, key), text, { mode: 0o644 });
      symlinkSync(basename(data), join(volume, '..data'));
      symlinkSync(`..data/${key}`, join(volume, key));
      chmodSync(volume, mode);
      const r = check(join(volume, key));
      if (mode === 0o777) {
        expect(r.status).toBe(2);
        expect(r.stderr).toContain(`${volume} (a directory, owner uid 0, gid 0, mode 0777) is writable by its group and others: chmod go-w ${volume}`);
        expect(r.stderr).toContain('INVALID_CONFIG');
      } else {
        expect(r.stderr).toBe('');
        expect(r.status).toBe(0);
      }
    }
    const subPath = join(dir, 'subpath', 'etc', 'chroot-guard');
    mkdirSync(subPath, { recursive: true, mode: 0o755 });
    writeFileSync(join(subPath, key), text, { mode: 0o644 });
    const r = check(join(subPath, key));
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it("the container runs that config, and its port, probes and Service are the config's metrics port", async () => {
    const { text, key } = configMapConfig();
    const { parse } = await import('yaml');
    const config = parse(text) as { metrics?: { listen: string }; output?: { path?: string } };
    const listen = /^(.*):(\d+)$/.exec(config.metrics!.listen)!;
    const [host, port] = [listen[1]!, Number(listen[2])];
    // The kubelet probes, and Prometheus scrapes, the pod's address.
    expect(['0.0.0.0', '[::]']).toContain(host);

    const ds = find('DaemonSet');
    const pod = ds.spec.template.spec as Obj;
    const c = agentContainer();
    // --config names the ConfigMap's key where its volume is mounted.
    const cm = find('ConfigMap');
    const volume = (pod.volumes as Obj[]).find((v) => v.configMap?.name === cm.metadata.name)!;
    const mount = (c.volumeMounts as Obj[]).find((m) => m.name === volume.name)!;
    // The key alone (subPath), not the volume's world-writable directory.
    expect(mount).toMatchObject({ subPath: key, readOnly: true });
    expect(c.args).toEqual(['agent', '--config', mount.mountPath]);
    // The image's default command is the same.
    expect(containerfile().cmd).toEqual(c.args);

    const metricsPort = (c.ports as Obj[]).find((p) => p.name === 'metrics')!;
    expect(metricsPort.containerPort).toBe(port);
    for (const probe of [c.livenessProbe, c.readinessProbe] as Obj[]) {
      expect(probe.httpGet.path).toBe('/healthz');
      expect(resolvePort(c, probe.httpGet.port)).toBe(port);
    }
    const svc = find('Service');
    expect(svc.spec.clusterIP).toBe('None');
    expect(svc.metadata.namespace).toBe(ds.metadata.namespace);
    expect(ds.spec.template.metadata.labels).toMatchObject(svc.spec.selector);
    const svcPort = (svc.spec.ports as Obj[]).find((p) => p.name === 'metrics')!;
    expect(resolvePort(c, svcPort.targetPort)).toBe(port);

    // The ServiceMonitor selects that Service and scrapes that port.
    const sm = find('ServiceMonitor');
    expect(svc.metadata.labels).toMatchObject(sm.spec.selector.matchLabels);
    expect(sm.spec.namespaceSelector.matchNames).toContain(svc.metadata.namespace);
    expect(sm.spec.endpoints.map((e: Obj) => e.port)).toEqual(['metrics']);

    // Each host file system is mounted where the loader looks for it.
    for (const m of c.volumeMounts as Obj[]) {
      const v = (pod.volumes as Obj[]).find((x) => x.name === m.name);
      expect(v, `volume ${m.name}`).toBeDefined();
      if (v!.hostPath) expect(m.mountPath).toBe(v!.hostPath.path);
    }
    expect(pod.hostPID).toBe(true);
    expect(pod.serviceAccountName).toBe(find('ServiceAccount').metadata.name);
    // The image is this version's.
    expect(c.image.split(':').at(-1)).toBe(PKG.version);
  });
});

// ---- systemd ---------------------------------------------------------------

describe('examples/systemd/chroot-guard-agent.service', () => {
  /**
   * A root for `systemd-analyze verify --root`: the machine's unit files
   * (the unit's dependencies), the unit in /etc/systemd/system and an
   * executable at its ExecStart path (verify checks that it exists).
   */
  function verifyRoot(unitText: string): string {
    const root = mkdtempSync(join(dir, 'root-'));
    cpSync('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
    mkdirSync(join(root, 'etc/systemd/system'), { recursive: true });
    writeFileSync(join(root, 'etc/systemd/system', basename(UNIT)), unitText);
    const exec = readUnit(unitText).get('Service')!.get('ExecStart')![0]!.split(' ')[0]!;
    mkdirSync(join(root, dirname(exec)), { recursive: true });
    writeFileSync(join(root, exec), '#!/bin/sh\n');
    chmodSync(join(root, exec), 0o755);
    return root;
  }
  const verify = (unitText: string) =>
    spawnSync('systemd-analyze', ['verify', `--root=${verifyRoot(unitText)}`, basename(UNIT)], { encoding: 'utf8' });

  it('passes systemd-analyze verify with nothing to say', () => {
    const r = verify(readFileSync(UNIT, 'utf8'));
    // Unknown keys and bad values are warnings with exit status 0: the
    // output must be empty too.
    expect(`${r.stdout}${r.stderr}`).toBe('');
    expect(r.status).toBe(0);
  });

  it('and systemd-analyze does speak up about a bad line', () => {
    const r = verify(readFileSync(UNIT, 'utf8').replace('ProtectHome=yes', 'ProtectHome=yes\nProtectHomes=yes'));
    expect(r.stderr).toMatch(/Unknown key 'ProtectHomes'/);
  });

  it('runs the command line the image and the DaemonSet run', () => {
    const [exec, ...args] = unitValues('ExecStart')[0]!.split(' ');
    expect(basename(exec!)).toBe(containerfile().entrypoint[0]);
    expect(args).toEqual(containerfile().cmd);
    expect(unitValues('MemoryDenyWriteExecute')).toEqual([]);
  });
});

// ---- the granted capabilities and filters, for real -------------------------

const httpStatus = (url: string) =>
  new Promise<number>((resolve, reject) => get(url, (res) => (res.resume(), resolve(res.statusCode!))).once('error', reject));

/** The system calls of `@group` (or a name), nested groups expanded, from systemd-analyze. */
function syscallSet(entry: string, seen = new Set<string>()): Set<string> {
  if (!entry.startsWith('@')) return new Set([entry]);
  if (seen.has(entry)) return new Set();
  seen.add(entry);
  const r = spawnSync('systemd-analyze', ['syscall-filter', entry], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const out = new Set<string>();
  for (const line of r.stdout.split('\n').slice(1)) {
    const name = line.trim();
    if (!name || name.startsWith('#')) continue;
    for (const s of syscallSet(name, seen)) out.add(s);
  }
  return out;
}

/** A chroot(2) record of the agent's stdout, the fields this file reads. */
interface ChrootLine { type: string; pid: number; cgroupLookup?: string; containerRuntime?: string | null; containerId?: string | null }

const CG_MOUNT = process.getuid?.() === 0 ? cgroup2Mount() : null;
/** A Docker container's id, for the cgroup the attributed call is made from. */
const CONTAINER_ID = 'c0ffee'.padEnd(64, '0');

/**
 * A shell that moves itself into a cgroup named as Docker's systemd driver
 * names a container's (`docker-ID.scope`, made under the cgroup2 mount),
 * then execs chroot(8): its pid, and the cgroup's removal, for once the
 * call's record was read (the agent looks the cgroup up when it decodes the
 * event: one removed before reads `removed`).
 */
function chrootFromContainer(): { pid: number; remove: () => void } {
  const cg = `${CG_MOUNT}/chroot-guard-deploy-${process.pid}/docker-${CONTAINER_ID}.scope`;
  mkdirSync(cg, { recursive: true });
  const remove = () => {
    for (const d of [cg, dirname(cg)]) removeCgroupDir(d);
  };
  const r = spawnSync('sh', ['-c', 'echo 0 > "$1/cgroup.procs" && exec chroot / true', 'sh', cg], { encoding: 'utf8' });
  if (r.status !== 0) {
    remove();
    throw new Error(`chroot from ${cg}: ${r.stderr}`);
  }
  return { pid: r.pid!, remove };
}

/**
 * Runs the agent (the ConfigMap's config, listening on a free loopback port)
 * as root with only `caps` and no_new_privs, as the unit and the pod run it,
 * under strace when `trace` names a file. Once /healthz answered, makes a
 * chroot from a Docker-named cgroup (where there is a cgroup2 mount) and
 * waits for its record. Resolves with the exit code after a SIGTERM (or its
 * own exit), the health status and that record.
 */
async function runWithCaps(caps: string[], trace?: string): Promise<{ code: number | null; health: number | null; stderr: string; call: ChrootLine | null }> {
  const port = await freePort();
  const config = join(dir, `caps-${caps.join('-')}.yaml`);
  writeFileSync(config, configMapConfig().text.replace(/listen: .*/, `listen: "127.0.0.1:${port}"`));
  const agent = [process.execPath, CLI, 'agent', '--config', config];
  const command = ['setpriv', `--bounding-set=-all,${caps.map((c) => `+${c}`).join(',')}`, '--inh-caps=-all', '--no-new-privs', '--', ...(trace ? ['strace', '-f', '-qq', '-o', trace] : []), ...agent];
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  // Its exit code: strace exits with the traced command's.
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let health: number | null = null;
  let call: ChrootLine | null = null;
  const deadline = Date.now() + 60_000;
  while (child.exitCode === null && Date.now() < deadline && !stderr.includes('agent running')) await new Promise((r) => setTimeout(r, 100));
  if (child.exitCode === null && stderr.includes('agent running')) {
    health = await httpStatus(`http://127.0.0.1:${port}/healthz`);
    if (CG_MOUNT) {
      const { pid, remove } = chrootFromContainer();
      try {
        const find = () => stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as ChrootLine).find((r) => r.type === 'chroot' && r.pid === pid) ?? null;
        while (!(call = find()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      } finally {
        remove();
      }
    }
  }
  // Under strace the agent is strace's child, and strace holds off SIGTERM
  // while it traces: the signal goes to the agent, as systemd and the
  // runtime send it.
  const agentPid = trace && child.exitCode === null ? Number(readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(' ')[0]) : child.pid!;
  try {
    process.kill(agentPid, 'SIGTERM');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // it had exited already
  }
  const code = await exited;
  return { code, health, stderr, call };
}

describe('the capabilities and filters the examples grant are what the agent uses', () => {
  /** `CAP_BPF` / `BPF` → setpriv's `bpf`. */
  const capName = (c: string) => c.replace(/^CAP_/, '').toLowerCase();
  const unitCaps = () => unitValues('CapabilityBoundingSet').flatMap((v) => v.split(/\s+/)).map(capName).sort();
  const podCaps = () => (agentContainer().securityContext.capabilities.add as string[]).map(capName).sort();

  it('the unit, the pod and the Containerfile\'s docker run grant the same three, with no_new_privs and a read-only root', () => {
    expect(unitCaps()).toEqual(['bpf', 'dac_read_search', 'perfmon']);
    expect(podCaps()).toEqual(unitCaps());
    const dockerRun = dockerRunArgs().flatMap((a) => /^--cap-add=(\w+)$/.exec(a)?.[1] ?? []).map(capName).sort();
    expect(dockerRun).toEqual(unitCaps());
    const sc = agentContainer().securityContext;
    expect(sc.capabilities.drop).toEqual(['ALL']);
    expect(sc.privileged).toBe(false);
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.readOnlyRootFilesystem).toBe(true);
    // The same hardening in the docker run.
    const run = dockerRunArgs();
    expect(run).toContain('--read-only');
    expect(run.filter((a, i) => run[i - 1] === '--security-opt')).toContain('no-new-privileges');
  });

  it('the Containerfile\'s docker run mounts what the pod mounts from the host, read-only and propagating alike, and the config file at the same path', () => {
    type Mount = { host: string; container: string; readOnly: boolean; propagation: string };
    const byHost = (a: Mount, b: Mount) => a.host.localeCompare(b.host);
    // docker's recursive propagation modes by Kubernetes' names; docker's default, rprivate, is None.
    const propagation: Record<string, string> = { rslave: 'HostToContainer', rshared: 'Bidirectional' };
    const args = dockerRunArgs();
    expect(args.filter((a) => /^--(mount|volume|tmpfs)\b/.test(a)), 'mounts given by -v only').toEqual([]);
    const docker = args.flatMap((a, i) => (a === '-v' ? [args[i + 1]!] : [])).map((v): Mount => {
      const [host, container, opts = ''] = v.split(':');
      const o = opts.split(',').filter(Boolean);
      expect(o.filter((x) => x !== 'ro' && !(x in propagation)), v).toEqual([]);
      return { host: host!, container: container!, readOnly: o.includes('ro'), propagation: propagation[o.find((x) => x in propagation) ?? ''] ?? 'None' };
    });
    const config = docker.filter((m) => m.host === '$PWD/agent.yaml');
    expect(config).toHaveLength(1);

    const pod = find('DaemonSet').spec.template.spec;
    const volumes = new Map((pod.volumes as Obj[]).map((v) => [v.name as string, v]));
    const mounts = agentContainer().volumeMounts as Obj[];
    const k8s = mounts
      .filter((m) => volumes.get(m.name)?.hostPath)
      .map((m): Mount => ({ host: join(volumes.get(m.name)!.hostPath.path, m.subPath ?? ''), container: m.mountPath, readOnly: m.readOnly === true, propagation: m.mountPropagation ?? 'None' }));
    expect(docker.filter((m) => m !== config[0]).sort(byHost)).toEqual(k8s.sort(byHost));
    // The pod's one other mount: the config, a ConfigMap's key by subPath.
    const others = mounts.filter((m) => !volumes.get(m.name)?.hostPath);
    expect(others.map((m) => ({ configMap: !!volumes.get(m.name)?.configMap, container: m.mountPath, readOnly: m.readOnly === true }))).toEqual([{ configMap: true, container: config[0]!.container, readOnly: true }]);
    expect(config[0]!.readOnly).toBe(true);
  });

  it('with only those (and no_new_privs) the agent attaches, is healthy, names a container\'s chroot and stops cleanly; its system calls and socket families are within the unit\'s filters', async () => {
    const trace = join(dir, 'agent.strace');
    const r = await runWithCaps(unitCaps(), trace);
    expect(r.stderr).toMatch(/attached in \w+ mode/);
    expect(r.health).toBe(200);
    if (CG_MOUNT) expect(r.call, r.stderr).toMatchObject({ cgroupLookup: 'found', containerRuntime: 'docker', containerId: CONTAINER_ID });
    else console.log('no cgroup2 mount here: the container attribution under these capabilities is not checked');
    expect(r.code, r.stderr).toBe(0);

    const lines = readFileSync(trace, 'utf8').split('\n');
    const used = new Set(lines.map((l) => /^\d+\s+([a-z_0-9]+)\(/.exec(l)?.[1]).filter((s): s is string => !!s));
    expect(used).toContain('bpf');
    expect(used).toContain('perf_event_open');
    if (CG_MOUNT) expect(used).toContain('open_by_handle_at');
    const allowed = new Set(unitValues('SystemCallFilter').flatMap((v) => v.split(/\s+/)).flatMap((e) => [...syscallSet(e)]));
    expect([...used].filter((s) => !allowed.has(s))).toEqual([]);

    const families = new Set(lines.flatMap((l) => /^\d+\s+socket(?:pair)?\((AF_\w+)/.exec(l)?.[1] ?? []));
    expect(families.size).toBeGreaterThan(0);
    const allowedFamilies = unitValues('RestrictAddressFamilies').flatMap((v) => v.split(/\s+/));
    expect([...families].filter((f) => !allowedFamilies.includes(f))).toEqual([]);
  }, 120_000);

  it('and each is needed: without CAP_BPF or CAP_PERFMON the agent stops with exit 4 (missing privileges); without CAP_DAC_READ_SEARCH it runs, but no container is named', async () => {
    for (const missing of ['bpf', 'perfmon']) {
      const r = await runWithCaps(unitCaps().filter((c) => c !== missing));
      expect(r.code, r.stderr).toBe(4);
      expect(r.stderr).toMatch(new RegExp(`CAP_${missing.toUpperCase()}`));
    }
    const r = await runWithCaps(unitCaps().filter((c) => c !== 'dac_read_search'));
    expect(r.health).toBe(200);
    if (CG_MOUNT) expect(r.call, r.stderr).toMatchObject({ cgroupLookup: 'failed', containerRuntime: null, containerId: null });
    expect(r.code, r.stderr).toBe(0);
  }, 120_000);
});

// ---- the Containerfile -----------------------------------------------------

describe('examples/Containerfile', () => {
  it('copies the tarballs `cargo xtask pack` writes for this version, on a Node.js that meets engines', () => {
    const cf = containerfile();
    expect(cf.args.get('VERSION')).toBe(PKG.version);
    // What pack writes: NAME-VERSION.tgz for the main package and each platform package.
    const platforms = readdirSync(join(ROOT, 'npm')).map((d) => (JSON.parse(readFileSync(join(ROOT, 'npm', d, 'package.json'), 'utf8')) as { name: string }).name);
    const expected = [PKG.name, ...platforms].map((n) => `npm-pack/${n}-${PKG.version}.tgz`);
    expect([...cf.copySources].sort()).toEqual(expected.sort());
    const node = /^node:(\d+)(?:\.(\d+))?[-\w.]*$/.exec(cf.from)!;
    const need = /^>=(\d+)\.(\d+)/.exec(PKG.engines.node)!;
    // A bare major tag is that major's newest release.
    expect(Number(node[1])).toBeGreaterThanOrEqual(Number(need[1]));
    if (node[2] !== undefined && Number(node[1]) === Number(need[1])) expect(Number(node[2])).toBeGreaterThanOrEqual(Number(need[2]));
  });

  it('its RUN installs them, and its ENTRYPOINT runs the installed agent and addon', () => {
    const cf = containerfile();
    for (const src of cf.copySources) {
      if (!existsSync(join(ROOT, src))) throw new Error(`no ${src}: run \`cargo xtask pack\` (cargo xtask test does)`);
    }
    // The image's COPY destination and global prefix, here in a scratch directory.
    const image = mkdtempSync(join(dir, 'image-'));
    const dest = join(image, 'copied');
    mkdirSync(dest);
    for (const src of cf.copySources) cpSync(join(ROOT, src), join(dest, basename(src)));
    const prefix = join(image, 'prefix');
    const env = { ...process.env, HOME: image, npm_config_prefix: prefix, npm_config_cache: join(image, 'npm-cache'), npm_config_update_notifier: 'false' };
    const run = cf.run.split(cf.copyDest.replace(/\/$/, '')).join(dest);
    const install = spawnSync('sh', ['-c', run], { env, encoding: 'utf8', timeout: 300_000 });
    expect(install.status, install.stderr).toBe(0);
    expect(existsSync(dest)).toBe(false); // the RUN removes what it copied

    const bin = join(prefix, 'bin', cf.entrypoint[0]!);
    const { file } = configMapConfig();
    const cmd = cf.cmd.map((a) => (a === cf.cmd.at(-1) ? file : a));
    const check = spawnSync(bin, [...cf.entrypoint.slice(1), ...cmd, '--check-config'], { env, encoding: 'utf8' });
    expect(check.stderr).toBe('');
    expect(check.stdout).toBe(`${file}: ok\n`);
    // doctor loads the addon from the platform package, and the kernel programs.
    const doctor = spawnSync(bin, [...cf.entrypoint.slice(1), 'doctor', '--json'], { env, encoding: 'utf8', timeout: 120_000 });
    expect(doctor.status, doctor.stderr).toBe(0);
    expect((JSON.parse(doctor.stdout) as { auto: string | null }).auto).not.toBeNull();
  }, 400_000);
});

/**
 * The published packages work with no Rust toolchain: the tarballs written
 * by `cargo xtask pack` (npm-pack/) are installed into an empty project
 * with a PATH that holds node and npm but no cargo, rustc or bpf-linker,
 * then used as users would: the main package and the platform package of
 * this machine's architecture, as npm picks from `optionalDependencies`
 * (the other architecture's package refuses to install here: its `cpu`
 * names another).
 *
 * On the host (x86-64) npm also installs, for each other architecture
 * (`--cpu`, as a build machine preparing another's image would), the main
 * package and that architecture's platform package (an optional
 * dependency, which npm installs only for its `cpu`) into
 * `target/install/<arch>/`. The guest of that architecture (`cargo xtask
 * test --vm-kernel 6.1/arm64`) has no network and no npm, so it runs this
 * file against that install: the same tests of an installed package,
 * after checking its addon is the one packed.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const PACKED = fileURLToPath(new URL('../npm-pack/', import.meta.url));
const DIST = fileURLToPath(new URL('../dist/', import.meta.url));
/** Installs for the other architectures' guests, by npm's `cpu` name. */
const INSTALLS = fileURLToPath(new URL('../target/install/', import.meta.url));
/** In a guest of `cargo xtask vm` (no network, no npm). */
const IN_VM = process.env.CG_VM === '1';
/** How many times slower than x86-64 on its own the guest runs (`cargo xtask test` sets it). */
const SLOWDOWN = Number(process.env.CG_TEST_SLOWDOWN ?? '1');
const which = (cmd: string, path: string) => spawnSync('sh', ['-c', `command -v ${cmd}`], { env: { PATH: path }, encoding: 'utf8' }).stdout.trim();
/** The platform packages `cargo xtask pack` makes, one per napi target. */
const PLATFORMS = readdirSync(fileURLToPath(new URL('../npm/', import.meta.url))).map(
  (d) => JSON.parse(readFileSync(fileURLToPath(new URL(`../npm/${d}/package.json`, import.meta.url)), 'utf8')) as { name: string; cpu: string[] },
);
const MAIN_TGZ = 'chroot-guard-0.1.0.tgz';
const platformTgz = (arch: string) => `chroot-guard-linux-${arch}-gnu-0.1.0.tgz`;
const addonIn = (arch: string) => `chroot-guard.linux-${arch}-gnu.node`;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let project: string;
let env: NodeJS.ProcessEnv;

beforeAll(() => {
  const tarballs = existsSync(PACKED) ? readdirSync(PACKED).filter((f) => f.endsWith('.tgz')) : [];
  const mine = [MAIN_TGZ, platformTgz(process.arch)];
  const missing = mine.filter((t) => !tarballs.includes(t));
  if (missing.length) throw new Error(`no ${missing.join(', ')} in ${PACKED}: run \`cargo xtask pack\` (cargo xtask test does)`);
  project = mkdtempSync(join(tmpdir(), 'chroot-guard-install-'));
  // A PATH with node, npm (not in the guest), a shell and chroot, and no Rust toolchain.
  const bin = join(project, '.bin');
  mkdirSync(bin);
  // Found on PATH by hand: busybox's `command -v` names its own applets
  // without a directory (the guest's chroot, sh, ...).
  const dirs = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const tool of [...(IN_VM ? [] : ['npm']), 'node', 'npx', 'sh', 'env', 'chroot', 'true', 'cat', 'ls', 'uname']) {
    const found = dirs.map((d) => join(d, tool)).find((f) => existsSync(f));
    if (!found) throw new Error(`${tool} is not on PATH (${process.env.PATH})`);
    symlinkSync(found, join(bin, tool));
  }
  env = { HOME: project, PATH: bin, npm_config_cache: join(project, '.npm'), npm_config_update_notifier: 'false' };
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'install-test', private: true }));
  if (!IN_VM) {
    execFileSync('npm', ['install', '--no-audit', '--no-fund', ...mine.map((t) => join(PACKED, t))], { cwd: project, env, stdio: 'inherit' });
    return;
  }
  // The repository is read-only in the guest: the scripts go in a project
  // of their own whose node_modules is the host's install for this
  // architecture, which must hold the addon packed now, not an older one.
  const installed = join(INSTALLS, process.arch, 'node_modules');
  if (!existsSync(installed)) {
    throw new Error(`no ${installed}: the host's run of test/package.test.ts installs it (npm install --cpu=${process.arch}); run \`cargo xtask test --host-only test/package.test.ts\` first`);
  }
  const packedAddon = execFileSync('tar', ['xzOf', join(PACKED, platformTgz(process.arch)), `package/${addonIn(process.arch)}`], { maxBuffer: 64 << 20 });
  const installedAddon = readFileSync(join(installed, `chroot-guard-linux-${process.arch}-gnu`, addonIn(process.arch)));
  if (sha256(packedAddon) !== sha256(installedAddon)) {
    throw new Error(`${installed} holds an older build than ${PACKED}: run \`cargo xtask test --host-only test/package.test.ts\` again`);
  }
  symlinkSync(installed, join(project, 'node_modules'));
}, 300_000);
afterAll(() => project && rmSync(project, { recursive: true, force: true }));

describe('installed from the packed tarballs, without a Rust toolchain', () => {
  it('the install PATH has no cargo, rustc or bpf-linker', () => {
    for (const tool of ['cargo', 'rustc', 'bpf-linker']) expect(which(tool, env.PATH!)).toBe('');
    expect(which('node', env.PATH!)).not.toBe('');
    expect(readdirSync(join(project, 'node_modules'))).toEqual(expect.arrayContaining(['chroot-guard', `chroot-guard-linux-${process.arch}-gnu`]));
  });

  it('npx chroot-guard doctor works', () => {
    const r = spawnSync('npx', ['--no-install', 'chroot-guard', 'doctor', '--json'], { cwd: project, env, encoding: 'utf8', timeout: 60_000 * SLOWDOWN });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect((JSON.parse(r.stdout) as { auto: string | null }).auto).not.toBeNull();
  });

  const scripts: Record<string, [file: string, code: string]> = {
    ESM: [
      'watch.mjs',
      `import { chrootWatch } from 'chroot-guard';
import { spawn } from 'node:child_process';
const sub = chrootWatch({ onAttach: () => spawn('chroot', ['/', 'true']) }).subscribe((e) => { console.log(e.comm, e.path, e.errno ?? 'ok'); sub.unsubscribe(); });`,
    ],
    CommonJS: [
      'watch.cjs',
      `const { chrootWatch } = require('chroot-guard');
const { spawn } = require('node:child_process');
const sub = chrootWatch({ onAttach: () => spawn('chroot', ['/', 'true']) }).subscribe((e) => { console.log(e.comm, e.path, e.errno ?? 'ok'); sub.unsubscribe(); });`,
    ],
  };
  for (const [kind, [file, code]] of Object.entries(scripts)) {
    it(`a three-line ${kind} script receives the event of a child's chroot`, () => {
      expect(code.split('\n')).toHaveLength(3);
      writeFileSync(join(project, file), code);
      const r = spawnSync('node', [file], { cwd: project, env, encoding: 'utf8', timeout: 30_000 * SLOWDOWN });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout.trim()).toBe('chroot / ok');
    });
  }

  it('ships declarations for both entry points', () => {
    const files = readdirSync(join(project, 'node_modules/chroot-guard/dist'));
    expect(files).toEqual(expect.arrayContaining(['index.d.ts', 'index.d.cts', 'index.js', 'index.cjs', 'cli.js']));
  });

  it('names the platform and the supported list on an unsupported platform', () => {
    for (const [prop, value, seen] of [
      ['platform', 'darwin', `darwin-${process.arch}`],
      ['platform', 'win32', `win32-${process.arch}`],
      ['arch', 'riscv64', 'linux-riscv64-gnu'],
    ] as const) {
      const code = `Object.defineProperty(process, '${prop}', { value: '${value}' });
require('chroot-guard').chrootWatch().subscribe({ error: (e) => console.log(e.code, e.message) });`;
      const r = spawnSync('node', ['-e', code], { cwd: project, env, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('NATIVE_UNAVAILABLE');
      expect(r.stdout).toContain(seen);
      expect(r.stdout).toContain('prebuilt binaries: linux-x64-gnu, linux-arm64-gnu');
      if (prop === 'platform') expect(r.stdout).toContain('chroot-guard needs Linux');
    }
  });
});

// What the host checks of the tarballs themselves; the guest's tools
// (busybox's tar, no npm) cannot, and the tarballs are the same files there.
describe.runIf(!IN_VM)('the tarballs', () => {
  const list = (tgz: string) => execFileSync('tar', ['tzf', join(PACKED, tgz)], { encoding: 'utf8' }).trim().split('\n').sort();

  it('hold only what is meant to ship: no sources, tests, maps, or build leftovers', () => {
    const packed = list('chroot-guard-0.1.0.tgz');
    // The CLI's chunks (dist/cli-NAME-HASH.js): those of this build, none left from an older one.
    const chunks = packed.filter((f) => /^package\/dist\/cli-[a-z]+-[A-Z0-9]+\.js$/.test(f));
    const built = readdirSync(DIST).filter((f) => /^cli-.*\.js$/.test(f));
    expect(built.length).toBeGreaterThan(0);
    expect(chunks.sort()).toEqual(built.map((f) => `package/dist/${f}`).sort());
    expect(packed.filter((f) => !chunks.includes(f))).toEqual(
      [
        'package/README.md',
        'package/dist/cli.js',
        'package/dist/index.cjs',
        'package/dist/index.d.cts',
        'package/dist/index.d.ts',
        'package/dist/index.js',
        'package/dist/native/binding.cjs',
        'package/examples/build-farm.yaml',
        'package/examples/agent.yaml',
        'package/examples/no-escape.yaml',
        'package/package.json',
        'package/policy.schema.json',
        'package/events.schema.json',
        'package/agent.schema.json',
      ].sort(),
    );
  });

  it('each platform package holds an addon for its own architecture, with that architecture\'s eBPF object inside', () => {
    expect(PLATFORMS.map((p) => p.cpu[0]).sort()).toEqual(['arm64', 'x64']);
    // ELF e_machine (bytes 18-19, little-endian), and the directory of the
    // eBPF object built for it (target/ebpf/<Rust target_arch>/).
    const elf = { x64: [62, 'x86_64'], arm64: [183, 'aarch64'] } as const;
    for (const { name, cpu } of PLATFORMS) {
      const arch = cpu[0] as keyof typeof elf;
      const [machine, targetArch] = elf[arch];
      const tgz = join(PACKED, `${name}-0.1.0.tgz`);
      expect(list(`${name}-0.1.0.tgz`)).toEqual(['package/README.md', `package/chroot-guard.linux-${arch}-gnu.node`, 'package/package.json']);
      const node = execFileSync('tar', ['xzOf', tgz, `package/chroot-guard.linux-${arch}-gnu.node`], { maxBuffer: 64 << 20 });
      expect(node.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
      expect(node.readUInt16LE(18), name).toBe(machine);
      const meta = JSON.parse(execFileSync('tar', ['xzOf', tgz, 'package/package.json'], { encoding: 'utf8' })) as { cpu: string[]; os: string[] };
      expect(meta).toMatchObject({ cpu: [arch], os: ['linux'] });
      // The addon carries the SHA-256 of the objects it embeds, the object
      // then the legacy object (crates/loader/build.rs): the ones built for
      // its architecture, in which aya-ebpf reads kprobe pt_regs at that
      // architecture's offsets.
      const object = (dir: string) => readFileSync(fileURLToPath(new URL(`../target/ebpf/${dir}/bpfel-unknown-none/release/chroot-guard-ebpf`, import.meta.url)));
      const both = Buffer.concat([object(targetArch), object(`${targetArch}-legacy`)]);
      expect(node.includes(sha256(both)), `${name} embeds target/ebpf/${targetArch}'s objects`).toBe(true);
    }
  });

  it('pass npm publish --dry-run', () => {
    for (const tgz of readdirSync(PACKED).filter((f) => f.endsWith('.tgz'))) {
      const r = spawnSync('npm', ['publish', '--dry-run', '--tag', 'dry-run', join(PACKED, tgz)], { encoding: 'utf8' });
      expect(r.status, `${tgz}: ${r.stderr}`).toBe(0);
    }
  });
});


// The install the other architectures' guests run (see the top).
describe.runIf(!IN_VM)('installed for another architecture', () => {
  for (const { name, cpu } of PLATFORMS.filter((p) => p.cpu[0] !== process.arch)) {
    const arch = cpu.join();
    it(`npm install --cpu=${arch} picks ${name}, whose addon does not load here`, () => {
      const dir = join(INSTALLS, arch);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      // The platform package as an optional dependency, as the main
      // package names it: npm installs it only for a matching `cpu`, here
      // the one `--cpu` sets (given as a file, npm would refuse it).
      const manifest = {
        name: `install-test-${arch}`,
        private: true,
        dependencies: { 'chroot-guard': `file:${join(PACKED, MAIN_TGZ)}` },
        optionalDependencies: { [name]: `file:${join(PACKED, platformTgz(arch))}` },
      };
      writeFileSync(join(dir, 'package.json'), JSON.stringify(manifest));
      execFileSync('npm', ['install', '--no-audit', '--no-fund', `--cpu=${arch}`, '--os=linux', '--libc=glibc'], { cwd: dir, env, stdio: 'inherit' });
      const modules = readdirSync(join(dir, 'node_modules'));
      expect(modules).toContain(name);
      expect(modules).not.toContain(`chroot-guard-linux-${process.arch}-gnu`);
      // Here, on another CPU, it fails as any unsupported platform does.
      const code = `require('chroot-guard').chrootWatch().subscribe({ error: (e) => console.log(e.code) });`;
      const r = spawnSync('node', ['-e', code], { cwd: dir, env, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe('NATIVE_UNAVAILABLE');
    }, 300_000);
  }
});

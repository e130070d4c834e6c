/**
 * The published packages work with no Rust toolchain: the tarballs written
 * by `cargo xtask pack` (npm-pack/) are installed into an empty project
 * with a PATH that holds node and npm but no cargo, rustc or bpf-linker,
 * then used as users would: the main package and the platform package of
 * this machine's architecture, as npm picks from `optionalDependencies`
 * (the other architecture's package refuses to install here: its `cpu`
 * names another). Host only: it needs the npm registry for the
 * dependencies (the VM has no network).
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
const which = (cmd: string, path: string) => spawnSync('sh', ['-c', `command -v ${cmd}`], { env: { PATH: path }, encoding: 'utf8' }).stdout.trim();

let project: string;
let env: NodeJS.ProcessEnv;

beforeAll(() => {
  const tarballs = existsSync(PACKED) ? readdirSync(PACKED).filter((f) => f.endsWith('.tgz')) : [];
  const mine = ['chroot-guard-0.1.0.tgz', `chroot-guard-linux-${process.arch}-gnu-0.1.0.tgz`];
  const missing = mine.filter((t) => !tarballs.includes(t));
  if (missing.length) throw new Error(`no ${missing.join(', ')} in ${PACKED}: run \`cargo xtask pack\` (cargo xtask test does)`);
  project = mkdtempSync(join(tmpdir(), 'chroot-guard-install-'));
  // A PATH with node, npm, a shell and chroot, and no Rust toolchain.
  const bin = join(project, '.bin');
  mkdirSync(bin);
  for (const tool of ['node', 'npm', 'npx', 'sh', 'env', 'chroot', 'true', 'cat', 'ls', 'uname']) {
    symlinkSync(execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim(), join(bin, tool));
  }
  env = { HOME: project, PATH: bin, npm_config_cache: join(project, '.npm'), npm_config_update_notifier: 'false' };
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'install-test', private: true }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', ...mine.map((t) => join(PACKED, t))], { cwd: project, env, stdio: 'inherit' });
}, 300_000);
afterAll(() => project && rmSync(project, { recursive: true, force: true }));

describe('installed from the packed tarballs, without a Rust toolchain', () => {
  it('the install PATH has no cargo, rustc or bpf-linker', () => {
    for (const tool of ['cargo', 'rustc', 'bpf-linker']) expect(which(tool, env.PATH!)).toBe('');
    expect(which('node', env.PATH!)).not.toBe('');
    expect(readdirSync(join(project, 'node_modules'))).toEqual(expect.arrayContaining(['chroot-guard', 'chroot-guard-linux-x64-gnu']));
  });

  it('npx chroot-guard doctor works', () => {
    const r = spawnSync('npx', ['--no-install', 'chroot-guard', 'doctor', '--json'], { cwd: project, env, encoding: 'utf8' });
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
      const r = spawnSync('node', [file], { cwd: project, env, encoding: 'utf8', timeout: 30_000 });
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
      ['platform', 'darwin', 'darwin-x64'],
      ['platform', 'win32', 'win32-x64'],
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

describe('the tarballs', () => {
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
    // The platform packages as `cargo xtask pack` makes them, one per napi target.
    const platforms = readdirSync(fileURLToPath(new URL('../npm/', import.meta.url))).map(
      (d) => JSON.parse(readFileSync(fileURLToPath(new URL(`../npm/${d}/package.json`, import.meta.url)), 'utf8')) as { name: string; cpu: string[] },
    );
    expect(platforms.map((p) => p.cpu[0]).sort()).toEqual(['arm64', 'x64']);
    // ELF e_machine (bytes 18-19, little-endian), and the directory of the
    // eBPF object built for it (target/ebpf/<Rust target_arch>/).
    const elf = { x64: [62, 'x86_64'], arm64: [183, 'aarch64'] } as const;
    for (const { name, cpu } of platforms) {
      const arch = cpu[0] as keyof typeof elf;
      const [machine, targetArch] = elf[arch];
      const tgz = join(PACKED, `${name}-0.1.0.tgz`);
      expect(list(`${name}-0.1.0.tgz`)).toEqual(['package/README.md', `package/chroot-guard.linux-${arch}-gnu.node`, 'package/package.json']);
      const node = execFileSync('tar', ['xzOf', tgz, `package/chroot-guard.linux-${arch}-gnu.node`], { maxBuffer: 64 << 20 });
      expect(node.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
      expect(node.readUInt16LE(18), name).toBe(machine);
      const meta = JSON.parse(execFileSync('tar', ['xzOf', tgz, 'package/package.json'], { encoding: 'utf8' })) as { cpu: string[]; os: string[] };
      expect(meta).toMatchObject({ cpu: [arch], os: ['linux'] });
      // The addon carries the SHA-256 of the object it embeds
      // (crates/loader/build.rs): the one built for its architecture, in
      // which aya-ebpf reads kprobe pt_regs at that architecture's offsets.
      const object = readFileSync(fileURLToPath(new URL(`../target/ebpf/${targetArch}/bpfel-unknown-none/release/chroot-guard-ebpf`, import.meta.url)));
      expect(node.includes(createHash('sha256').update(object).digest('hex')), `${name} embeds target/ebpf/${targetArch}'s object`).toBe(true);
    }
  });

  it('pass npm publish --dry-run', () => {
    for (const tgz of readdirSync(PACKED).filter((f) => f.endsWith('.tgz'))) {
      const r = spawnSync('npm', ['publish', '--dry-run', '--tag', 'dry-run', join(PACKED, tgz)], { encoding: 'utf8' });
      expect(r.status, `${tgz}: ${r.stderr}`).toBe(0);
    }
  });
});


/**
 * The guard's own state against another local user: the bpffs that
 * chroot-guard mounts itself is mounted so that no other user can create
 * names in it. Attacks run for real as an unprivileged user (`setpriv` to
 * uid/gid 65534).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { TEST_MODE } from './helpers.js';

const NOBODY = 65534;

describe('the bpffs chroot-guard mounts itself', () => {
  it('is mounted with mode=0700 where none was (in a private mount namespace, as on a fresh boot)', () => {
    const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const script = `
      import { readFileSync, statSync } from 'node:fs';
      import { chrootWatch } from ${JSON.stringify(dist)};
      const bpffs = () => readFileSync('/proc/self/mounts', 'utf8').split('\\n').map((l) => l.split(' ')).find((f) => f[1] === '/sys/fs/bpf' && f[2] === 'bpf');
      const before = bpffs() !== undefined;
      const sub = chrootWatch({ mode: ${JSON.stringify(TEST_MODE)}, onAttach: () => {
        const m = bpffs();
        console.log(JSON.stringify({ before, options: m?.[3].split(','), mode: (statSync('/sys/fs/bpf').mode & 0o7777).toString(8) }));
        sub.unsubscribe();
      } }).subscribe({ error: (e) => { console.log(JSON.stringify({ error: e.message })); } });`;
    // Then another user tries to take a name in it.
    const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c',
      `while umount /sys/fs/bpf 2>/dev/null; do :; done; "$0" --input-type=module -e "$1" && setpriv --reuid=${NOBODY} --regid=${NOBODY} --clear-groups mkdir /sys/fs/bpf/chroot-guard 2>&1`,
      process.execPath, script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const [first, ...rest] = r.stdout.trim().split('\n');
    const out = JSON.parse(first!) as { before: boolean; options: string[]; mode: string };
    expect(out).toMatchObject({ before: false, mode: '1700' }); // bpffs always adds the sticky bit
    expect(out.options).toContain('mode=700');
    expect(rest.join('\n')).toMatch(/mkdir: .*Permission denied/);
  });
});

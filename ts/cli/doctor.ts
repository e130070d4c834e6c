/**
 * `chroot-guard doctor`: what this kernel allows on the chroot path.
 * @internal
 * @module
 */
import Table from 'cli-table3';
import { doctor as runDoctor, type DoctorReport, type Mechanism } from '../doctor.js';
import { describeRefusal, EXIT, reportError } from './output.js';

const MECHANISMS: readonly Mechanism[] = ['tracepoint', 'kprobe', 'fentry', 'lsm'];

/** The exit code for a report: 4 without privileges, 3 when no mode works, else 0. */
export function doctorExitCode(r: DoctorReport): number {
  if (r.kernel.missingPrivileges) return EXIT.NO_PERMISSION;
  return r.auto ? EXIT.OK : EXIT.UNSUPPORTED;
}

/** Renders the report as text: facts, the attach-point matrix, the modes, the reasons. */
export function renderDoctor(r: DoctorReport): string {
  const k = r.kernel;
  const yes = (b: boolean) => (b ? 'yes' : 'no');
  const lines = [
    `kernel ${k.release} (${k.machine}); BTF ${yes(k.btf)}; lockdown ${k.lockdown ?? 'n/a'}; kprobes ${yes(k.kprobes)}`,
    `active LSMs: ${k.lsms?.join(',') ?? 'unknown'}${k.lsms && !k.lsms.includes('bpf') ? ' (no bpf: BPF LSM programs cannot run)' : ''}`,
    `privileges: ${k.missingPrivileges ? `missing (${k.missingPrivileges})` : 'ok'}`,
    ...renderFeatures(k.features),
    '',
  ];
  const reasons = new Map<string, string>();
  const table = new Table({
    head: ['attach point', ...MECHANISMS],
    style: { head: [], border: [] },
    chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' },
  });
  for (const p of r.points) {
    const cells = MECHANISMS.map((m) => {
      if (p.present === false) return '';
      const c = p.checks.find((x) => x.mechanism === m);
      if (!c) return '—';
      if (c.ok) return 'ok';
      reasons.set(`${m} ${c.denial!.code}`, c.denial!.reason.replace(` on ${p.name}`, ''));
      return `no: ${c.denial!.code}`;
    });
    table.push([p.present === false ? `${p.name} (absent)` : p.present === null ? `${p.name} (?)` : p.name, ...cells]);
  }
  lines.push(table.toString(), '');
  for (const m of r.modes) {
    lines.push(`mode ${m.mode.padEnd(10)} ${m.ok ? 'ok' : `refused (${m.refusal!.code}): ${m.refusal!.reason}`}`);
    for (const b of m.compatBlindSpots)
      lines.push(b.code === 'MISSES_UNCOUNTED' ? `  calls whose return ${b.program} misses are not counted: ${b.reason}` : `  blind to 32-bit compat chroot calls: ${b.program} on ${b.target} refused (${b.code}): ${b.reason}`);
  }
  lines.push(
    `auto → ${r.auto ?? (k.missingPrivileges ? 'unknown: run as root to try the modes' : 'none: no attach mode works on this kernel')}`,
  );
  lines.push(...renderRemembered(r.remembered));
  if (reasons.size) {
    lines.push('', 'why:');
    for (const [code, reason] of reasons) lines.push(`  ${code}: ${reason}`);
  }
  lines.push('', 'not seen by any attach point (root changes without chroot(2)):');
  for (const b of r.blindSpots) lines.push(`  ${b.calls}: ${b.why}`);
  return lines.join('\n');
}

/** The BPF features the programs need: one line when the kernel has them all, else one per missing feature. */
function renderFeatures(features: DoctorReport['kernel']['features']): string[] {
  if (!features.length) return [];
  const missing = features.filter((f) => !f.present);
  if (!missing.length) return [`BPF features: all ${features.length} the programs need (from BTF)`];
  return missing.map((f) => `lacks ${f.name}, Linux ${f.since}+: needed by ${f.neededBy}`);
}

/** The memory of refused modes: where, whether doctor refreshed it, what `auto` skips now. */
function renderRemembered(m: DoctorReport['remembered']): string[] {
  const state = m.refreshed ? 'refreshed from the attempts above' : 'not refreshed';
  const lines = [
    m.refusals.length
      ? `remembered (${m.file}, ${state}): auto skips these modes without loading anything until the next boot, kernel or build`
      : `remembered (${m.file}, ${state}): nothing, auto tries every mode`,
    ...m.refusals.map((x) => `  ${describeRefusal(x)}`),
  ];
  if (m.problem) lines.push(`  problem: ${m.problem}`);
  return lines;
}

/** Runs `doctor`; resolves with the exit code. */
export async function doctorCommand(flags: { json?: boolean }): Promise<number> {
  try {
    const r = await runDoctor();
    process.stdout.write((flags.json ? JSON.stringify(r, null, 2) : renderDoctor(r)) + '\n');
    return doctorExitCode(r);
  } catch (err) {
    return reportError(err);
  }
}

/**
 * Whether the BPF LSM runs on this kernel, as `doctor()` finds it: an
 * `lsm/path_chroot` program loads and attaches at `bpf_lsm_path_chroot`.
 * Asked once per test file that imports this module (top-level await),
 * before vitest collects its suites, so the guard suites run exactly where
 * the hook works and say why where it does not. `test/doctor.test.ts`
 * fails where it is expected to run (the VM) and does not, so a kernel that
 * stops running it cannot hide behind these skips.
 */
import { doctor } from '../ts/index.js';

async function probe(): Promise<{ runs: boolean; why: string }> {
  try {
    const report = await doctor();
    const check = report.points.find((p) => p.kind === 'lsm-hook')?.checks.find((c) => c.mechanism === 'lsm');
    // The hook may run where the guard cannot: 5.10 runs BPF LSM programs
    // but lacks what the guard's program needs (features.test.ts asserts
    // the guard's error there).
    const lacking = report.kernel.features.filter((f) => !f.present && f.neededBy.startsWith('the guard'));
    if (check?.ok && lacking.length) {
      return { runs: false, why: `the guard cannot run on this kernel: it lacks ${lacking.map((f) => `${f.name} (Linux ${f.since})`).join(', ')}; features.test.ts asserts its error` };
    }
    if (check?.ok && process.env.CHROOT_GUARD_OBJECT === 'legacy') {
      return { runs: false, why: 'CHROOT_GUARD_OBJECT=legacy: the legacy object has no guard program' };
    }
    if (check?.ok) return { runs: true, why: '' };
    return { runs: false, why: `the BPF LSM cannot run on this kernel (doctor: ${check?.denial?.reason ?? 'no lsm check at bpf_lsm_path_chroot'}); these run in the VM` };
  } catch (err) {
    return { runs: false, why: `doctor() failed: ${(err as Error).message}` };
  }
}

const found = await probe();

/** The BPF LSM runs here (the stock-kernel VM); the host refuses it. */
export const LSM = found.runs;

/** Why the BPF LSM suites skip where they skip (empty where they run). */
export const LSM_WHY = found.why;

/** A suite title, with why it skips where it skips. */
export const lsmTitle = (title: string): string => (LSM ? title : `${title} (skipped here: ${LSM_WHY})`);

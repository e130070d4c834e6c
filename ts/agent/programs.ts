/**
 * The BPF programs' run counts and run time, as the kernel keeps them:
 * `run_cnt` and `run_time_ns` in the fdinfo of each program file
 * descriptor this process holds (`/proc/self/fdinfo/N`), counted only while
 * the sysctl `kernel.bpf_stats_enabled` is 1 (it costs a little on every
 * run; the kernel's default is 0).
 * @internal
 * @module
 */
import { readdirSync, readFileSync } from 'node:fs';

/** What the kernel counted for one program. */
export interface ProgramRuns {
  /** Runs counted (while `kernel.bpf_stats_enabled` was 1). */
  readonly runCount: number;
  /** Time spent in the program over those runs, in ns. */
  readonly runTimeNs: number;
}

/**
 * The counts of every BPF program this process holds a descriptor of,
 * by program id. A descriptor closed while it is read is skipped.
 */
export function programRuns(): Map<number, ProgramRuns> {
  const out = new Map<number, ProgramRuns>();
  for (const fd of readdirSync('/proc/self/fdinfo')) {
    let info: string;
    try {
      info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    } catch {
      continue;
    }
    // Links show prog_id too: only program descriptors have run_cnt.
    const id = /^prog_id:\s+(\d+)$/m.exec(info);
    const cnt = /^run_cnt:\s+(\d+)$/m.exec(info);
    const time = /^run_time_ns:\s+(\d+)$/m.exec(info);
    if (id && cnt && time) out.set(Number(id[1]), { runCount: Number(cnt[1]), runTimeNs: Number(time[1]) });
  }
  return out;
}

/** Whether the kernel counts BPF program runs now (`kernel.bpf_stats_enabled`); null where it cannot be read. */
export function bpfStatsEnabled(): boolean | null {
  try {
    return readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '1';
  } catch {
    return null;
  }
}

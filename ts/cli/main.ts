/**
 * The `chroot-guard` command line's commands, loaded by `ts/cli.ts` once
 * it has started the kernel probe.
 * @internal
 * @module
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { EXIT, EXIT_HELP, reportError } from './output.js';
// First, for every command: stdout's end (EPIPE) handled, not a crash.
import './stdout.js';
import { DEFAULT_PIN_DIR, DEFAULT_RING_BUFFER_BYTES } from '../defaults.js';
import { ATTACH_MODES, MODE_CHOICES } from '../errors.js';
import { MAX_POLICY_BYTES } from '../policy/types.js';

// Required, not imported: commander is CommonJS, and an ES import of it
// first lexes its source for named exports (about 3 ms of start-up here).
const { Command, CommanderError, InvalidArgumentError, Option } = createRequire(import.meta.url)('commander') as typeof import('commander');
// Each command loads its module when it runs (a dynamic import, a chunk of
// its own in dist/): `watch` does not pay for the policy stack, `check` not
// for RxJS or the addon, `--help` for neither.

// Relative to dist/, where this module is bundled.
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

function integer(name: string, min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}`);
    return n;
  };
}

const modeOption = () =>
  new Option('--mode <mode>', `attach mode; auto tries ${ATTACH_MODES.join(', then ')}`)
    .choices(MODE_CHOICES)
    .default('auto');

const pinDirOption = () => new Option('--pin-dir <dir>', 'pin directory on bpffs, as enforce --pin makes it (anything else is refused)').default(DEFAULT_PIN_DIR);

const program = new Command('chroot-guard')
  .description('See and control chroot(2) on Linux with eBPF.')
  .version(pkg.version)
  .showHelpAfterError()
  .addHelpText('after', EXIT_HELP)
  .exitOverride();

program
  .command('watch')
  .description('print chroot(2) calls live as they return, until Ctrl-C, which prints the calls still in the ring buffer first (a second Ctrl-C does not wait) (needs root)')
  .option('--json', 'one record per line, as events.schema.json describes: attach first, then chroot (every event field) and lost (what the kernel could not deliver) records')
  .addOption(modeOption())
  .option('--pid <pid>', 'only calls from this process id (tgid)', integer('--pid', 1, 0xffffffff))
  .option('--uid <uid>', 'only calls by this real uid', integer('--uid', 0, 0xffffffff))
  .option('--comm <name>', 'only calls whose comm is exactly this (at most 15 bytes)')
  .option('--ring-buffer-bytes <n>', `kernel ring buffer size (power of two; default ${DEFAULT_RING_BUFFER_BYTES})`, integer('--ring-buffer-bytes', 4096, 1 << 30))
  .option('--compat', 'tracepoint mode: also see 32-bit compat and x32 chroot calls, with raw sys_enter/sys_exit programs that slow every syscall of the host (off: they are a named blind spot)')
  .addHelpText(
    'after',
    `
Columns: TIME (local), PID, COMM, UID, RESULT (ok or errno), PATH → RESOLVED (the new
root as an absolute path in the caller's mount namespace). Times are from
CLOCK_BOOTTIME ("ts" in JSON, ns since boot). In COMM and the paths, control
characters (C0, DEL, C1), bidi and line-separator format characters and bytes
that are not UTF-8 print as \\xNN per byte, a backslash as \\\\: one line per call.
${EXIT_HELP}`,
  )
  .action(async (flags) => {
    process.exitCode = await (await import('./watch.js')).watch(flags);
  });

program
  .command('demo')
  .description('watch while a built-in workload chroots into a busybox root made on the fly, then check every call was seen (needs root)')
  .option('--json', 'events as JSON lines')
  .addOption(modeOption())
  .option('--keep', 'keep the demo root file system')
  .addHelpText('after', EXIT_HELP)
  .action(async (flags) => {
    process.exitCode = await (await import('./demo.js')).demo(flags);
  });

program
  .command('doctor')
  .description("what this kernel allows on the chroot path: each attach point × tracepoint/kprobe/fentry/lsm, tried for real, the mode auto picks (the typed answer to bpftrace -l '*chroot*'), and the root changes no attach point sees (pivot_root, setns)")
  .option('--json', 'the report as JSON')
  .addHelpText('after', EXIT_HELP)
  .action(async (flags) => {
    process.exitCode = await (await import('./doctor.js')).doctorCommand(flags);
  });

program
  .command('stacks')
  .description("count distinct kernel stacks at each chroot hook, most frequent first (like bpftrace -e 'k:*chroot* { @[kstack] = count(); }'; needs root)")
  .option('--json', 'the stacks as JSON')
  .addOption(modeOption())
  .option('--duration <seconds>', 'how long to count', integer('--duration', 0, 86_400), 5)
  .addHelpText('after', EXIT_HELP)
  .action(async (flags) => {
    process.exitCode = await (await import('./stacks.js')).stacksCommand(flags);
  });

program
  .command('ps')
  .description("list every process whose root is not its mount namespace's root, now: pid, ppid, uid, comm, root, cwd (and whether it is outside the root), exe; read by a BPF task iterator, or /proc where the kernel refuses it (needs root)")
  .option('--json', 'one task record per line, as events.schema.json describes (task): every field, raw bytes as …Base64, times in ns since boot')
  .option('--pid <pid>', 'only this process id (tgid)', integer('--pid', 1, 0xffffffff))
  .option('--uid <uid>', 'only this real uid', integer('--uid', 0, 0xffffffff))
  .option('--comm <name>', 'only processes whose comm is exactly this')
  .addOption(new Option('--source <source>', 'auto: the task iterator, or /proc where the kernel refuses it; iterator: fail instead; proc: /proc only, no BPF').choices(['auto', 'iterator', 'proc']).default('auto'))
  .addHelpText(
    'after',
    `
Table: PID, PPID, UID, then COMM → ROOT (cwd, exe), each child under its parent. ROOT is
the path in the process's mount namespace; "(unreachable)" marks a root in a tree that
namespace does not reach (a lazily unmounted directory), "(outside root)" a cwd the
root does not contain. Bytes that are not UTF-8 and control characters print as \\xNN.
Nothing stays loaded when ps ends.
${EXIT_HELP}`,
  )
  .action(async (flags) => {
    process.exitCode = await (await import('./ps.js')).psCommand(flags);
  });

program
  .command('enforce')
  .description('decide every chroot(2) by a policy with the BPF LSM hook lsm/path_chroot, and print each decision until Ctrl-C (needs root and a kernel running the BPF LSM)')
  .requiredOption('--policy <file>', `policy file, YAML or JSON in UTF-8, at most ${MAX_POLICY_BYTES} bytes (see policy.schema.json); only root may be able to change it (see below)`)
  .option('--audit', 'deny nothing, report what would be denied; where the BPF LSM cannot run, audit from the watch probes instead')
  .option('--json', 'decisions as JSON lines')
  .option('--ring-buffer-bytes <n>', `kernel ring buffer size (power of two; default ${DEFAULT_RING_BUFFER_BYTES})`, integer('--ring-buffer-bytes', 4096, 1 << 30))
  .option('--pin', 'pin the guard in bpffs and exit: it keeps deciding after this process ends (see status, unload); if one is pinned already, or another enforce --pin pins one at the same time, replace its policy atomically')
  .addOption(pinDirOption())
  .addHelpText(
    'after',
    `
The policy file is refused (UNSAFE_POLICY_FILE, exit 2, nothing loaded) when a user other
than root could change it: the file, every directory above it and every symbolic link on
the way must be owned by root and not writable by group or others (a sticky directory such
as /tmp is fine for root's entries in it). The message names the component and the fix,
e.g. chown root: FILE; chmod go-w FILE. check reads any file.
${EXIT_HELP}`,
  )
  .action(async (flags) => {
    process.exitCode = await (await import('./enforce.js')).enforceCommand(flags);
  });

program
  .command('status')
  .description('show the guard pinned by enforce --pin: policy, generation, rule ids, program and link ids, undelivered decisions, and leftovers of pins that did not finish (needs root)')
  .option('--json', 'the status as JSON (with --follow: decisions as JSON lines)')
  .option('--follow', "then print the pinned guard's decisions until Ctrl-C: those waiting in its ring buffer first, then new ones (one reader at a time)")
  .addOption(pinDirOption())
  .addHelpText('after', EXIT_HELP)
  .action(async (flags) => {
    const { followCommand, statusCommand } = await import('./enforce.js');
    process.exitCode = flags.follow ? await followCommand(flags) : statusCommand(flags);
  });

program
  .command('unload')
  .description('remove the guard pinned by enforce --pin: detaches lsm/path_chroot and frees its maps, then removes the leftovers of pins that did not finish; succeeds when none is pinned (needs root)')
  .addHelpText(
    'after',
    `
Removes only the names a guard pins (link, CG_*), then the directory; a directory that also
holds other names keeps them and stays, and unload says so. A --pin-dir that is not a pin
directory (off bpffs, a symbolic link, the root of a bpffs mount, or made by another user) is
refused with PIN_FAILED and nothing is removed.`,
  )
  .option('--json', 'the result as JSON')
  .addOption(pinDirOption())
  .addHelpText('after', EXIT_HELP)
  .action(async (flags) => {
    process.exitCode = (await import('./enforce.js')).unloadCommand(flags);
  });

program
  .command('agent')
  .description('run as a host agent until SIGTERM: watch chroot(2), write the watch --json stream to stdout or a file rotated by size, serve Prometheus metrics and /healthz, and with guard: keep a pinned guard\'s policy in force and write its decisions too (needs root; --check-config does not)')
  .requiredOption('--config <file>', 'agent config, YAML or JSON in UTF-8 (see agent.schema.json): watch, output, metrics, guard')
  .option('--check-config', 'validate the config and exit: errors give file:line:column (exit 2)')
  .addHelpText(
    'after',
    `
Metrics (GET /metrics on metrics.listen): chroot_guard_chroot_calls_total{result},
chroot_guard_events_delivered_total, chroot_guard_lost_total{cause},
chroot_guard_output_paused and chroot_guard_output_paused_seconds_total (the output lags
so far behind that the readers are paused), chroot_guard_container_chroot_calls_total
{container_runtime} (with metrics.containerSeries also pod_uid, container_id),
chroot_guard_attach_info{mode}, chroot_guard_bpf_program_runs_total{program} and
chroot_guard_bpf_program_run_seconds_total{program} (while kernel.bpf_stats_enabled=1),
chroot_guard_bpf_stats_enabled, and the process metrics. With guard:, also
chroot_guard_decisions_total{rule,action}, chroot_guard_decisions_lost_total{action},
chroot_guard_guard_generation, chroot_guard_policy_load_failures_total.
GET /healthz: 200 while the programs are attached and the reader runs (and with guard:,
the guard's reader runs and a guard is pinned), else 503.

The config file, and the output file's directory, are refused (INVALID_CONFIG, exit 2) when a
user other than root could change the config or create names in that directory.

Guard (guard: policy FILE): the guard is pinned (as enforce --pin), a pinned one adopted.
SIGHUP reads the policy again: a broken one, or a file a user other than root could change
(UNSAFE_POLICY_FILE, as enforce; --check-config reports it too), is refused and the one in
force stays.
SIGTERM/SIGINT exit 0 and leave the guard pinned and deciding (chroot-guard unload removes it).
${EXIT_HELP}`,
  )
  .action(async (flags) => {
    process.exitCode = await (await import('./agent.js')).agentCommand(flags);
  });

program
  .command('check')
  .description("validate policy files without loading anything (no root needed); errors give file:line:column; warnings (exit 0) name grants a caller can forge, such as an allow rule that trusts comm alone")
  .argument('<files...>', `policy files, YAML or JSON in UTF-8, at most ${MAX_POLICY_BYTES} bytes each`)
  .option('--json', 'results as JSON')
  .addHelpText('after', EXIT_HELP)
  .action(async (files: string[], flags) => {
    process.exitCode = (await import('./check.js')).checkCommand(files, flags);
  });

program
  .command('replay')
  .description("evaluate a policy over a recording (what watch --json or enforce --json wrote) and print each would-be decision, then a summary per rule: matched, denied, never matched (no root needed)")
  .argument('<recording>', 'the NDJSON recording, or - for stdin; read as a stream, in constant memory')
  .requiredOption('--policy <file>', `policy file, YAML or JSON in UTF-8, at most ${MAX_POLICY_BYTES} bytes (see policy.schema.json)`)
  .option('--json', 'one decision record per decided call (source: replay), then a summary record, as events.schema.json describes')
  .option('--summary-only', 'print only the summary (for large recordings)')
  .option('--fail-on-deny', 'exit 8 when the policy would deny any recorded call')
  .option('--audit', 'replay the policy in audit mode')
  .option('--initial-mnt-ns <inode>', "the initial mount namespace's inode number where the recording was made (default: what each session's attach record says, else this host's, /proc/1/ns/mnt); initialNamespaces conditions compare events' mntNs with it", integer('--initial-mnt-ns', 1, 0xffffffff))
  .addHelpText(
    'after',
    `
Decided calls are those a policy decides: chroot records of calls that succeeded or whose
LSM result was seen (lsmRet), and decision records. Calls that failed before the LSM hook
(ENOENT, ENOTDIR, permission checks; in tracepoint mode every failed call) are counted
apart, by errno. Each call is counted once: in a recording with a guard (the agent's stream
with guard:, or watch --json and enforce --json in one file), which holds a chroot record
and a decision record for each call the guard decided, the decision records stand for the
calls from the guard's first record on (an attach record of mode lsm, or a decision), and
the chroot records after it are skipped and counted as such (skipped in the summary).
Each decision is evaluatePolicy's, the reference the kernel program is held
equal to. exe conditions match this host's file at that path by device and inode: a
recording from another host, or from before the file was replaced, does not match them.
attach, task and summary records are skipped; lost records are summed, and a recording
with losses is reported incomplete. A line that is not a record is named on stderr with its
line number and counted; the rest is read, and the exit code is 7.
Table: LINE (of the recording), PID, COMM, UID, DECISION, RULE, RESOLVED. On a terminal,
stderr shows the progress (bytes read, records per second).
${EXIT_HELP}`,
  )
  .action(async (recording: string, flags) => {
    process.exitCode = await (await import('./replay.js')).replayCommand(recording, flags);
  });

program
  .command('learn')
  .description('propose the smallest policy that allows every decided call of a recording and denies the rest: allow rules by executable, uid and merged subtrees, with counts as comments; YAML on stdout that passes check (no root needed)')
  .argument('<recording>', 'the NDJSON recording (watch --json or enforce --json), or - for stdin; read as a stream')
  .option('--audit', 'write the policy in audit mode (mode: audit) instead of enforce')
  .addHelpText(
    'after',
    `
Each decided call (as replay counts them) is allowed by a rule of its executable (exe,
matched by device and inode when the policy loads) and real uid, with its new root as a
subtree. Merge rule: a root below another observed root is covered by it; two or more
roots with the same parent directory become that parent's subtree when the parent is at
least two components deep (never /, never a top-level directory such as /tmp), repeated
until nothing changes. A chroot to / itself is allowed as the exact path /. A call whose
executable cannot be named (none, a memfd, deleted, outside its mount namespace, cut
short) gets a rule without exe; one whose new root cannot be judged (unreachable, cut
short) a rule without subtree, which lets that executable chroot anywhere as that uid
(its comment says so); a call with neither is not allowed and named on stderr. Calls
the recorded guard denied are not allowed. default: deny. In a recording with a guard,
its decision records stand for the calls and the chroot records after its first record are
skipped, as replay does.
${EXIT_HELP}`,
  )
  .action(async (recording: string, flags) => {
    process.exitCode = await (await import('./replay.js')).learnCommand(recording, flags);
  });

try {
  await program.parseAsync();
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
  } else {
    process.exitCode = reportError(err);
  }
}

/**
 * The agent's Prometheus metrics (prom-client), in a registry of their own.
 * Every label has a bounded set of values: `result` the errno names
 * chroot(2) returns (a dozen at most) and `ok`; `cause` the loss
 * counters of `ts/batch.ts`; `mode` the three attach modes; `program` the
 * programs of one mode (at most six, `crates/common/src/probes.rs`);
 * `container_runtime` the runtimes of `ts/cgroup.ts` and `none`,
 * `unresolved`; `pod_uid` and `container_id` only when configured, at most
 * `metrics.containerSeries` distinct containers, the rest as `other`.
 * @internal
 * @module
 */
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { ATTACH_MODES } from '../errors.js';
import type { ChrootEvent } from '../events.js';
import { LOSS_COUNTERS, type LostReport } from '../batch.js';
import type { AttachedProgram, AttachInfo } from '../session.js';
import type { ChrootDecision } from '../decision.js';
import type { Policy } from '../policy/types.js';
import { attachFlow, type Flow } from '../flow.js';
import { bpfStatsEnabled, programRuns } from './programs.js';

/** Metric names all start with this. */
export const PREFIX = 'chroot_guard_';

/** The `pod_uid` and `container_id` of the containers past `metrics.containerSeries`. */
export const OTHER_CONTAINERS = 'other';

/** Options of {@link AgentMetrics}. */
export interface AgentMetricsOptions {
  /**
   * How many distinct containers (pod uid and container id) get series of
   * their own in `chroot_guard_container_chroot_calls_total`, first seen
   * first; those seen later are counted under `other`. 0 (the default):
   * no `pod_uid` and `container_id` labels at all, only
   * `container_runtime`. A series outlives its container (counters are
   * not forgotten), so this bounds what the agent adds to Prometheus.
   */
  readonly containerSeries?: number;
}

/** The agent's metrics: fed by the session's listener, read on each scrape. */
export class AgentMetrics {
  /** The registry `/metrics` serves: these metrics and prom-client's default process metrics. */
  readonly registry = new Registry();
  private readonly calls: Counter<'result'>;
  private readonly delivered: Counter;
  private readonly lost: Counter<'cause'>;
  private readonly attach: Gauge<'mode'>;
  private readonly byContainer: Counter<'container_runtime' | 'pod_uid' | 'container_id'>;
  private readonly containerSeries: number;
  /** The containers with series of their own (`pod_uid`/`container_id`). */
  private readonly containers = new Set<string>();
  private programs: readonly AttachedProgram[] = [];

  constructor(options: AgentMetricsOptions = {}) {
    const registers = [this.registry];
    this.containerSeries = options.containerSeries ?? 0;
    this.byContainer = new Counter({
      name: `${PREFIX}container_chroot_calls_total`,
      help:
        'chroot(2) calls seen, by the caller\'s container as its cgroup path names it (container_runtime: containerd, cri-o, docker, podman, unknown, ' +
        'none outside containers, unresolved when the cgroup could not be looked up)' +
        (this.containerSeries > 0 ? `; pod_uid and container_id for the first ${this.containerSeries} containers, "${OTHER_CONTAINERS}" after` : ''),
      labelNames: this.containerSeries > 0 ? ['container_runtime', 'pod_uid', 'container_id'] : ['container_runtime'],
      registers,
    });
    this.calls = new Counter({
      name: `${PREFIX}chroot_calls_total`,
      help: 'chroot(2) calls seen, by result: ok, or the errno name (ENOENT, EPERM, ...)',
      labelNames: ['result'],
      registers,
    });
    this.delivered = new Counter({ name: `${PREFIX}events_delivered_total`, help: 'chroot events written to the output stream', registers });
    this.lost = new Counter({
      name: `${PREFIX}lost_total`,
      help: 'calls, events and decisions the kernel side could not deliver, by cause (the lost record counters of events.schema.json)',
      labelNames: ['cause'],
      registers,
    });
    for (const cause of LOSS_COUNTERS) this.lost.inc({ cause }, 0);
    this.attach = new Gauge({ name: `${PREFIX}attach_info`, help: 'the attach mode the watch programs run in: 1 for the attached mode, 0 for the others', labelNames: ['mode'], registers });
    for (const mode of ATTACH_MODES) this.attach.set({ mode }, 0);
    const self = this;
    // The kernel's own counters, read at each scrape: reset, then set to
    // what the kernel says (prom-client counters only go up).
    new Counter({
      name: `${PREFIX}bpf_program_runs_total`,
      help: 'runs of each attached BPF program, as the kernel counts them (run_cnt; only while kernel.bpf_stats_enabled is 1)',
      labelNames: ['program'],
      registers,
      collect() {
        this.reset();
        const runs = programRuns();
        for (const p of self.programs) this.inc({ program: p.name }, runs.get(p.id)?.runCount ?? 0);
      },
    });
    new Counter({
      name: `${PREFIX}bpf_program_run_seconds_total`,
      help: 'time spent in each attached BPF program, as the kernel counts it (run_time_ns; only while kernel.bpf_stats_enabled is 1)',
      labelNames: ['program'],
      registers,
      collect() {
        this.reset();
        const runs = programRuns();
        for (const p of self.programs) this.inc({ program: p.name }, (runs.get(p.id)?.runTimeNs ?? 0) / 1e9);
      },
    });
    new Gauge({
      name: `${PREFIX}bpf_stats_enabled`,
      help: 'whether the kernel counts BPF program runs (sysctl kernel.bpf_stats_enabled): 1 or 0',
      registers,
      collect() {
        this.set(bpfStatsEnabled() ? 1 : 0);
      },
    });
    collectDefaultMetrics({ register: this.registry });
  }

  /**
   * Follows the output's flow (`Sink.flow`): `chroot_guard_output_paused`
   * is 1 while it holds the readers back, and
   * `chroot_guard_output_paused_seconds_total` adds up how long it has.
   * While paused, records wait in the kernel ring buffers and what does
   * not fit there is counted lost, which the lost records (and
   * `chroot_guard_lost_total`) report only at the resume: these say so at
   * once.
   */
  followOutput(flow: Flow): void {
    let since: number | null = null;
    let pausedSeconds = 0;
    const registers = [this.registry];
    new Gauge({
      name: `${PREFIX}output_paused`,
      help: 'whether the output (stdout or the file) lags so far behind that the readers are paused: 1 or 0; meanwhile what the kernel ring buffers cannot hold is counted lost',
      registers,
      collect() {
        this.set(since === null ? 0 : 1);
      },
    });
    new Counter({
      name: `${PREFIX}output_paused_seconds_total`,
      help: 'time the readers spent paused because the output lagged behind',
      registers,
      collect() {
        this.reset();
        this.inc(pausedSeconds + (since === null ? 0 : (performance.now() - since) / 1000));
      },
    });
    attachFlow(flow, (paused) => {
      if (paused && since === null) since = performance.now();
      else if (!paused && since !== null) {
        pausedSeconds += (performance.now() - since) / 1000;
        since = null;
      }
    });
  }

  /** The programs attached: the mode's gauge goes to 1, its programs are counted. */
  attached(info: AttachInfo): void {
    for (const mode of ATTACH_MODES) this.attach.set({ mode }, mode === info.mode ? 1 : 0);
    this.programs = info.programs;
  }

  /** Detached (stopped, or the reader failed): every mode at 0, no programs. */
  detached(): void {
    for (const mode of ATTACH_MODES) this.attach.set({ mode }, 0);
    this.programs = [];
  }

  /** One event written to the output. */
  event(e: ChrootEvent): void {
    this.calls.inc({ result: e.errno ?? 'ok' });
    this.delivered.inc();
    const container_runtime = e.cgroupLookup !== 'found' ? 'unresolved' : (e.containerRuntime ?? 'none');
    if (this.containerSeries === 0) return this.byContainer.inc({ container_runtime });
    let pod_uid = e.podUid ?? '';
    let container_id = e.containerId ?? '';
    const key = `${pod_uid}/${container_id}`;
    if (key !== '/' && !this.containers.has(key)) {
      if (this.containers.size < this.containerSeries) this.containers.add(key);
      else pod_uid = container_id = OTHER_CONTAINERS;
    }
    this.byContainer.inc({ container_runtime, pod_uid, container_id });
  }

  /** What the kernel could not deliver, since the last report. */
  lostReport(r: LostReport): void {
    for (const cause of LOSS_COUNTERS) if (r[cause] > 0) this.lost.inc({ cause }, r[cause]);
  }
}

/** Rule ids kept as `rule` label values; later new ones count as `(other)`, so reloads cannot grow the label set without end. */
export const MAX_RULE_LABELS = 256;

/**
 * The agent's guard metrics (`guard:` in its config), in the registry of
 * {@link AgentMetrics}. Labels stay bounded: `rule` is a rule id of a
 * policy this agent put in force (at most {@link MAX_RULE_LABELS}),
 * `(default)` when no rule decided, `(other)` for any other id (set by
 * another process's update); `action` is `allow`, `deny` (the call failed
 * with EPERM), `would-deny` (a deny rule in an audit policy) or `audit`.
 */
export class GuardMetrics {
  private readonly decisions: Counter<'rule' | 'action'>;
  private readonly lost: Counter<'action'>;
  private readonly failures: Counter;
  private readonly rules = new Set<string>();

  /** `generation`: the pinned guard's generation now, or null (read at each scrape). */
  constructor(registry: Registry, generation: () => number | null) {
    const registers = [registry];
    this.decisions = new Counter({
      name: `${PREFIX}decisions_total`,
      help: 'guard decisions read, by rule id ((default): no rule decided) and action: allow, deny (EPERM), would-deny (audit policy), audit',
      labelNames: ['rule', 'action'],
      registers,
    });
    this.lost = new Counter({ name: `${PREFIX}decisions_lost_total`, help: 'guard decisions the kernel could not write to the ring buffer, by the action decided', labelNames: ['action'], registers });
    for (const action of ['allow', 'deny', 'audit']) this.lost.inc({ action }, 0);
    this.failures = new Counter({ name: `${PREFIX}policy_load_failures_total`, help: 'policies the guard refused (SIGHUP with a policy file that cannot be read, validated or loaded); the policy in force stayed', registers });
    new Gauge({
      name: `${PREFIX}guard_generation`,
      help: 'generation of the policy in force in the pinned guard (1 for the first, +1 per update by anyone); 0 when none is pinned',
      registers,
      collect() {
        this.set(generation() ?? 0);
      },
    });
  }

  /** A policy the agent put in force: its rule ids become label values (from 0, so a rule that never matched shows). */
  policy(p: Policy): void {
    for (const rule of p.rules) {
      if (this.rules.size >= MAX_RULE_LABELS && !this.rules.has(rule.id)) continue;
      this.rules.add(rule.id);
      this.decisions.inc({ rule: rule.id, action: rule.action === 'deny' && p.mode === 'audit' ? 'would-deny' : rule.action }, 0);
    }
  }

  /** One decision read. */
  decision(d: ChrootDecision): void {
    const rule = d.ruleId === null ? '(default)' : this.rules.has(d.ruleId) ? d.ruleId : '(other)';
    this.decisions.inc({ rule, action: d.denied ? 'deny' : d.wouldDeny ? 'would-deny' : d.action });
  }

  /** What the kernel could not deliver, since the last report. */
  lostReport(r: LostReport): void {
    for (const [action, n] of [['allow', r.allowLost], ['deny', r.denyLost], ['audit', r.auditLost]] as const) if (n > 0) this.lost.inc({ action }, n);
  }

  /** A policy refused. */
  loadFailed(): void {
    this.failures.inc();
  }
}

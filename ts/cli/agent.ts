/**
 * `chroot-guard agent --config FILE`: one long-running process per host:
 * watches chroot(2) and writes the `watch --json` stream to stdout or a
 * (rotated) file, serves Prometheus metrics and a health check; with a
 * `guard:` section it also keeps a pinned guard's policy in force and
 * writes its decisions into the same stream (`ts/agent/guard.ts`). Its own
 * module, so that no other command loads prom-client or the rotating file
 * stream (and `--check-config` loads neither: they are imported once the
 * config is valid).
 * @internal
 * @module
 */
import { ChrootGuardError } from '../errors.js';
import { formatProblem } from '../policy/types.js';
import { policyWarnings } from '../policy/validate.js';
import { joinSession, type SessionStats } from '../session.js';
import { watchSessionOptions } from '../watch-options.js';
import { ConfigError, guardPolicyFile, loadAgentConfig, splitListen, type AgentConfig } from '../agent/config.js';
import type { AgentGuard } from '../agent/guard.js';
import type { MetricsServer } from '../agent/server.js';
import type { Sink } from '../agent/sink.js';
import type { ChrootDecision } from '../decision.js';
import { EXIT, describeAttach, describeLost, note, reportError } from './output.js';
import { DecisionPrinter, EventPrinter } from './printer.js';
import { detachedNote, stopOnSignals } from './signals.js';
import { onStdoutGone } from './stdout.js';

/** Options of `agent`, as commander parses them. */
export interface AgentFlags {
  config: string;
  checkConfig?: boolean;
}

/** Reads the config; prints its problems (`FILE:LINE:COL: message`) and gives exit 2 when it is invalid. */
function readConfig(file: string): AgentConfig | number {
  try {
    return loadAgentConfig(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const p of err.problems) process.stderr.write(`${formatProblem(p)}\n`);
    note(`error: invalid agent config (INVALID_CONFIG)`);
    return EXIT.USAGE;
  }
}

/**
 * Runs the agent until SIGINT or SIGTERM (then: the programs detached, the
 * events still in the ring buffer written (a second signal skips them), the
 * last `lost` record, the output flushed and closed, the server closed,
 * the guard's reader stopped with the guard left pinned and deciding;
 * exit 0), or until an error (its exit code: 2 for a bad config or guard
 * policy, or an output file another user could have chosen, 1 for an
 * output or listen failure, 3 and 4 as `watch` and
 * `enforce`). SIGHUP reloads the guard's policy file. With `checkConfig`,
 * only validates the config and the guard's policy (no root needed).
 */
export async function agentCommand(flags: AgentFlags): Promise<number> {
  const config = readConfig(flags.config);
  if (typeof config === 'number') return config;
  if (flags.checkConfig) {
    process.stdout.write(`${flags.config}: ok\n`);
    return EXIT.OK;
  }
  const w = config.watch ?? {};
  let options;
  try {
    options = watchSessionOptions({
      ...(w.mode !== undefined ? { mode: w.mode } : {}),
      ...(w.compat !== undefined ? { compat: w.compat } : {}),
      ...(w.ringBufferBytes !== undefined ? { ringBufferBytes: w.ringBufferBytes } : {}),
      ...w.filters,
    });
  } catch (err) {
    return reportError(err);
  }
  const [{ AgentMetrics, GuardMetrics }, { serveMetrics }, { openSink, UnsafeOutputError }, { AgentGuard }] = await Promise.all([
    import('../agent/metrics.js'),
    import('../agent/server.js'),
    import('../agent/sink.js'),
    import('../agent/guard.js'),
  ]);
  // The output first: a file the agent will not write ends it before it
  // listens or loads anything.
  let sink: Sink;
  try {
    sink = openSink(config.output);
  } catch (err) {
    if (err instanceof UnsafeOutputError) {
      note(`error: ${err.reason} (INVALID_CONFIG)`);
      return EXIT.USAGE;
    }
    note(`error: cannot open ${config.output?.path}: ${(err as Error).message}`);
    return EXIT.FAILURE;
  }
  const metrics = new AgentMetrics({ containerSeries: config.metrics?.containerSeries });
  metrics.followOutput(sink.flow);
  let guard: AgentGuard | undefined;
  const guardMetrics = config.guard ? new GuardMetrics(metrics.registry, () => guard?.generation() ?? null) : undefined;
  let attached = false;
  let server: MetricsServer | undefined;
  if (config.metrics) {
    const { host, port } = splitListen(config.metrics.listen);
    try {
      server = await serveMetrics(host, port, metrics.registry, () => attached && (!config.guard || guard?.healthy() === true));
    } catch (err) {
      note(`error: cannot listen on ${config.metrics.listen}: ${(err as Error).message}`);
      await sink.close();
      return EXIT.FAILURE;
    }
    const a = server.address;
    note(`metrics on http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics (health: /healthz)`);
  }
  // With a guard, watch and guard records share the stream: each lost
  // record names its reader.
  const printer = new EventPrinter(true, sink.write, config.guard ? 'watch' : undefined);
  const decisions = config.guard ? new DecisionPrinter(true, sink.write, 'guard') : undefined;

  return new Promise<number>((resolve) => {
    let leave: (() => void) | undefined;
    let finish: (() => Promise<SessionStats>) | undefined;
    let stats: (() => SessionStats) | undefined;
    let ending = false;
    // Every way out: detach, write the last records, close the file and the
    // server, then resolve with `code`.
    const end = (code: number, last?: SessionStats) => {
      if (ending) return;
      ending = true;
      attached = false;
      signals.off();
      process.off('SIGHUP', onHup);
      stopStdout();
      leave?.();
      leave = undefined;
      finish = undefined;
      guard?.stop();
      metrics.detached();
      printer.finish(last);
      decisions?.finish();
      void Promise.all([sink.close(), server?.close()]).then(() => resolve(code));
    };
    const signals = stopOnSignals({
      finish: () => finish,
      stats: () => stats?.(),
      detached: (last, cut) => {
        end(EXIT.OK, last);
        note(detachedNote(`${printer.count} event${printer.count === 1 ? '' : 's'} written`, cut));
        if (guard) note(`the guard stays pinned at ${guard.dir} and keeps deciding (${decided} decision${decided === 1 ? '' : 's'} written); \`chroot-guard unload\` removes it`);
      },
      failed: (err) => end(reportError(err)),
    });
    // SIGHUP would end a Node.js process: it reloads the guard's policy
    // (one that comes while the guard starts is kept for then).
    let hupEarly = false;
    const onHup = () => {
      if (guard) guard.reload();
      else if (config.guard) hupEarly = true;
      else note('SIGHUP: no guard is configured; nothing to reload');
    };
    process.on('SIGHUP', onHup);
    // Stdout closed (EPIPE): nobody reads the stream any more. Only when it
    // is the output: with a file, stdout carries nothing.
    const stopStdout = sink.write === undefined ? onStdoutGone((err) => end(err.code === 'EPIPE' ? EXIT.OK : reportError(err))) : () => {};
    sink.onError((err) => {
      note(`error: cannot write ${config.output?.path}: ${err.message}`);
      end(EXIT.FAILURE);
    });
    let decided = 0;
    const startWatch = () => {
      if (ending) return;
      try {
        const joined = joinSession(options, {
          attached: (info) => {
            stats = info.stats;
            attached = true;
            metrics.attached(info);
            note(`${describeAttach(info)}\n  agent running; SIGTERM or Ctrl-C to stop`);
            printer.attached(info);
          },
          lost: (report) => {
            metrics.lostReport(report);
            printer.lost(report);
            note(describeLost(report));
          },
          event: (e) => {
            metrics.event(e);
            printer.print(e);
          },
          error: (err) => end(reportError(err)),
        }, sink.flow);
        if (ending) joined.leave();
        else ({ leave, finish } = joined);
      } catch (err) {
        end(reportError(err));
      }
    };
    if (!config.guard || !decisions || !guardMetrics) return startWatch();
    // The guard first: a policy in force before anything is watched.
    const file = guardPolicyFile(config.guard, flags.config);
    // Decisions read before the attach record is written wait for it.
    let early: ChrootDecision[] | undefined = [];
    const decision = (d: ChrootDecision) => {
      if (early) return void early.push(d);
      decided++;
      guardMetrics.decision(d);
      decisions.print(d);
    };
    AgentGuard.start(config.guard, file, {
      flow: sink.flow,
      decision,
      lost: (report) => {
        guardMetrics.lostReport(report);
        decisions.lost(report);
        note(`guard: ${describeLost(report)}`);
      },
      policy: (record, policy) => {
        if (policy) {
          guardMetrics.policy(policy);
          for (const w of policyWarnings(policy)) note(`warning: ${file}: ${w.pointer}: ${w.message}`);
        } else {
          guardMetrics.loadFailed();
        }
        if (early) {
          decisions.attached({ mode: 'lsm', generation: record.generation ?? 0, policyMode: record.policyMode ?? 'enforce' });
          const held = early;
          early = undefined;
          for (const d of held) decision(d);
        }
        decisions.guard(record);
        if (record.event === 'rejected') {
          note(`SIGHUP: ${file} refused (${record.code}); the policy in force stays (generation ${record.generation ?? 'unknown'}):`);
          for (const p of record.problems) process.stderr.write(`${p}\n`);
        } else {
          const what = `${record.policyMode === 'enforce' ? 'enforcing' : 'auditing'} ${file} (generation ${record.generation})`;
          note(record.event === 'pinned' ? `guard pinned at ${record.pinDir}: ${what}` : record.event === 'adopted' ? `adopted the guard pinned at ${record.pinDir}: now ${what}` : `SIGHUP: now ${what}`);
        }
      },
      failed: (err) => {
        note('the guard\'s decisions can no longer be read; it stays pinned and deciding');
        end(reportError(err));
      },
    }).then(
      (g) => {
        if (ending) return g.stop();
        guard = g;
        if (hupEarly) g.reload();
        startWatch();
      },
      (err: unknown) => {
        const code = reportError(err);
        if (err instanceof ChrootGuardError && err.code === 'LSM_UNAVAILABLE') {
          note(`the guard: section of ${flags.config} needs the BPF LSM; without it, the agent can only watch (remove guard: to run it so)`);
        }
        end(code);
      },
    );
  });
}

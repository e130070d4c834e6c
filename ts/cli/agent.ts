/**
 * `chroot-guard agent --config FILE`: one long-running process per host:
 * watches chroot(2) and writes the `watch --json` stream to stdout or a
 * (rotated) file, serves Prometheus metrics and a health check. Its own
 * module, so that no other command loads prom-client or the rotating file
 * stream (and `--check-config` loads neither: they are imported once the
 * config is valid).
 * @internal
 * @module
 */
import { formatProblem } from '../policy/types.js';
import { joinSession, type SessionStats } from '../session.js';
import { watchSessionOptions } from '../watch-options.js';
import { ConfigError, loadAgentConfig, splitListen, type AgentConfig } from '../agent/config.js';
import type { MetricsServer } from '../agent/server.js';
import { EXIT, describeAttach, describeLost, note, reportError } from './output.js';
import { EventPrinter, onStdoutGone } from './printer.js';

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
 * Runs the agent until SIGINT or SIGTERM (then: the last `lost` record,
 * the output flushed and closed, the server closed, the programs detached;
 * exit 0), or until an error (its exit code: 2 for a bad config, 1 for an
 * output or listen failure, 3 and 4 as `watch`). With `checkConfig`, only
 * validates the config (no root needed).
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
  const [{ AgentMetrics }, { serveMetrics }, { openSink }] = await Promise.all([import('../agent/metrics.js'), import('../agent/server.js'), import('../agent/sink.js')]);
  const metrics = new AgentMetrics({ containerSeries: config.metrics?.containerSeries });
  let attached = false;
  let server: MetricsServer | undefined;
  if (config.metrics) {
    const { host, port } = splitListen(config.metrics.listen);
    try {
      server = await serveMetrics(host, port, metrics.registry, () => attached);
    } catch (err) {
      note(`error: cannot listen on ${config.metrics.listen}: ${(err as Error).message}`);
      return EXIT.FAILURE;
    }
    const a = server.address;
    note(`metrics on http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics (health: /healthz)`);
  }
  const sink = openSink(config.output);
  const printer = new EventPrinter(true, sink.write);

  return new Promise<number>((resolve) => {
    let leave: (() => void) | undefined;
    let stats: (() => SessionStats) | undefined;
    let ending = false;
    // Every way out: detach, write the last records, close the file and the
    // server, then resolve with `code`.
    const end = (code: number, last?: SessionStats) => {
      if (ending) return;
      ending = true;
      attached = false;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      stopStdout();
      leave?.();
      leave = undefined;
      metrics.detached();
      printer.finish(last);
      void Promise.all([sink.close(), server?.close()]).then(() => resolve(code));
    };
    const onSignal = () => {
      const last = stats?.();
      end(EXIT.OK, last);
      note(`detached: ${printer.count} event${printer.count === 1 ? '' : 's'} written`);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    // Stdout closed (EPIPE): nobody reads the stream any more. Only when it
    // is the output: with a file, stdout carries nothing.
    const stopStdout = sink.write === undefined ? onStdoutGone((err) => end(err.code === 'EPIPE' ? EXIT.OK : reportError(err))) : () => {};
    sink.onError((err) => {
      note(`error: cannot write ${config.output?.path}: ${err.message}`);
      end(EXIT.FAILURE);
    });
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
      });
      if (ending) joined.leave();
      else leave = joined.leave;
    } catch (err) {
      end(reportError(err));
    }
  });
}

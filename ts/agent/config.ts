/**
 * The agent's configuration: its types, and reading it from YAML or JSON
 * with the policies' machinery (`ts/policy/validate.ts`): the schema
 * `agent.schema.json`, errors with file, line and column.
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import type { ValidateFunction } from 'ajv';
import { checkRingBufferBytes, type AttachMode } from '../errors.js';
import { DocumentError, PolicyError, UnsafePolicyFileError, type PolicyProblem } from '../policy/types.js';
import { checkTrustedDirectory } from '../policy/trusted-file.js';
import { compileSchema, loadDocument, loadPolicy, type DocumentKind } from '../policy/validate.js';

const require = createRequire(import.meta.url);

/** The agent config's JSON Schema (draft-07), as published in `agent.schema.json`. */
export const agentSchema: Record<string, unknown> = require('chroot-guard/agent.schema.json') as Record<string, unknown>;

/** Largest config file, in bytes: a config is a few lines. */
export const MAX_CONFIG_BYTES = 64 * 1024;

/** The directory the README and the examples give the agent's output: root's alone (0700). */
export const OUTPUT_DIR_EXAMPLE = '/var/log/chroot-guard';

/** The remedy for an output file in a shared directory (`/tmp`, a group-writable `/var/log`). */
export const OUTPUT_DIR_FIX = `put the output in a directory only root can write, e.g. install -d -m 0700 ${OUTPUT_DIR_EXAMPLE}`;

/** Rotated files kept when `output.rotate.keep` is not given. */
export const DEFAULT_KEEP = 5;

/** The agent's configuration, as `agent.schema.json` describes it. */
export interface AgentConfig {
  /** What to watch: `watch`'s options. */
  readonly watch?: {
    readonly mode?: 'auto' | AttachMode;
    readonly compat?: boolean;
    /** Kernel ring buffer size in bytes (a power of two, 4096 to 2^30). */
    readonly ringBufferBytes?: number;
    /** In-kernel filters: all must match. */
    readonly filters?: { readonly pid?: number; readonly uid?: number; readonly comm?: string };
  };
  /** Where the NDJSON stream goes. */
  readonly output?: {
    /** `-` (stdout, the default) or a file, appended to. */
    readonly path?: string;
    /** A file only: size-based rotation, logrotate's way (FILE.1 newest). */
    readonly rotate?: { readonly maxBytes: number; readonly keep?: number };
  };
  /** Prometheus metrics and `/healthz` over HTTP. */
  readonly metrics?: {
    /** `HOST:PORT` (`[v6]:PORT`); port 0 picks a free port. */
    readonly listen: string;
    /** Containers with series of their own in the container metric (0 to 10000, default 0: `AgentMetricsOptions`). */
    readonly containerSeries?: number;
  };
  /**
   * The guard: a policy enforced (or audited, as its own `mode` says) by
   * `lsm/path_chroot`, pinned in bpffs so that it outlives the agent (a
   * restart, SIGTERM, a crash); a guard pinned already is adopted, not
   * doubled. SIGHUP reads `policy` again (`ts/agent/guard.ts`).
   */
  readonly guard?: {
    /** The policy file, checked as `chroot-guard check` does; relative to the config file's directory ({@link guardPolicyFile}). */
    readonly policy: string;
    /** The pin directory on bpffs (absolute); default `/sys/fs/bpf/chroot-guard` (`DEFAULT_PIN_DIR`). */
    readonly pinDir?: string;
    /** Decision ring buffer size in bytes for a guard the agent pins (a power of two, 4096 to 2^30); an adopted guard keeps its own. */
    readonly ringBufferBytes?: number;
  };
}

/**
 * An agent config that does not parse or validate ({@link DocumentError}:
 * problems of a policy's shape); `code` is `INVALID_CONFIG`.
 */
export class ConfigError extends DocumentError {
  constructor(problems: readonly PolicyProblem[]) {
    super('INVALID_CONFIG', problems);
    this.name = 'ConfigError';
  }
}

let validator: ValidateFunction | undefined;

/** A path {@link checkTrustedDirectory} could not walk to its end (missing, not a directory, a loop of links). */
class Unwalkable extends Error {}

/** The kind of document an agent config is; `file` is where it was read, for the policy file's relative path. */
const agentConfig = (file: string): DocumentKind<AgentConfig> => ({
  noun: 'agent config',
  maxBytes: MAX_CONFIG_BYTES,
  schema: () => (validator ??= compileSchema(agentSchema)),
  semantic: (c) => {
    const out: Array<{ pointer: string; message: string } | (PolicyProblem & { file: string })> = [];
    for (const [pointer, ring] of [
      ['/watch/ringBufferBytes', c.watch?.ringBufferBytes],
      ['/guard/ringBufferBytes', c.guard?.ringBufferBytes],
    ] as const) {
      if (ring === undefined) continue;
      try {
        checkRingBufferBytes(ring);
      } catch {
        out.push({ pointer, message: `"ringBufferBytes" must be a power of two from 4096 to 1073741824; got ${ring}` });
      }
    }
    const comm = c.watch?.filters?.comm;
    if (comm !== undefined && Buffer.byteLength(comm) > 15) {
      out.push({ pointer: '/watch/filters/comm', message: `comm ${JSON.stringify(comm)} is ${Buffer.byteLength(comm)} bytes; the kernel keeps 15 (TASK_COMM_LEN - 1)` });
    }
    if (c.output?.rotate && (c.output.path ?? '-') === '-') {
      out.push({ pointer: '/output/rotate', message: '"rotate" needs a file: set output.path to one (stdout cannot be rotated)' });
    }
    const output = c.output?.path ?? '-';
    if (output !== '-') {
      // The agent creates, appends to and rotates files there as root: a
      // directory another user can write lets them plant a link or a file
      // at those names first. One that does not exist yet is fine when its
      // parent is (the agent creates it, 0700); a path that cannot be
      // walked is the agent's open to report.
      try {
        checkTrustedDirectory(dirname(resolve(output)), (message) => new Unwalkable(message), OUTPUT_DIR_FIX, { missing: 'allow' });
      } catch (err) {
        if (err instanceof UnsafePolicyFileError) {
          out.push({ pointer: '/output/path', message: `${err.problem}; the agent, running as root, writes files there, and another user could choose what they are` });
        } else if (!(err instanceof Unwalkable)) throw err;
      }
    }
    const port = c.metrics ? Number(c.metrics.listen.slice(c.metrics.listen.lastIndexOf(':') + 1)) : 0;
    if (port > 65535) out.push({ pointer: '/metrics/listen', message: `port ${port} is above 65535` });
    if (c.guard) {
      // The policy is part of the config: one it cannot load is the
      // config's error, named at guard.policy, then each of the policy
      // file's own problems at its own position.
      // Read as the agent reads it to load it (`trusted`): a file another
      // user could change is refused here too, so that a config that
      // passes --check-config (run as the agent's user) starts.
      const policy = guardPolicyFile(c.guard, file);
      try {
        loadPolicy(policy, { trusted: true });
      } catch (err) {
        if (err instanceof UnsafePolicyFileError) {
          out.push({ pointer: '/guard/policy', message: `${err.problem}; a policy another user could change is not loaded (UNSAFE_POLICY_FILE)` });
          return out;
        }
        if (!(err instanceof PolicyError)) throw err;
        const unreadable = err.problems.length === 1 && err.problems[0]!.line === undefined;
        out.push({
          pointer: '/guard/policy',
          message: unreadable ? err.problems[0]!.message : `the policy file ${policy} is not a valid policy (INVALID_POLICY): ${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}, below`,
        });
        if (!unreadable) out.push(...err.problems.map((p) => ({ ...p, file: p.file ?? policy })));
      }
    }
    return out;
  },
  error: (problems) => new ConfigError(problems),
});

/**
 * Reads, parses and validates an agent config file (YAML or JSON, UTF-8,
 * at most {@link MAX_CONFIG_BYTES}), with the policies' limits on the
 * document (nesting, repeated keys, aliases); with a `guard` section, its
 * policy file too, as the agent reads it to load it: checked as
 * `chroot-guard check` does. The agent runs as root, so the config file,
 * the guard's policy file and the output file's directory are refused when
 * a user other than root (or this process's user) could change them, by
 * the rules of `trusted-file.ts` (the output directory itself root's
 * alone: not group-writable, not even sticky).
 * @throws {ConfigError} `INVALID_CONFIG`, each problem with its line and
 * column: a config file another user could change is one problem without
 * a line (nothing of it is parsed); an output directory another user can
 * write is one at `output.path`; a guard policy that cannot be read, or
 * that another user could change, is one at `guard.policy`, one that does
 * not validate is one there too, followed by the policy's own problems at
 * their positions in the policy file.
 */
export function loadAgentConfig(file: string): AgentConfig {
  try {
    return loadDocument(agentConfig(file), file, true);
  } catch (err) {
    if (!(err instanceof UnsafePolicyFileError)) throw err;
    throw new ConfigError([{ file, pointer: '', message: `${err.problem}; a config another user could change is not used: it names the files the agent writes as root and the policy its guard enforces` }]);
  }
}

/** The guard's policy file as a path to open: a relative `policy` is taken from the directory of the config file `configFile`. */
export function guardPolicyFile(guard: NonNullable<AgentConfig['guard']>, configFile: string): string {
  return resolve(dirname(configFile), guard.policy);
}

/** `HOST:PORT` (or `[v6]:PORT`) split; the brackets of a v6 host dropped. */
export function splitListen(listen: string): { host: string; port: number } {
  const at = listen.lastIndexOf(':');
  return { host: listen.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port: Number(listen.slice(at + 1)) };
}

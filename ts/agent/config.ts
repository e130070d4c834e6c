/**
 * The agent's configuration: its types, and reading it from YAML or JSON
 * with the policies' machinery (`ts/policy/validate.ts`): the schema
 * `agent.schema.json`, errors with file, line and column.
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import type { ValidateFunction } from 'ajv';
import { checkRingBufferBytes, type AttachMode } from '../errors.js';
import { DocumentError, type PolicyProblem } from '../policy/types.js';
import { compileSchema, loadDocument, type DocumentKind } from '../policy/validate.js';

const require = createRequire(import.meta.url);

/** The agent config's JSON Schema (draft-07), as published in `agent.schema.json`. */
export const agentSchema: Record<string, unknown> = require('chroot-guard/agent.schema.json') as Record<string, unknown>;

/** Largest config file, in bytes: a config is a few lines. */
export const MAX_CONFIG_BYTES = 64 * 1024;

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

/**
 * Sections a later version of the agent will take: named as not yet
 * supported, not as unknown keys, and never ignored.
 */
const NOT_YET: Record<string, string> = {
  guard: 'the agent does not run a guard yet (a later version will); run `chroot-guard enforce --pin --policy FILE` beside it for now',
};

let validator: ValidateFunction | undefined;

const AGENT_CONFIG: DocumentKind<AgentConfig> = {
  noun: 'agent config',
  maxBytes: MAX_CONFIG_BYTES,
  schema: () => (validator ??= compileSchema(agentSchema)),
  before: (value) =>
    value !== null && typeof value === 'object' && !Array.isArray(value)
      ? Object.keys(value)
          .filter((k) => Object.hasOwn(NOT_YET, k))
          .map((k) => ({ pointer: `/${k}`, key: k, message: `"${k}" is not yet supported: ${NOT_YET[k]}` }))
      : [],
  semantic: (c) => {
    const out: Array<{ pointer: string; message: string }> = [];
    const ring = c.watch?.ringBufferBytes;
    if (ring !== undefined) {
      try {
        checkRingBufferBytes(ring);
      } catch {
        out.push({ pointer: '/watch/ringBufferBytes', message: `"ringBufferBytes" must be a power of two from 4096 to 1073741824; got ${ring}` });
      }
    }
    const comm = c.watch?.filters?.comm;
    if (comm !== undefined && Buffer.byteLength(comm) > 15) {
      out.push({ pointer: '/watch/filters/comm', message: `comm ${JSON.stringify(comm)} is ${Buffer.byteLength(comm)} bytes; the kernel keeps 15 (TASK_COMM_LEN - 1)` });
    }
    if (c.output?.rotate && (c.output.path ?? '-') === '-') {
      out.push({ pointer: '/output/rotate', message: '"rotate" needs a file: set output.path to one (stdout cannot be rotated)' });
    }
    const port = c.metrics ? Number(c.metrics.listen.slice(c.metrics.listen.lastIndexOf(':') + 1)) : 0;
    if (port > 65535) out.push({ pointer: '/metrics/listen', message: `port ${port} is above 65535` });
    return out;
  },
  error: (problems) => new ConfigError(problems),
};

/**
 * Reads, parses and validates an agent config file (YAML or JSON, UTF-8,
 * at most {@link MAX_CONFIG_BYTES}), with the policies' limits on the
 * document (nesting, repeated keys, aliases).
 * @throws {ConfigError} `INVALID_CONFIG`, each problem with its line and
 * column; a `guard` section is named as not yet supported.
 */
export function loadAgentConfig(file: string): AgentConfig {
  return loadDocument(AGENT_CONFIG, file);
}

/** `HOST:PORT` (or `[v6]:PORT`) split; the brackets of a v6 host dropped. */
export function splitListen(listen: string): { host: string; port: number } {
  const at = listen.lastIndexOf(':');
  return { host: listen.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port: Number(listen.slice(at + 1)) };
}

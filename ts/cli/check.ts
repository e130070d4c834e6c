/**
 * `chroot-guard check`: validates policy files without root or the kernel.
 * Its own module so that `check` loads the policy stack only (no RxJS, no
 * guard, no addon but for `exe` identities).
 * @internal
 * @module
 */
import { formatProblem, PolicyError } from '../policy/types.js';
import { loadPolicyWithWarnings } from '../policy/validate.js';
import { EXIT } from './output.js';

/** `check FILE...`: validates without root. */
export function checkCommand(files: string[], flags: { json?: boolean }): number {
  let bad = 0;
  const results = files.map((file) => {
    try {
      const { policy: p, warnings } = loadPolicyWithWarnings(file);
      if (!flags.json) {
        process.stdout.write(`${file}: ok (${p.mode}, ${p.rules.length} rule${p.rules.length === 1 ? '' : 's'}, default ${p.default ?? 'allow'})\n`);
        for (const w of warnings) process.stderr.write(`${formatProblem({ ...w, message: `warning: ${w.message}` })}\n`);
      }
      return { file, ok: true, problems: [], warnings };
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      bad++;
      if (!flags.json) for (const line of err.message.replace(/ \(INVALID_POLICY\).*$/s, '').split('\n')) process.stderr.write(`${line}\n`);
      return { file, ok: false, problems: err.problems, warnings: [] };
    }
  });
  if (flags.json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
  return bad ? EXIT.USAGE : EXIT.OK;
}

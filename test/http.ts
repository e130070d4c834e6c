/**
 * HTTP helpers for the agent's /metrics and /healthz, shared by the agent,
 * agent-guard and deploy tests.
 */
import { request } from 'node:http';
import { createServer } from 'node:net';

/** A port nothing listens on now (the kernel's pick, released at once). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/**
 * GET on 127.0.0.1 over a connection of its own (no keep-alive pool: a
 * reused idle connection the server closes at its keep-alive timeout as
 * the request goes out fails with ECONNRESET, which a slow VM makes
 * likely); the status and body, or the connection error's code (e.g.
 * `ECONNREFUSED`).
 */
export function get(port: number, path: string): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? String(err) }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? String(err) }));
    req.end();
  });
}

/** GET on 127.0.0.1 where a server must answer: status and body; throws with the error's code when none does. */
export async function answer(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await get(port, path);
  if ('error' in r) throw new Error(`GET http://127.0.0.1:${port}${path}: ${r.error}`);
  return r;
}

/**
 * The value of each sample of `name` in a Prometheus text exposition,
 * keyed by its labels as written (`{rule="x",action="deny"}`, or `` for a
 * sample without labels).
 */
export function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of text.matchAll(new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, 'gm'))) out.set(m[1] ?? '', Number(m[2]));
  return out;
}

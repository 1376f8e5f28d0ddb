/**
 * A local webhook endpoint for the tests that deliver webhooks through a real relay: a server on a
 * free loopback port that answers each request with the status `answer` decides and records every
 * request, with the Standard Webhooks headers the relay signs.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createHmac } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import assert from 'node:assert/strict';
import { waitForRows, type ServiceEnv } from './fixture.js';

export interface Received {
  path: string;
  id: string;
  timestamp: string;
  signature: string;
  /** the status the endpoint answered */
  status: number;
  body: string;
  custom: string | undefined;
}

export interface Endpoint {
  server: Server;
  url: string;
  /** the requests answered with a 2xx */
  got: Received[];
  /** every request, answered whatever way */
  all: Received[];
}

/** `answer(path, req)` decides each status; a 429 carries `retry-after: 1`. */
export async function endpoint(answer: (path: string, req: IncomingMessage) => number): Promise<Endpoint> {
  const got: Received[] = [];
  const all: Received[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '';
      const status = answer(path, req);
      const r: Received = {
        path,
        id: String(req.headers['webhook-id']),
        timestamp: String(req.headers['webhook-timestamp']),
        signature: String(req.headers['webhook-signature']),
        status,
        body: Buffer.concat(chunks).toString('utf8'),
        custom: req.headers['x-custom'] as string | undefined,
      };
      all.push(r);
      if (status < 300) got.push(r);
      res.writeHead(status, status === 429 ? { 'retry-after': '1' } : {}).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got, all };
}

/** Whether the request's `webhook-signature` holds the v1 HMAC of `id.timestamp.body` under the whsec_ secret. */
export function signedWith(secret: string, r: Received): boolean {
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const expected = createHmac('sha256', key).update(`${r.id}.${r.timestamp}.${r.body}`).digest('base64');
  return r.signature.split(' ').includes(`v1,${expected}`);
}

/**
 * The webhook scenario's rules of table tb_order, for any backend: INSERT to
 * fraiseql.order.created with a signed webhook (`<prefix>_HOOK_URL`, `<prefix>_HOOK_SECRET`, 50
 * attempts), DELETE to fraiseql.order.deleted with one that gives up after 2
 * (`<prefix>_BROKEN_HOOK_URL`).
 */
export function orderHookRules(prefix: string): string {
  return `
[[observers.rules]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.created"
[[observers.rules.actions]]
type = "webhook"
url_env = "${prefix}_HOOK_URL"
signing_secret_env = "${prefix}_HOOK_SECRET"
max_attempts = 50

[[observers.rules]]
table = "tb_order"
event = "DELETE"
subject = "fraiseql.order.deleted"
[[observers.rules.actions]]
type = "webhook"
url_env = "${prefix}_BROKEN_HOOK_URL"
max_attempts = 2
`;
}

/** The one dead letter once it is recorded, which must be a webhook's. */
export async function webhookDeadLetter(env: ServiceEnv, timeoutMs: number): Promise<{ attempts: number; error: string }> {
  const dl = await waitForRows(
    () =>
      env.sql<{ direction: string; attempts: number; error: string }>(`SELECT direction, attempts, error FROM fraiseql_relay.dead_letter`),
    timeoutMs,
  );
  assert.equal(dl.length, 1);
  assert.equal(dl[0]!.direction, 'webhook');
  return dl[0]!;
}

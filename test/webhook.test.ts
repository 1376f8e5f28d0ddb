import { test, describe, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  deliverOnce,
  deliverWithRetries,
  resolveWebhookTarget,
  retryDelayMs,
  signStandardWebhook,
  type DeliveryResult,
  type WebhookTarget,
} from '../src/webhook/deliver.js';
import type { RuleAction } from '../src/config/types.js';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

// every assert.ok carries a message: without one, Node 20 re-reads the (tsx-transpiled) source
// to build it and can hang instead of failing

type Reply = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** A real local HTTP server; each request takes the next reply from `replies` (the last one repeats). */
let server: http.Server;
let base: string;
let seen: Seen[] = [];
let replies: Reply[] = [];
const held: http.ServerResponse[] = [];

const status =
  (code: number, headers: Record<string, string> = {}): Reply =>
  (_req, res) => {
    res.writeHead(code, headers);
    res.end('{"reply":true}');
  };

before(async () => {
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) });
      const reply = replies.length > 1 ? replies.shift()! : (replies[0] ?? status(200));
      reply(req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  for (const r of held) r.destroy();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(() => {
  seen = [];
  replies = [status(200)];
});

function target(over: Partial<WebhookTarget> = {}): WebhookTarget {
  return { url: `${base}/hook`, method: 'POST', headers: {}, timeoutMs: 5000, maxAttempts: 5, ...over };
}

function action(over: Partial<RuleAction> = {}): RuleAction {
  return { type: 'webhook', method: 'POST', headers: {}, timeout: 5000, max_attempts: 5, ...over };
}

/** Verifies a `webhook-signature` header the way a Standard Webhooks receiver does. */
function verifies(secret: Buffer, h: http.IncomingHttpHeaders, body: Buffer): boolean {
  const id = String(h['webhook-id']);
  const ts = String(h['webhook-timestamp']);
  const expected = createHmac('sha256', secret)
    .update(`${id}.${ts}.${body.toString('utf8')}`)
    .digest();
  return String(h['webhook-signature'] ?? '')
    .split(' ')
    .some((entry) => {
      const [version, sig] = entry.split(',');
      if (version !== 'v1' || sig === undefined) return false;
      const got = Buffer.from(sig, 'base64');
      return got.length === expected.length && timingSafeEqual(got, expected);
    });
}

/** A sleep that records the requested delay and returns at once. */
function recordingSleep(): { delays: number[]; sleep: (ms: number) => Promise<void> } {
  const delays: number[] = [];
  return { delays, sleep: (ms) => (delays.push(ms), Promise.resolve()) };
}

const body = Buffer.from(JSON.stringify({ id: 'e1', entity: { name: 'Zoë ✓' } }));

describe('signStandardWebhook', () => {
  test('matches the Standard Webhooks reference vector', () => {
    const secret = resolveWebhookTarget(action({ url: base, signing_secret_env: 'S' }), {
      S: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    }).secret!;
    const sig = signStandardWebhook(secret, 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, Buffer.from('{"test": 2432232314}'));
    assert.equal(sig, 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=');
  });
});

describe('deliverOnce', () => {
  test('2xx succeeds; signed with a whsec_ secret, the signature verifies', async () => {
    const key = randomBytes(24);
    const t = resolveWebhookTarget(action({ url: `${base}/hook`, signing_secret_env: 'HOOK_SECRET' }), {
      HOOK_SECRET: `whsec_${key.toString('base64')}`,
    });
    assert.deepEqual(t.secret, key);
    replies = [status(204)];
    const before = Math.floor(Date.now() / 1000);
    const r = await deliverOnce(t, 'msg_1', body);
    assert.deepEqual(r, { ok: true, status: 204 });
    assert.equal(seen.length, 1);
    const s = seen[0]!;
    assert.equal(s.method, 'POST');
    assert.equal(s.url, '/hook');
    assert.deepEqual(s.body, body);
    assert.equal(s.headers['content-type'], 'application/json');
    assert.equal(s.headers['user-agent'], 'fraiseql-relay');
    assert.equal(s.headers['webhook-id'], 'msg_1');
    const ts = Number(s.headers['webhook-timestamp']);
    assert.ok(Number.isInteger(ts) && ts >= before && ts <= Math.floor(Date.now() / 1000), `timestamp ${ts}`);
    assert.ok(verifies(key, s.headers, s.body), 'signature verifies with the decoded whsec_ key');
    // the whsec_ string itself is not the key
    assert.ok(!verifies(Buffer.from(`whsec_${key.toString('base64')}`), s.headers, s.body), 'the whsec_ string is not the key');
  });

  test('a plain (non-whsec_) secret signs with its UTF-8 bytes; the injected clock sets the timestamp', async () => {
    const t = resolveWebhookTarget(action({ url: `${base}/hook`, signing_secret_env: 'S' }), { S: 'plain-sécret' });
    assert.deepEqual(t.secret, Buffer.from('plain-sécret', 'utf8'));
    const r = await deliverOnce(t, 'msg_2', body, undefined, () => 1_700_000_000_999);
    assert.equal(r.ok, true);
    assert.equal(seen[0]!.headers['webhook-timestamp'], '1700000000');
    assert.ok(verifies(Buffer.from('plain-sécret', 'utf8'), seen[0]!.headers, seen[0]!.body), 'signature verifies');
  });

  test('no secret: no signature header', async () => {
    const r = await deliverOnce(target(), 'msg_3', body);
    assert.equal(r.ok, true);
    assert.equal(seen[0]!.headers['webhook-signature'], undefined);
    assert.equal(seen[0]!.headers['webhook-id'], 'msg_3');
  });

  test('custom method and headers are sent; webhook-* headers cannot be overridden', async () => {
    const t = resolveWebhookTarget(
      action({
        url_env: 'HOOK_URL',
        method: 'put',
        headers: { 'X-Api-Key': 'k-123', 'Content-Type': 'application/vnd.test+json', 'webhook-id': 'forged' },
      }),
      { HOOK_URL: `${base}/put-here?x=1` },
    );
    assert.equal(t.method, 'PUT');
    const r = await deliverOnce(t, 'msg_4', body, { 'x-extra': 'yes' });
    assert.equal(r.ok, true);
    const s = seen[0]!;
    assert.equal(s.method, 'PUT');
    assert.equal(s.url, '/put-here?x=1');
    assert.equal(s.headers['x-api-key'], 'k-123');
    assert.equal(s.headers['content-type'], 'application/vnd.test+json');
    assert.equal(s.headers['x-extra'], 'yes');
    assert.equal(s.headers['webhook-id'], 'msg_4');
  });

  test('status classification: 408/429/5xx transient, other 4xx and 3xx permanent', async () => {
    const cases: Array<[number, boolean]> = [
      [400, true],
      [401, true],
      [404, true],
      [410, true],
      [422, true],
      [301, true],
      [408, false],
      [429, false],
      [500, false],
      [502, false],
      [503, false],
    ];
    for (const [code, permanent] of cases) {
      replies = [status(code, code === 301 ? { location: `${base}/elsewhere` } : {})];
      seen = [];
      const r = await deliverOnce(target(), 'msg_c', body);
      assert.equal(r.ok, false, `HTTP ${code}`);
      if (!r.ok) {
        assert.equal(r.permanent, permanent, `HTTP ${code} permanent`);
        assert.equal(r.status, code);
        assert.match(r.error, new RegExp(`^POST 127\\.0\\.0\\.1:\\d+/hook: HTTP ${code}`));
      }
      assert.equal(seen.length, 1, `HTTP ${code}: redirect not followed, one request`);
    }
  });

  test('Retry-After as an HTTP date on 503 is measured from the injected clock', async () => {
    const now = Date.parse('2024-01-01T00:00:00Z');
    replies = [status(503, { 'retry-after': 'Mon, 01 Jan 2024 00:00:30 GMT' })];
    const r = await deliverOnce(target(), 'msg_d', body, undefined, () => now);
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.retryAfterMs, 30_000);
    // ignored on statuses other than 429/503
    replies = [status(500, { 'retry-after': '5' })];
    const r2 = await deliverOnce(target(), 'msg_d', body);
    assert.equal(!r2.ok && r2.retryAfterMs, undefined);
  });

  test('a timeout is transient', async () => {
    replies = [(_req, res) => void held.push(res)]; // never answers
    const started = Date.now();
    const r = await deliverOnce(target({ timeoutMs: 200 }), 'msg_t', body);
    const took = Date.now() - started;
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.permanent, false);
      assert.equal(r.status, undefined);
      assert.match(r.error, /timed out after 200 ms/);
    }
    assert.ok(took >= 150 && took < 3000, `took ${took} ms`);
  });

  test('connection refused is transient', async () => {
    const port = await freePort();
    const r = await deliverOnce(target({ url: `http://127.0.0.1:${port}/hook` }), 'msg_r', body);
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.permanent, false);
      assert.equal(r.status, undefined);
      assert.match(r.error, /^POST 127\.0\.0\.1:\d+\/hook: .*ECONNREFUSED/);
    }
  });
});

describe('deliverWithRetries', () => {
  test('410 is permanent: one attempt, no sleep', async () => {
    replies = [status(410)];
    const { delays, sleep } = recordingSleep();
    const res = await deliverWithRetries(target(), 'msg_g', body, { sleep });
    assert.equal(res.delivered, false);
    assert.equal(res.attempts, 1);
    assert.equal(seen.length, 1);
    assert.deepEqual(delays, []);
    assert.equal(!res.last.ok && res.last.permanent, true);
    assert.equal(!res.last.ok && res.last.status, 410);
  });

  test('500, 500, then 200: delivered on attempt 3 with the same webhook-id and fresh signatures', async () => {
    const key = randomBytes(32);
    replies = [status(500), status(500), status(200)];
    const { delays, sleep } = recordingSleep();
    const attempts: Array<[number, DeliveryResult]> = [];
    const res = await deliverWithRetries(target({ secret: key }), 'msg_x', body, {
      sleep,
      onAttempt: (n, r) => attempts.push([n, r]),
    });
    assert.equal(res.delivered, true);
    assert.equal(res.attempts, 3);
    assert.deepEqual(res.last, { ok: true, status: 200 });
    assert.deepEqual(
      attempts.map(([n, r]) => [n, r.ok, r.ok ? r.status : r.status]),
      [
        [1, false, 500],
        [2, false, 500],
        [3, true, 200],
      ],
    );
    assert.equal(delays.length, 2);
    assert.ok(delays[0]! <= 1000 && delays[1]! <= 2000, `backoff ${delays.join(', ')}`);
    assert.equal(seen.length, 3);
    assert.deepEqual(new Set(seen.map((s) => s.headers['webhook-id'])), new Set(['msg_x']));
    for (const s of seen) assert.ok(verifies(key, s.headers, s.body), 'every attempt is signed');
  });

  test('429 with Retry-After: 1 waits at least 1 s before the next attempt', async () => {
    replies = [status(429, { 'retry-after': '1' }), status(200)];
    const { delays, sleep } = recordingSleep();
    const res = await deliverWithRetries(target(), 'msg_429', body, { sleep });
    assert.equal(res.delivered, true);
    assert.equal(res.attempts, 2);
    assert.equal(delays.length, 1);
    assert.ok(delays[0]! >= 1000, `delay ${delays[0]} ms`);
    assert.ok(delays[0]! <= 1000 + 1000, `delay ${delays[0]} ms is backoff or Retry-After, not more`);
  });

  test('max_attempts is honoured', async () => {
    replies = [status(503)];
    const { delays, sleep } = recordingSleep();
    const t = resolveWebhookTarget(action({ url: `${base}/hook`, max_attempts: 3 }), {});
    assert.equal(t.maxAttempts, 3);
    const res = await deliverWithRetries(t, 'msg_m', body, { sleep });
    assert.equal(res.delivered, false);
    assert.equal(res.attempts, 3);
    assert.equal(seen.length, 3);
    assert.equal(delays.length, 2, 'no sleep after the last attempt');
    assert.equal(!res.last.ok && res.last.permanent, false);
  });

  test('an aborted signal stops the retries', async () => {
    replies = [status(500)];
    const ac = new AbortController();
    const res = await deliverWithRetries(target({ maxAttempts: 10 }), 'msg_a', body, {
      signal: ac.signal,
      sleep: () => new Promise<void>(() => ac.abort()), // aborts during the first backoff, never resolves
    });
    assert.equal(res.delivered, false);
    assert.equal(res.attempts, 1);
    assert.equal(seen.length, 1);

    const pre = new AbortController();
    pre.abort();
    const none = await deliverWithRetries(target(), 'msg_a', body, { signal: pre.signal });
    assert.equal(none.attempts, 0);
    assert.equal(none.delivered, false);
    assert.equal(seen.length, 1);
  });
});

describe('retryDelayMs', () => {
  const transient: DeliveryResult = { ok: false, permanent: false, status: 500, error: 'x' };

  test('full jitter within 500 ms · 2^attempt, capped at 60 s', () => {
    for (let i = 0; i < 200; i++) {
      const d1 = retryDelayMs(1, transient);
      assert.ok(d1 >= 0 && d1 <= 1000, `attempt 1: ${d1}`);
      const d20 = retryDelayMs(20, transient);
      assert.ok(d20 >= 0 && d20 <= 60_000, `attempt 20: ${d20}`);
    }
    const many = Array.from({ length: 200 }, () => retryDelayMs(10, transient));
    assert.ok(new Set(many).size > 20, 'jittered');
    assert.ok(Math.max(...many) > 30_000, 'spread over the capped range');
  });

  test('at least Retry-After, which is capped at 10 minutes', () => {
    for (let i = 0; i < 50; i++) {
      assert.ok(retryDelayMs(1, { ...transient, status: 429, retryAfterMs: 5000 }) >= 5000, 'at least Retry-After');
      assert.equal(retryDelayMs(1, { ...transient, status: 429, retryAfterMs: 3_600_000 }), 600_000);
    }
  });
});

describe('resolveWebhookTarget', () => {
  test('url from url_env; fields mapped', () => {
    const t = resolveWebhookTarget(action({ url_env: 'ORDER_WEBHOOK_URL', timeout: 1234, max_attempts: 2, headers: { a: 'b' } }), {
      ORDER_WEBHOOK_URL: 'https://hooks.example.com/x',
    });
    assert.deepEqual(t, {
      url: 'https://hooks.example.com/x',
      method: 'POST',
      headers: { a: 'b' },
      timeoutMs: 1234,
      maxAttempts: 2,
    });
  });

  test('an unset or empty url_env variable is an error naming it', () => {
    assert.throws(() => resolveWebhookTarget(action({ url_env: 'ORDER_WEBHOOK_URL' }), {}), /ORDER_WEBHOOK_URL/);
    assert.throws(() => resolveWebhookTarget(action({ url_env: 'ORDER_WEBHOOK_URL' }), { ORDER_WEBHOOK_URL: '' }), /ORDER_WEBHOOK_URL/);
  });

  test('an unset signing secret variable, or a broken whsec_ value, is an error naming it and not quoting it', () => {
    assert.throws(() => resolveWebhookTarget(action({ url: base, signing_secret_env: 'HOOK_SECRET' }), {}), /HOOK_SECRET/);
    assert.throws(
      () => resolveWebhookTarget(action({ url: base, signing_secret_env: 'HOOK_SECRET' }), { HOOK_SECRET: 'whsec_!!not*base64' }),
      (e: Error) => /HOOK_SECRET/.test(e.message) && !e.message.includes('not*base64'),
    );
  });

  test('a bad URL from the environment is an error that does not quote it', () => {
    assert.throws(
      () => resolveWebhookTarget(action({ url_env: 'U' }), { U: 'ftp://user:pw-secret@h/x' }),
      (e: Error) => /\bU\b/.test(e.message) && !e.message.includes('pw-secret'),
    );
  });
});

describe('secrets never appear in errors', () => {
  const pass = 'p4ss-w0rd-xyz';
  const query = 'token=qry-tok-987';
  const secretText = 'sign-secret-4321';

  function secretTarget(url: string, over: Partial<WebhookTarget> = {}): WebhookTarget {
    return target({ url, secret: Buffer.from(secretText), maxAttempts: 1, ...over });
  }

  function assertClean(error: string): void {
    for (const s of [pass, 'qry-tok-987', query, 'alice', secretText, Buffer.from(secretText).toString('base64')]) {
      assert.ok(!error.includes(s), `error ${JSON.stringify(error)} contains ${s}`);
    }
    assert.match(error, /^POST 127\.0\.0\.1:\d+\/hook: /);
  }

  test('URL credentials go as Basic authorization; HTTP error text names only method, host, path, status', async () => {
    replies = [status(500)];
    const r = await deliverOnce(secretTarget(`http://alice:${pass}@${base.slice(7)}/hook?${query}`), 'msg_s', body);
    assert.equal(r.ok, false);
    assert.equal(seen[0]!.url, `/hook?${query}`);
    assert.equal(seen[0]!.headers.authorization, `Basic ${Buffer.from(`alice:${pass}`).toString('base64')}`);
    if (!r.ok) {
      assertClean(r.error);
      assert.match(r.error, /HTTP 500/);
    }
  });

  test('a status text echoing the query string is scrubbed', async () => {
    replies = [
      (_req, res) => {
        res.statusMessage = `bad ${query} alice ${pass}`;
        res.writeHead(400);
        res.end();
      },
    ];
    const r = await deliverOnce(secretTarget(`http://alice:${pass}@${base.slice(7)}/hook?${query}`), 'msg_s', body);
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.permanent, true);
      assertClean(r.error);
    }
  });

  test('timeout and connection-refused errors are clean too', async () => {
    replies = [(_req, res) => void held.push(res)];
    const t1 = await deliverOnce(secretTarget(`http://alice:${pass}@${base.slice(7)}/hook?${query}`, { timeoutMs: 100 }), 'msg_s', body);
    assert.equal(t1.ok, false);
    if (!t1.ok) assertClean(t1.error);

    const port = await freePort();
    const res = await deliverWithRetries(secretTarget(`http://alice:${pass}@127.0.0.1:${port}/hook?${query}`), 'msg_s', body);
    assert.equal(res.delivered, false);
    if (!res.last.ok) assertClean(res.last.error);
    else assert.fail('expected a failure');
  });
});

/** A port nothing listens on (bound, then closed). */
async function freePort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

#!/usr/bin/env node
// The order service example, end to end, in one command (see README.md next to this file):
//
//   node examples/order-service/run.mjs
//
// It starts a throwaway PostgreSQL and nats-server (src/local/, as `fraiseql-relay demo` does) and a
// tiny HTTP server standing in for the shipping partner's webhook endpoint, creates the database
// "orders" with schema.sql, and starts the relay on fraiseql.toml the way `fraiseql-relay run
// --migrate` does (migrate, then run). Then it commits a few mutations, plays the payment service
// (payment events on fraiseql.payment.captured, one of them delivered twice), and prints what
// arrived: the stream, what the subscribed handler did, and what the webhook endpoint received.
// Exit code 0 when everything arrived exactly as expected. Nothing is left behind.
import { Buffer } from 'node:buffer';
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { connect as natsConnect, headers as natsHeaders } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { register } from 'tsx/esm/api';

// the relay's TypeScript sources, as `npx fraiseql-relay` runs them when dist/ is absent
register();
const { LocalPostgres } = await import('../../src/local/postgres.ts');
const { LocalNats } = await import('../../src/local/nats.ts');
const { createLogger, loadConfig, startDaemon } = await import('../../src/index.ts');

const HERE = dirname(fileURLToPath(import.meta.url));
const out = (s = '') => process.stdout.write(s + '\n');
const short = (id) => String(id).slice(0, 8);

async function waitFor(what, timeoutMs, fn) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return true;
    await sleep(100);
  }
  out(`  ✘ timed out waiting for ${what}`);
  return false;
}

/** The shipping partner: verifies each request's Standard Webhooks signature and keeps it. */
function webhookReceiver(secret) {
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const id = req.headers['webhook-id'];
      const ts = req.headers['webhook-timestamp'];
      const expected = createHmac('sha256', key).update(`${id}.${ts}.`).update(body).digest();
      const valid = String(req.headers['webhook-signature'] ?? '')
        .split(' ')
        .some((s) => {
          const sig = Buffer.from(s.replace(/^v1,/, ''), 'base64');
          return sig.length === expected.length && timingSafeEqual(sig, expected);
        });
      received.push({ id, valid, event: JSON.parse(body.toString('utf8')) });
      res.writeHead(valid ? 204 : 401).end();
    });
  });
  return { server, received };
}

const log = createLogger(process.env.LOG_LEVEL ?? 'warn');
out('order-service example: a throwaway PostgreSQL and NATS JetStream, a webhook endpoint, the relay…');
const pgServer = await LocalPostgres.start();
let nats = null;
let daemon = null;
let nc = null;
const secret = `whsec_${randomBytes(24).toString('base64')}`;
const hook = webhookReceiver(secret);
let ok = false;
try {
  nats = await LocalNats.start();
  await new Promise((r) => hook.server.listen(0, '127.0.0.1', r));
  const hookUrl = `http://127.0.0.1:${hook.server.address().port}/hooks/shipping`;
  const databaseUrl = await pgServer.createDatabase('orders');
  const db = new pg.Pool({ connectionString: databaseUrl, max: 2 });
  await db.query(readFileSync(join(HERE, 'schema.sql'), 'utf8'));

  // what a deployment puts in the environment; the webhook URL and secret are read when the relay starts
  Object.assign(process.env, {
    DATABASE_URL: databaseUrl,
    NATS_URL: nats.url,
    ORDER_WEBHOOK_URL: hookUrl,
    ORDER_WEBHOOK_SECRET: secret,
  });
  const config = loadConfig(join(HERE, 'fraiseql.toml'));
  config.relay.listen = '127.0.0.1:0'; // /livez, /readyz and /metrics on a free port, not 9464
  // `fraiseql-relay run --migrate`: migrate under its advisory lock, then run
  daemon = await startDaemon(config, log, { migrate: true, backoffMinMs: 200, backoffMaxMs: 2000 });
  out(`  PostgreSQL on port ${pgServer.port} (database orders), NATS on ${nats.url}, webhook endpoint ${hookUrl}`);
  out(
    `  relay running: slot ${config.relay.slot}, publication ${config.relay.publication} (${config.relay.derivedNames?.from ?? 'as written'})`,
  );
  out(`  /readyz on http://127.0.0.1:${daemon.port}/readyz`);
  out();

  // 1. mutations: three orders
  const orders = [];
  for (const [customer, total] of [
    ['alice', 42],
    ['bob', 17.5],
    ['carol', 99.9],
  ]) {
    const r = await db.query(`SELECT entity_id::text AS id FROM app.fn_create_order($1, $2)`, [customer, total]);
    orders.push({ id: r.rows[0].id, customer, total });
  }
  out(`  committed: create_order × 3 (${orders.map((o) => o.customer).join(', ')})`);

  // 2. the payment service: payments for alice's and bob's orders; bob's is delivered twice
  nc = await natsConnect({ servers: nats.url });
  const js = jetstream(nc);
  const payments = orders.slice(0, 2).map((o) => ({ id: `pay-${o.customer}`, eventId: randomUUID(), order: o }));
  const publishPayment = async (p, msgId) => {
    const h = natsHeaders();
    h.set('Nats-Msg-Id', msgId);
    h.set('Fraiseql-Event-Id', p.eventId);
    const body = {
      event_id: p.eventId,
      id: p.id,
      entity_type: 'Payment',
      operation: 'INSERT',
      entity: { order_id: p.order.id, amount: p.order.total },
    };
    await js.publish('fraiseql.payment.captured', JSON.stringify(body), { headers: h });
  };
  for (const p of payments) await publishPayment(p, `${p.eventId}:fraiseql.payment.captured`);
  await publishPayment(payments[1], `${payments[1].eventId}:redelivered`); // a second copy JetStream stores
  out(`  payment service: 2 payments published on fraiseql.payment.captured, bob's twice`);

  // 3. the handler marks the orders paid; then alice's ships
  await waitFor('both payments to be applied', 20_000, async () => {
    const r = await db.query(`SELECT count(*)::int AS n FROM app.tb_order WHERE status = 'paid'`);
    return r.rows[0].n === 2;
  });
  const shipped = await db.query(`SELECT (r).succeeded FROM app.fn_ship_order($1) r`, [orders[0].id]);
  out(`  committed: ship_order (alice): ${shipped.rows[0].succeeded ? 'shipped' : 'refused'}`);

  // 4. what arrived
  const jsm = await jetstreamManager(nc);
  await waitFor('the events in JetStream', 20_000, async () => {
    const subjects = await jsm.streams.info('FRAISEQL', { subjects_filter: 'fraiseql.order.>' });
    const n = Object.values(subjects.state.subjects ?? {}).reduce((a, b) => a + b, 0);
    return n >= 6;
  });
  await waitFor('the webhook deliveries', 20_000, async () => hook.received.length >= 3);
  await sleep(500); // anything more would show up now

  const messages = [];
  const consumer = await js.consumers.get('FRAISEQL');
  const info = await jsm.streams.info('FRAISEQL');
  for await (const m of await consumer.fetch({ max_messages: info.state.messages, expires: 3000 })) {
    messages.push(m);
    if (m.seq >= info.state.last_seq) break;
  }
  const width = Math.max(...messages.map((m) => m.subject.length));
  out();
  out('  JetStream stream FRAISEQL');
  out(`  seq  ${'subject'.padEnd(width)}  operation  event`);
  for (const m of messages) {
    const b = m.json();
    const what =
      m.subject === 'fraiseql.payment.captured'
        ? `payment ${b.id} for order ${short(b.entity.order_id)} (from the payment service)`
        : m.subject === 'fraiseql.order.created'
          ? `order ${short(b.id)} ${b.entity.customer} ${b.entity.total} (mutation ${b.mutation})`
          : m.subject === 'fraiseql.order.updated'
            ? `order ${short(b.entity.id)} ${b.entity_before?.status} → ${b.entity.status} (table rule on app.tb_order)`
            : `the same change, queued for the webhook (delivered in order by a durable consumer)`;
    out(`  ${String(m.seq).padEnd(3)}  ${m.subject.padEnd(width)}  ${(b.operation ?? '').padEnd(9)}  ${what}`);
  }

  const handled = await db.query(
    `SELECT (SELECT count(*)::int FROM fraiseql_relay.inbox) AS inbox, (SELECT count(*)::int FROM app.tb_payment) AS payments`,
  );
  const deliveries = messages.filter((m) => m.subject === 'fraiseql.payment.captured').length;
  out();
  out('  subscription fraiseql.payment.captured → app.fn_apply_payment (exactly once per event)');
  out(
    `  ${deliveries} messages, ${handled.rows[0].inbox} events in the inbox, ${handled.rows[0].payments} payments applied: ` +
      `the second copy of bob's payment was skipped`,
  );
  out();
  out(`  webhook endpoint (signed, Standard Webhooks)`);
  for (const r of hook.received) {
    out(
      `  webhook-id ${r.id}  order ${short(r.event.entity.id)} ${r.event.entity_before?.status} → ${r.event.entity.status}  ` +
        `signature ${r.valid ? 'valid' : 'INVALID'}`,
    );
  }

  const statuses = (await db.query(`SELECT customer, status FROM app.tb_order ORDER BY customer`)).rows;
  const count = (s) => messages.filter((m) => m.subject === s).length;
  ok =
    count('fraiseql.order.created') === 3 &&
    count('fraiseql.order.updated') === 3 &&
    deliveries === 3 &&
    handled.rows[0].inbox === 2 &&
    handled.rows[0].payments === 2 &&
    hook.received.length === 3 &&
    hook.received.every((r) => r.valid) &&
    JSON.stringify(statuses) ===
      JSON.stringify([
        { customer: 'alice', status: 'shipped' },
        { customer: 'bob', status: 'paid' },
        { customer: 'carol', status: 'new' },
      ]);
  out();
  out(
    ok
      ? '  ✔ 3 orders published, 2 payments applied once each, 3 order updates published and delivered to the webhook, signed'
      : '  ✘ something did not arrive as expected (see above)',
  );
  await db.end();
} catch (err) {
  out(`  ✘ ${err instanceof Error ? err.message : String(err)}`);
} finally {
  await nc?.close().catch(() => {});
  await daemon?.stop().catch(() => {});
  hook.server.close();
  await nats?.destroy().catch(() => {});
  await pgServer.destroy().catch(() => {});
}
process.exit(ok ? 0 : 1);

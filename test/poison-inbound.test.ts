/**
 * Whatever arrives on a subscribed subject is either applied or dead-lettered in a form the
 * table can store, and the consumer goes on: each poison message is published between two
 * ordinary events, and both ordinary events must be applied within seconds.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, sleep } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';

const TOML = `
[project]
name = "inventory-service"

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.subscribe]]
subject = "fraiseql.poison.in"
handler = "app.fn_apply"
max_deliver = 5
backoff = ["100ms"]

[relay]
listen = "127.0.0.1:0"
`;

const HANDLERS = `
CREATE SCHEMA app;
CREATE TABLE app.applied (n text PRIMARY KEY, event jsonb);
CREATE FUNCTION app.fn_apply(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO app.applied VALUES (coalesce(p_event->>'n', md5(p_event::text)), p_event) $$;
`;

let env: TestEnv;
let relay: Relay;
let nc: NatsConnection;

async function publish(body: string | Uint8Array, headers: Record<string, string> = {}): Promise<void> {
  const h = natsHeaders();
  for (const [k, v] of Object.entries(headers)) h.set(k, v);
  await jetstream(nc).publish('fraiseql.poison.in', body, { headers: h });
}

before(async () => {
  env = await TestEnv.create({ toml: TOML });
  await env.migrate();
  await env.sql(HANDLERS);
  nc = await env.natsClient();
  await (await jetstreamManager(nc)).streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'] });
  relay = await env.startRelay();
});

after(async () => {
  await nc?.close();
  await relay?.stop();
  await env?.destroy();
});

const LONG_ID = 'evt-' + 'x'.repeat(10_000);

/** Waits until `sql` returns `n` rows; returns how many it returned last. */
async function waitForCount(sql: string, n: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let rows = await env.sql(sql);
  while (rows.length < n && Date.now() < deadline) {
    await sleep(50);
    rows = await env.sql(sql);
  }
  return rows.length;
}

const CASES: { name: string; body: string | Uint8Array; headers?: Record<string, string>; outcome: 'applied' | RegExp }[] = [
  { name: 'a raw NUL byte in the body', body: Buffer.from('{"n":"nul","v":"a\u0000b"}', 'utf8'), outcome: /not JSON/ },
  { name: 'a \\u0000 escape jsonb cannot hold', body: '{"n":"esc","v":"a\\u0000b"}', outcome: /22P05/ },
  { name: 'bytes that are not UTF-8', body: Uint8Array.from([0x7b, 0x22, 0x6e, 0x22, 0x3a, 0xff, 0xfe, 0x7d]), outcome: /not valid UTF-8/ },
  { name: 'an event id of 10,000 characters', body: '{"n":"long-id"}', headers: { 'Fraiseql-Event-Id': LONG_ID }, outcome: 'applied' },
  { name: 'a body of 900 KB', body: JSON.stringify({ n: 'big', pad: 'y'.repeat(900_000) }), outcome: 'applied' },
];

test('poison messages never stop the consumer: each is applied or dead-lettered, and the events around it are applied', async () => {
  let k = 0;
  for (const c of CASES) {
    k++;
    await publish(JSON.stringify({ n: `before-${k}` }));
    await publish(c.body, c.headers);
    await publish(JSON.stringify({ n: `after-${k}` }));
    const got = await waitForCount(`SELECT n FROM app.applied WHERE n IN ('before-${k}', 'after-${k}')`, 2, 15_000);
    assert.equal(got, 2, `${c.name}: the events around it were applied within 15 s`);
    if (c.outcome === 'applied') continue;
    const dl = await env.sql<{ error: string; body: string; body_raw: Buffer | null; attempts: number }>(
      `SELECT error, body, body_raw, attempts FROM fraiseql_relay.dead_letter WHERE direction = 'inbound' ORDER BY id DESC LIMIT 1`,
    );
    assert.equal(dl.length, 1, `${c.name}: dead-lettered`);
    assert.match(dl[0]!.error, c.outcome, `${c.name}: the reason`);
    assert.ok(!dl[0]!.body.includes('\u0000'), `${c.name}: the stored body holds no NUL`);
    if (typeof c.body !== 'string') assert.deepEqual(dl[0]!.body_raw, Buffer.from(c.body), `${c.name}: the original bytes are kept`);
    await env.sql(`DELETE FROM fraiseql_relay.dead_letter`);
  }
  const [long] = await env.sql<{ event_id: string }>(`SELECT event_id FROM fraiseql_relay.inbox WHERE event_id LIKE 'evt-xxx%'`);
  assert.ok(
    long && long.event_id.length < 1000 && /sha256:[0-9a-f]{64}$/.test(long.event_id),
    'an over-long event id is stored shortened with its hash',
  );
  const big = await env.sql<{ n: string }>(`SELECT n FROM app.applied WHERE n IN ('long-id', 'big')`);
  assert.equal(big.length, 2, 'the long-id and large messages were applied');
});

test('a redelivered message with an over-long event id is a duplicate, not a second effect', async () => {
  const before = (await env.sql<{ c: string }>(`SELECT count(*)::text AS c FROM app.applied`))[0]!.c;
  await publish('{"n":"long-id-again"}', { 'Fraiseql-Event-Id': LONG_ID });
  await publish('{"n":"marker"}');
  assert.equal(await waitForCount(`SELECT n FROM app.applied WHERE n = 'marker'`, 1, 15_000), 1);
  const after = (await env.sql<{ c: string }>(`SELECT count(*)::text AS c FROM app.applied`))[0]!.c;
  assert.equal(Number(after), Number(before) + 1, 'only the marker was applied: the same long id is the same inbox key');
  assert.equal(relay.inboundStats.duplicates >= 1, true);
});

test('a dead letter with a subject of 6,400 characters and control characters can be written', async () => {
  const { DeadLetterWriter } = await import('../src/sink/deadletter.js');
  const w = new DeadLetterWriter(env.dbUrl, 'fraiseql_relay');
  try {
    const subject = 'a.' + 'b\u0001'.repeat(3200);
    await w.write({ direction: 'outbound', eventId: 'e1', subject, headers: { 'X-A': 'v\u0000' }, body: '{}', error: 'x', attempts: 1 });
    await w.write({ direction: 'outbound', eventId: 'e1', subject, headers: null, body: '{}', error: 'y', attempts: 1 });
    const rows = await env.sql<{ subject: string; attempts: number; original_keys: { subject: string } }>(
      `SELECT subject, attempts, original_keys FROM fraiseql_relay.dead_letter WHERE event_id = 'e1'`,
    );
    assert.equal(rows.length, 1, 'the same dead letter twice is one row');
    assert.equal(rows[0]!.attempts, 2);
    assert.ok(rows[0]!.subject.length < 1000);
    assert.equal(rows[0]!.original_keys.subject, subject, 'the whole subject is kept');
  } finally {
    await w.close();
  }
});

/**
 * backend = "redis", outbound: the NATS scenarios against a real redis-server (append-only file,
 * fsync always) that the test starts on a free port.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { RedisEnv, REDIS_TOML, LOAD, produce } from './redis-fixture.js';
import { sleep, waitForRows } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';
import { ORDER_SERVICE_SQL } from '../src/commands/demo.js';
import { RedisSink, loadAppendScript } from '../src/sink/redis.js';
import { createLogger } from '../src/util/log.js';

const ORDER = 'fraiseql.order.created';

describe('backend = "redis": publishing', () => {
  let env: RedisEnv;
  let relay: Relay;

  before(async () => {
    env = await RedisEnv.create();
    await env.migrate();
    await env.sql(ORDER_SERVICE_SQL);
    relay = await env.startRelay();
  });

  after(async () => {
    await relay?.stop();
    await env?.destroy();
  });

  test('a mutation event is appended to its subject stream with the body and the headers as fields', async () => {
    const [row] = await env.sql<{ id: string }>(
      `SELECT set_config('fraiseql.tenant_id', '11111111-1111-1111-1111-111111111111', true),
              set_config('fraiseql.user_id', 'user-7', true),
              (app.fn_create_order('ada', ARRAY['SKU-1','SKU-2'])).entity_id::text AS id`,
    );
    await env.waitForLength(ORDER, 1);
    const [e] = await env.read(ORDER);
    assert.ok(e);
    assert.equal(e.body['id'], row!.id);
    const eventId = e.body['event_id'] as string;
    assert.match(eventId, /^[0-9a-f-]{36}$/);
    assert.deepEqual(Object.keys(e.fields).slice(0, 1), ['body'], 'the body is the first field');
    assert.equal(e.fields['Fraiseql-Event-Id'], eventId);
    assert.equal(e.fields['Fraiseql-Mutation'], 'create_order');
    assert.equal(e.fields['Fraiseql-Entity-Type'], 'Order');
    assert.equal(e.fields['Fraiseql-Operation'], 'INSERT');
    assert.equal(e.fields['Fraiseql-Tenant-Id'], '11111111-1111-1111-1111-111111111111');
    assert.equal(e.fields['Nats-Msg-Id'], undefined, 'no NATS header in a Redis entry');
    assert.equal(e.body['mutation'], 'create_order');
    assert.equal(e.body['user_id'], 'user-7');
    assert.deepEqual(e.body['metadata'], { item_ids: ['SKU-1', 'SKU-2'] });
    assert.equal((e.body['entity'] as { customer: string }).customer, 'ada');
    // the de-duplication key: the entry's id, expiring with the duplicate window (10m by default)
    const c = await env.client();
    const dedup = `dedup:${eventId}:${ORDER}`;
    assert.equal(await c.sendCommand(['GET', dedup]), e.id);
    const ttl = await c.sendCommand<number>(['PTTL', dedup]);
    assert.ok(ttl > 9 * 60_000 && ttl <= 10 * 60_000, `dedup key expires in ${ttl} ms`);
  });

  test('emit() headers become fields; the body keeps the exact JSON PostgreSQL wrote', async () => {
    await env.sql(
      `SELECT fraiseql_relay.emit('fraiseql.exact.check', '{"big": 12345678901234567890123, "f": 0.1000000000000000055511151231257827}'::jsonb, '{"X-Custom": "v1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}')`,
    );
    await env.waitForLength('fraiseql.exact.check', 1);
    const [e] = await env.read('fraiseql.exact.check');
    assert.ok(e);
    assert.match(e.fields['body']!, /"big": 12345678901234567890123/);
    assert.match(e.fields['body']!, /"f": 0\.1000000000000000055511151231257827/);
    assert.equal(e.fields['X-Custom'], 'v1');
    assert.equal(e.fields['traceparent'], '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
  });

  test('a rolled-back transaction publishes nothing', async () => {
    const before = await env.length(ORDER);
    const c = new pg.Client({ connectionString: env.dbUrl });
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query(`SELECT app.fn_create_order('rolled-back', ARRAY['SKU-9'])`);
      await c.query('ROLLBACK');
      await c.query(`SELECT app.fn_create_order('committed', ARRAY['SKU-8'])`);
    } finally {
      await c.end();
    }
    await env.waitForLength(ORDER, before + 1);
    await sleep(300); // a rolled-back event would have come before the committed one
    const entries = await env.read(ORDER);
    assert.equal(entries.length, before + 1);
    assert.ok(!entries.some((e) => (e.body['entity'] as { customer?: string }).customer === 'rolled-back'));
    assert.equal((entries.at(-1)!.body['entity'] as { customer: string }).customer, 'committed');
  });

  test('10,000 events in 1,000 transactions arrive in commit order', async () => {
    const started = Date.now();
    await produce(env.dbUrl, 0, 1000, 10);
    await env.waitForLength(LOAD, 10_000);
    const ns = (await env.read(LOAD)).map((e) => (e.body['entity'] as { n: number }).n);
    assert.equal(ns.length, 10_000);
    for (let i = 0; i < ns.length; i++) assert.equal(ns[i], i, `event ${i} out of order`);
    console.log(`# 10,000 events committed and appended in ${Date.now() - started} ms`);
  });

  test('a stream key holding another type dead-letters the event; the stream goes on', async () => {
    const c = await env.client();
    await c.sendCommand(['SET', 'fraiseql.not.a.stream', 'x']);
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.not.a.stream', '{"a":1}')`);
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.after.wrongtype', '{"a":2}')`);
    await env.waitForLength('fraiseql.after.wrongtype', 1);
    const dl = await waitForRows(() =>
      env.sql<{ direction: string; error: string }>(
        `SELECT direction, error FROM fraiseql_relay.dead_letter WHERE subject = 'fraiseql.not.a.stream'`,
      ),
    );
    assert.equal(dl.length, 1);
    assert.equal(dl[0]!.direction, 'outbound');
    assert.match(dl[0]!.error, /holds a value that is not a stream/);
  });

  test('the slot is confirmed up to what Redis stored', async () => {
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after":"slot"}')`);
    await env.waitForLength('fraiseql.marker', 1);
    const deadline = Date.now() + 10_000;
    let lag = -1;
    while (Date.now() < deadline) {
      const [r] = await env.sql<{ lag: string }>(
        `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag FROM pg_replication_slots WHERE slot_name = $1`,
        [env.config().relay.slot],
      );
      lag = Number(r!.lag);
      if (lag < 1024) break;
      await sleep(200);
    }
    assert.ok(lag >= 0 && lag < 1024, `slot lag ${lag} bytes`);
  });

  test('the append script suppresses a re-sent message within the window, and appends once', async () => {
    const c = await env.client();
    await loadAppendScript(c);
    const sink = new RedisSink(c, {
      maxInFlight: 10,
      maxInFlightBytes: 1 << 20,
      timeoutMs: 5000,
      redis: env.config().relay.redis,
      log: createLogger('silent'),
    });
    const msg = {
      subject: 'fraiseql.dedup.check',
      eventId: '3f1f9b8e-0000-4000-8000-000000000001',
      headers: { 'Fraiseql-Event-Id': '3f1f9b8e-0000-4000-8000-000000000001' },
      body: Buffer.from('{"n":1}'),
    };
    const send = () =>
      new Promise<boolean>((resolve, reject) => sink.publish(msg, (err, dup) => (err ? reject(err) : resolve(dup === true))));
    assert.equal(await send(), false, 'first: appended');
    assert.equal(await send(), true, 'second: a duplicate');
    // the same event to another subject is another message
    assert.equal(
      await new Promise<boolean>((r, j) => sink.publish({ ...msg, subject: 'fraiseql.dedup.other' }, (e, d) => (e ? j(e) : r(d === true)))),
      false,
    );
    sink.close();
    assert.equal(await env.length('fraiseql.dedup.check'), 1);
    // NOSCRIPT (a restarted Redis, SCRIPT FLUSH) is an error that ends the session; the script is loaded again
    await c.sendCommand(['SCRIPT', 'FLUSH']);
    const sink2 = new RedisSink(c, {
      maxInFlight: 10,
      maxInFlightBytes: 1 << 20,
      timeoutMs: 5000,
      redis: env.config().relay.redis,
      log: createLogger('silent'),
    });
    const err = await new Promise<Error | undefined>((r) => sink2.publish({ ...msg, eventId: 'x2' }, (e) => r(e)));
    assert.match(String(err), /NOSCRIPT/);
    sink2.close();
    // the script is loaded again: a later session's append succeeds
    const again = await waitForRows(async () => {
      const sink3 = new RedisSink(c, {
        maxInFlight: 10,
        maxInFlightBytes: 1 << 20,
        timeoutMs: 5000,
        redis: env.config().relay.redis,
        log: createLogger('silent'),
      });
      const e = await new Promise<Error | undefined>((r) => sink3.publish({ ...msg, eventId: 'x3' }, (x) => r(x)));
      sink3.close();
      return e === undefined ? [1] : [];
    });
    assert.equal(again.length, 1);
  });
});

test('[relay.redis] stream_prefix and max_len: keys are prefixed, streams trimmed (approximately)', async () => {
  const env = await RedisEnv.create({
    toml: `${REDIS_TOML}\n[relay.redis]\nstream_prefix = "svc:"\nmax_len = 100\nduplicate_window = "1m"\n`,
  });
  try {
    await env.migrate();
    const relay = await env.startRelay();
    try {
      await produce(env.dbUrl, 0, 10, 100);
      await waitForRows(async () => {
        const [r] = await env.sql<{ n: string }>(
          `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS n FROM pg_replication_slots WHERE slot_name = $1`,
          [env.config().relay.slot],
        );
        return Number(r!.n) < 1024 ? [1] : [];
      }, 30_000);
      const len = await env.length(`svc:${LOAD}`);
      assert.ok(len >= 100 && len < 1000, `XLEN ${len}: trimmed to about 100`);
      assert.equal(await env.length(LOAD), 0, 'nothing under the unprefixed key');
      const entries = await env.read(`svc:${LOAD}`);
      const last = entries.at(-1)!;
      assert.equal((last.body['entity'] as { n: number }).n, 999, 'the newest entries are kept');
      const c = await env.client();
      const ttl = await c.sendCommand<number>(['PTTL', `svc:dedup:${last.body['event_id'] as string}:${LOAD}`]);
      assert.ok(ttl > 50_000 && ttl <= 60_000, `dedup key under the prefix, expiring with the 1m window (${ttl} ms)`);
    } finally {
      await relay.stop();
    }
  } finally {
    await env.destroy();
  }
});

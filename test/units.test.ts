import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { AckWatermark } from '../src/outbound/watermark.js';
import { pgTextArrayToJson, pgTimestampToIso } from '../src/route/pgtext.js';
import { subjectMatches, filterCovers } from '../src/sink/subjects.js';
import { backoffDelay } from '../src/util/backoff.js';
import { OutboxRouter, outboxRowChange } from '../src/route/outbox.js';
import { parseConfig } from '../src/config/load.js';
import { redactUrl, errorMessage } from '../src/util/errors.js';
import { splitQualified, quoteQualified } from '../src/util/db.js';

describe('AckWatermark', () => {
  test('confirms only a fully settled prefix of transactions, at commit end LSNs', () => {
    const seen: bigint[] = [];
    const w = new AckWatermark(0n, (l) => seen.push(l));
    const a = w.begin(1);
    w.add(a);
    w.add(a);
    w.commit(a, 100n);
    const b = w.begin(2);
    w.add(b);
    w.commit(b, 200n);
    w.settle(b); // b is done, but a is not: nothing may be confirmed
    assert.deepEqual(seen, []);
    w.settle(a);
    assert.deepEqual(seen, []);
    w.settle(a); // a done: both a and b now
    assert.deepEqual(seen, [200n]);
    assert.equal(w.durableLsn, 200n);
    assert.ok(w.idle);
  });

  test('a transaction without messages is confirmed at its commit', () => {
    const seen: bigint[] = [];
    const w = new AckWatermark(0n, (l) => seen.push(l));
    const t = w.begin(5);
    assert.equal(w.open, t);
    w.commit(t, 42n);
    assert.deepEqual(seen, [42n]);
  });

  test('a keepalive position is confirmed only when idle', () => {
    const seen: bigint[] = [];
    const w = new AckWatermark(10n, (l) => seen.push(l));
    const t = w.begin(1);
    w.idleAdvance(500n); // a transaction is partially read
    assert.deepEqual(seen, []);
    w.add(t);
    w.commit(t, 50n);
    w.idleAdvance(500n); // a message is unsettled
    assert.deepEqual(seen, []);
    w.settle(t);
    assert.deepEqual(seen, [50n]);
    w.idleAdvance(500n);
    w.idleAdvance(400n); // never backwards
    assert.deepEqual(seen, [50n, 500n]);
  });
});

describe('PostgreSQL text values', () => {
  test("timestamptz keeps microseconds and becomes to_jsonb's ISO 8601 in UTC", () => {
    assert.equal(pgTimestampToIso('2026-11-22 10:00:00.123456+00'), '2026-11-22T10:00:00.123456+00:00');
    assert.equal(pgTimestampToIso('2026-11-22 10:00:00+00'), '2026-11-22T10:00:00+00:00');
    assert.equal(pgTimestampToIso('2026-11-22 10:00:00.5+02'), '2026-11-22T08:00:00.5+00:00');
    assert.equal(pgTimestampToIso('2026-11-22 01:00:00.000001-05:30'), '2026-11-22T06:30:00.000001+00:00');
    assert.equal(pgTimestampToIso('2026-11-22 10:00:00.120000+00'), '2026-11-22T10:00:00.12+00:00', 'trailing zeros dropped');
    assert.equal(pgTimestampToIso('0044-03-15 10:00:00+00 BC'), '0044-03-15T10:00:00+00:00 BC');
    assert.equal(pgTimestampToIso('infinity'), 'infinity');
  });
  test('text[] literals become JSON arrays', () => {
    assert.equal(pgTextArrayToJson('{}'), '[]');
    assert.equal(pgTextArrayToJson('{name,price}'), '["name","price"]');
    assert.equal(pgTextArrayToJson('{"a b","c,d",NULL,"NULL","q\\"x"}'), '["a b","c,d",null,"NULL","q\\"x"]');
  });
});

describe('subjects', () => {
  test('wildcard matching', () => {
    assert.ok(subjectMatches('fraiseql.>', 'fraiseql.order.created'));
    assert.ok(!subjectMatches('fraiseql.>', 'fraiseql'));
    assert.ok(subjectMatches('fraiseql.*.created', 'fraiseql.order.created'));
    assert.ok(!subjectMatches('fraiseql.*', 'fraiseql.order.created'));
    assert.ok(filterCovers('fraiseql.>', 'fraiseql.order.*'));
    assert.ok(!filterCovers('fraiseql.order.*', 'fraiseql.>'));
    assert.ok(filterCovers('a.*.c', 'a.b.c'));
  });
});

test('backoff has jitter and a ceiling', () => {
  const ds = Array.from({ length: 200 }, () => backoffDelay(20, 500, 30_000));
  assert.ok(ds.every((d) => d >= 250 && d <= 30_000));
  assert.ok(new Set(ds).size > 50, 'jittered');
  assert.ok(backoffDelay(0, 500, 30_000) <= 500);
});

test('secrets are redacted from URLs and error messages', () => {
  assert.equal(redactUrl('postgres://app:s3cret@db:5432/x'), 'postgres://app:***@db:5432/x');
  assert.ok(!errorMessage(new Error('connect to nats://u:tok3n@h:4222 failed')).includes('tok3n'));
});

test('qualified names are split and quoted', () => {
  assert.deepEqual(splitQualified('App.Fn_X'), ['app', 'fn_x']);
  assert.deepEqual(splitQualified('"My Schema"."fn"'), ['My Schema', 'fn']);
  assert.equal(quoteQualified('app.fn'), '"app"."fn"');
});

describe('OutboxRouter', () => {
  const config = parseConfig(
    `[project]\nname = "svc"\n[database]\nurl = "postgres://x@h/db"\n[observers]\nnats_url = "nats://h:4222"\n` +
      `[[observers.publish]]\nmutation = "create_order"\nsubject = "fraiseql.order.created"\n` +
      `[[observers.publish]]\nmutation = "create_order"\nsubject = "audit.order"\nsubscription_topic = "order_created"\n`,
    'fraiseql.toml',
    {},
  );
  const change = (row: Record<string, string | null>) => outboxRowChange('fraiseql_relay', row, '0/16B3748', 731);
  const router = new OutboxRouter(config, 'orders');

  test('fans a mutation out to every configured subject with the same body and stable ids', () => {
    const r = router.route(
      change({
        id: '5b0c0000-0000-0000-0000-000000000001',
        subject: null,
        mutation: 'create_order',
        operation: 'CREATE',
        entity_type: 'Order',
        entity_id: 'e1',
        entity: '{"id": "e1", "total": 10.50}',
        entity_before: null,
        updated_fields: '{total}',
        metadata: '{"item_ids": ["SKU-1"]}',
        headers: null,
        tenant_id: null,
        user_id: 'u1',
        traceparent: '00-abc-def-01',
        created_at: '2026-11-22 10:00:00.123456+00',
      }),
    );
    assert.equal(r.unrouted, false);
    assert.deepEqual(
      r.messages.map((m) => m.subject),
      ['fraiseql.order.created', 'audit.order', 'fraiseql.subscription.order_created'],
    );
    const body = JSON.parse(r.messages[0]!.body.toString()) as Record<string, unknown>;
    assert.deepEqual(body, {
      event_id: '5b0c0000-0000-0000-0000-000000000001',
      id: 'e1',
      entity_type: 'Order',
      operation: 'INSERT', // a row written before migration 004 says CREATE: one vocabulary on the way out
      mutation: 'create_order',
      entity: { id: 'e1', total: 10.5 },
      entity_before: null,
      updated_fields: ['total'],
      metadata: { item_ids: ['SKU-1'] },
      tenant_id: null,
      user_id: 'u1',
      occurred_at: '2026-11-22T10:00:00.123456+00:00',
      source: { database: 'orders', schema: 'fraiseql_relay', table: 'outbox', lsn: '0/16B3748', xid: 731 },
    });
    assert.ok(r.messages[0]!.body.toString().includes('"total": 10.50'), 'jsonb text forwarded verbatim');
    assert.equal(r.messages[0]!.headers['traceparent'], '00-abc-def-01');
    assert.equal(r.messages[0]!.headers['Fraiseql-Subscription-Topic'], undefined);
    assert.equal(r.messages[1]!.headers['Fraiseql-Subscription-Topic'], 'order_created');
    assert.equal(r.messages[2]!.headers['Fraiseql-Subscription-Topic'], 'order_created');
    assert.equal(r.messages[2]!.eventId, r.messages[0]!.eventId, 'same event, its own Nats-Msg-Id per subject');
    assert.equal(r.messages[1]!.body, r.messages[0]!.body);
  });

  test('an unknown mutation is unrouted; an explicit subject wins', () => {
    assert.equal(router.route(change({ id: 'x', subject: null, mutation: 'other' })).unrouted, true);
    const r = router.route(
      change({ id: 'y', subject: 'raw.subject', mutation: null, headers: '{"X-A": "1", "Fraiseql-Event-Id": "spoof"}' }),
    );
    assert.deepEqual(
      r.messages.map((m) => m.subject),
      ['raw.subject'],
    );
    assert.equal(r.messages[0]!.headers['X-A'], '1');
    assert.equal(r.messages[0]!.headers['Fraiseql-Event-Id'], 'y', 'user headers cannot override the relay headers');
  });
});

test('a row change event id is a stable, well-formed UUID of its WAL position', async () => {
  const { walEventId, entityTypeOf } = await import('../src/route/tables.js');
  const a = walEventId(0x16b3748n, 731, 'orders');
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-8[0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(walEventId(0x16b3748n, 731, 'orders'), a, 'same change, same id');
  assert.notEqual(walEventId(0x16b3749n, 731, 'orders'), a);
  assert.notEqual(walEventId(0x16b3748n, 731, 'billing'), a);
  assert.match(walEventId(0xffffffffffffffffn, 0xffffffff, 'x'), /^ffffffff-ffff-8fff-8fff-ffffff[0-9a-f]{6}$/);
  assert.equal(entityTypeOf('tb_order'), 'Order');
  assert.equal(entityTypeOf('order_line'), 'OrderLine');
});

test('a dbname query parameter names the database, as libpq reads it', async () => {
  const { withDbnameInPath } = await import('../src/util/db.js');
  assert.equal(withDbnameInPath('postgresql://u@h:5432/?dbname=orders'), 'postgresql://u@h:5432/orders');
  assert.equal(withDbnameInPath('postgresql://u@h/other?dbname=orders&sslmode=require'), 'postgresql://u@h/orders?sslmode=require');
  assert.equal(withDbnameInPath('postgresql://u@h/db'), 'postgresql://u@h/db');
});

test('a database CA file becomes sslrootcert with verify-full, unless the URL says otherwise', async () => {
  const { withCaFile } = await import('../src/util/db.js');
  assert.equal(withCaFile('postgres://u@h/db', '/etc/ca.pem'), 'postgres://u@h/db?sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-full');
  assert.equal(
    withCaFile('postgres://u@h/db?sslmode=verify-ca', '/etc/ca.pem'),
    'postgres://u@h/db?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem',
  );
  assert.equal(withCaFile('postgres://u@h/db', undefined), 'postgres://u@h/db');
});

test('NATS authentication comes from files and the environment, never the config file', async () => {
  const { natsAuthOptions } = await import('../src/sink/natsauth.js');
  const base = { tls: false };
  assert.deepEqual(natsAuthOptions(base, {}), {});
  assert.deepEqual(natsAuthOptions({ tls: true, ca_file: '/ca.pem' }, {}).tls, { caFile: '/ca.pem' });
  assert.equal(typeof natsAuthOptions({ ...base, token_env: 'NATS_TOKEN' }, { NATS_TOKEN: 't' }).authenticator, 'function');
  assert.throws(() => natsAuthOptions({ ...base, token_env: 'NATS_TOKEN' }, {}), /token_env: environment variable NATS_TOKEN is not set/);
  assert.equal(typeof natsAuthOptions({ ...base, user_env: 'U', password_env: 'P' }, { U: 'u', P: 'p' }).authenticator, 'function');
  assert.throws(
    () => natsAuthOptions({ ...base, creds_file: '/nonexistent/x.creds' }, {}),
    /creds_file \/nonexistent\/x\.creds: cannot read it/,
  );
});

test('a certificate the client cannot verify gets a hint naming the key to set; other errors none', async () => {
  const { tlsHint } = await import('../src/util/errors.js');
  assert.match(
    tlsHint(new Error('unable to verify the first certificate'), '[relay] database_ca_file'),
    /set \[relay\] database_ca_file to the CA bundle/,
  );
  assert.match(
    tlsHint(new Error('connect failed', { cause: new Error('self-signed certificate in certificate chain') }), '[relay.nats] ca_file'),
    /\[relay\.nats\] ca_file/,
  );
  assert.match(tlsHint(new Error("Hostname/IP does not match certificate's altnames"), 'k'), /does not match the host name/);
  assert.equal(tlsHint(new Error('connection refused'), 'k'), '');
  assert.equal(tlsHint(undefined, 'k'), '');
});

/**
 * Events that cannot be forged (issue 12, point 7): with `[relay] signing_key_env` the publishing
 * relay signs every message and keys table-rule event ids; a subscribing relay dead-letters
 * unsigned and mis-signed messages before they touch the inbox, so a forged message cannot claim
 * the id of an event that is still to come. Also: key rotation, and deploy/nats/accounts.conf
 * (the NATS permissions the README documents) run against a real nats-server.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as natsConnect, headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, ROOT, sleep, waitForRows } from './fixture.js';
import { loadConfig, parseConfig, ConfigError, type Config } from '../src/config/load.js';
import { migrate } from '../src/schema/migrate.js';
import { Relay } from '../src/relay/relay.js';
import { createLogger } from '../src/util/log.js';
import { UsageError } from '../src/util/errors.js';
import { MessageKeys, SIGNATURE_HEADER } from '../src/sink/signing.js';
import { walEventId } from '../src/route/tables.js';
import { parseLsn } from '../src/source/lsn.js';
import { findNatsServer } from '../src/local/binaries.js';
import { getFreePort, waitForPortOpen } from '../src/local/ports.js';

const key = () => randomBytes(32).toString('base64');
const keysOf = (value: string) => MessageKeys.fromEnv('K', { K: value });

// ---------------------------------------------------------------- units

test('a signature covers the event id, the subject and the body', () => {
  const k = keysOf(key());
  const body = Buffer.from('{"id":"order-1"}');
  const sig = k.sign('e-1', 'fraiseql.order.created', body);
  assert.match(sig, /^v1=[A-Za-z0-9+/]{43}=$/);
  assert.equal(k.verify('e-1', 'fraiseql.order.created', body, sig), null);
  assert.equal(k.sign('e-1', 'fraiseql.order.created', body), sig, 'deterministic: a redelivered message verifies again');
  // any change refuses it: another id (a claim on someone else's event), subject or body
  assert.match(k.verify('e-2', 'fraiseql.order.created', body, sig)!, /does not match/);
  assert.match(k.verify('e-1', 'fraiseql.order.cancelled', body, sig)!, /does not match/);
  assert.match(k.verify('e-1', 'fraiseql.order.created', Buffer.from('{"id":"order-2"}'), sig)!, /does not match/);
  // the separator keeps the fields apart: id "a\nb" + subject "c" is not id "a" + subject "b\nc"
  assert.notEqual(k.sign('a', 'b.c', body), k.sign('a.b', 'c', body));
  assert.match(k.verify('e-1', 'fraiseql.order.created', body, undefined)!, /unsigned message/);
  assert.match(k.verify('e-1', 'fraiseql.order.created', body, '')!, /unsigned message/);
  assert.match(k.verify('', 'fraiseql.order.created', body, sig)!, /without a Fraiseql-Event-Id/);
  assert.match(k.verify('e-1', 'fraiseql.order.created', body, 'v2=abc')!, /no v1=/);
  assert.match(k.verify('e-1', 'fraiseql.order.created', body, 'v1=' + 'A'.repeat(43) + '=')!, /does not match/);
  // several signatures in one header: any one that matches will do
  assert.equal(k.verify('e-1', 'fraiseql.order.created', body, `v1=${'A'.repeat(43)}= ${sig} v9=x`), null);
  // another key's signature is not this key's
  assert.match(
    keysOf(key()).verify('e-1', 'fraiseql.order.created', body, sig)!,
    /does not match the event id, subject and body with any of the 1 key\(s\) in K:/,
  );
});

test('rotation: a key list signs with its first key and accepts every one', () => {
  const [a, b] = [key(), key()];
  const body = Buffer.from('{}');
  const old = keysOf(a);
  const next = keysOf(b);
  const both = keysOf(`${a}, ${b}`);
  const switched = keysOf(`${b},${a}`);
  assert.equal(both.size, 2);
  assert.equal(both.sign('e', 's', body), old.sign('e', 's', body), 'signs with the first key');
  assert.equal(switched.sign('e', 's', body), next.sign('e', 's', body));
  for (const signer of [old, next, both, switched]) {
    const sig = signer.sign('e', 's', body);
    assert.equal(both.verify('e', 's', body, sig), null);
    assert.equal(switched.verify('e', 's', body, sig), null);
  }
  assert.notEqual(old.verify('e', 's', body, next.sign('e', 's', body)), null, 'a relay without the new key refuses it');
  assert.deepEqual(both.fingerprints, [old.fingerprints[0], next.fingerprints[0]]);
  assert.match(both.fingerprints[0]!, /^[0-9a-f]{8}$/);
});

test('keys: an unset, empty or short key is a usage error naming the variable, never the key', () => {
  const short = 'too-short-a-key';
  for (const [env, pattern] of [
    [{}, /environment variable SIGNING \(\[relay\] signing_key_env\) is not set or empty/],
    [{ SIGNING: ' ' }, /is not set or empty/],
    [{ SIGNING: short }, /key 1 of 1 is 15 bytes long; each comma-separated key must be at least 32 bytes/],
    [{ SIGNING: `${key()},` }, /key 2 of 2 is empty/],
  ] as const) {
    let err: unknown;
    try {
      MessageKeys.fromEnv('SIGNING', env);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof UsageError, `a UsageError for ${JSON.stringify(env)}`);
    assert.match(err.message, pattern);
    assert.match(err.message, /SIGNING/);
    assert.ok(!err.message.includes(short));
  }
});

test('table-rule event ids with a key: a UUID, the same for the same change, not computable without the key', () => {
  const k = keysOf(key());
  const id = walEventId(0x16b3748n, 731, 'orders', k);
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a version 8 UUID');
  assert.equal(walEventId(0x16b3748n, 731, 'orders', k), id, 'stable across redelivery');
  assert.notEqual(walEventId(0x16b3749n, 731, 'orders', k), id);
  assert.notEqual(walEventId(0x16b3748n, 732, 'orders', k), id);
  assert.notEqual(walEventId(0x16b3748n, 731, 'billing', k), id);
  assert.notEqual(walEventId(0x16b3748n, 731, 'orders', keysOf(key())), id, 'another key, another id');
  assert.notEqual(walEventId(0x16b3748n, 731, 'orders'), id, 'not the predictable id');
  assert.ok(!id.includes('016b3748'), 'the WAL position does not show through');
  // without a key: unchanged, predictable
  assert.equal(walEventId(0x16b3748n, 731, 'orders', null), walEventId(0x16b3748n, 731, 'orders'));
});

test('[relay] signing_key_env is an environment variable name', () => {
  const base = '[project]\nname = "svc"\n[database]\nurl = "postgres://a@b/c"\n[relay]\n';
  assert.equal(parseConfig(base, 'f.toml', {}).relay.signing_key_env, undefined);
  assert.equal(
    parseConfig(base + 'signing_key_env = "FRAISEQL_RELAY_SIGNING_KEY"\n', 'f.toml', {}).relay.signing_key_env,
    'FRAISEQL_RELAY_SIGNING_KEY',
  );
  assert.throws(
    () => parseConfig(base + 'signing_key_env = "not a name"\n', 'f.toml', {}),
    (e: unknown) => e instanceof ConfigError && /signing_key_env/.test(e.message) && /environment variable/.test(e.message),
  );
  assert.throws(
    () => parseConfig(base + 'signing_key = "x"\n', 'f.toml', {}),
    (e: unknown) => e instanceof ConfigError && /did you mean "signing_key_env"/.test(e.message),
  );
});

// ---------------------------------------------------------------- two relays, one key

const ORDER_TOML = (extra = '') => `
[project]
name = "order-service"

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[[observers.rules]]
table = "app.tb_item"
event = "INSERT"
subject = "fraiseql.item.created"

[relay]
listen = "127.0.0.1:0"
signing_key_env = "TEST_ORDER_SIGNING_KEY"

[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
${extra}`;

const INVENTORY_TOML = (extra = '') => `
[project]
name = "inventory-service"

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "app.fn_reserve"
max_deliver = 3
backoff = ["100ms"]

[[observers.subscribe]]
subject = "fraiseql.item.created"
handler = "app.fn_item"

[relay]
listen = "127.0.0.1:0"
signing_key_env = "TEST_INVENTORY_SIGNING_KEY"

[relay.stream]
name = "FRAISEQL"
create = false                     # the order service's stream
${extra}`;

const ORDER_SQL = `CREATE SCHEMA app; CREATE TABLE app.tb_item (id int PRIMARY KEY, name text NOT NULL);`;
const INVENTORY_SQL = `
CREATE SCHEMA app;
CREATE TABLE app.reserved (event_id text PRIMARY KEY, order_id text NOT NULL, calls int NOT NULL DEFAULT 1);
CREATE FUNCTION app.fn_reserve(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO app.reserved (event_id, order_id) VALUES (p_event->>'event_id', p_event->>'id')
  ON CONFLICT (event_id) DO UPDATE SET calls = app.reserved.calls + 1
$$;
CREATE TABLE app.items (event_id text PRIMARY KEY, body jsonb NOT NULL);
CREATE FUNCTION app.fn_item(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO app.items VALUES (p_event->>'event_id', p_event)
$$;`;

const INVENTORY_CONSUMER = 'inventory-service-fraiseql_order_created';
const RELAY_OPTS = { backoffMinMs: 100, backoffMaxMs: 1000, publishTimeoutMs: 2000 };
const LOG_LEVEL = process.env['TEST_LOG_LEVEL'] ?? 'silent';

/** One service: its database, its config file, its relay (started with its keys in the environment). */
class Service {
  relay: Relay | null = null;

  constructor(
    readonly env: TestEnv,
    readonly db: string,
    readonly file: string,
    readonly vars: NodeJS.ProcessEnv,
    /** the environment variable its `signing_key_env` names */
    readonly keyVar: string,
  ) {}

  config(): Config {
    return loadConfig(this.file, this.vars);
  }

  async sql<R extends object = Record<string, unknown>>(text: string, params: unknown[] = []): Promise<R[]> {
    return (await this.env.pg.query(text, params, this.db)).rows as R[];
  }

  /** (Re)starts the relay with `keys` in `keyVar` (Relay reads the variable when it starts). */
  async start(keys: string): Promise<void> {
    await this.stop();
    process.env[this.keyVar] = keys;
    const relay = new Relay(this.config(), createLogger(LOG_LEVEL), RELAY_OPTS);
    await relay.start();
    this.relay = relay;
  }

  async stop(): Promise<void> {
    await this.relay?.stop();
    this.relay = null;
  }
}

/** Creates a service's database, config file and schema. */
async function service(env: TestEnv, name: string, toml: string, sql: string, keyVar: string, natsUrl = env.nats.url): Promise<Service> {
  const url = name === 'app' ? env.dbUrl : await env.pg.createDatabase(name);
  const file = join(env.dir, `${name}.toml`);
  await writeFile(file, toml);
  const s = new Service(env, name, file, { ...process.env, DATABASE_URL: url, NATS_URL: natsUrl }, keyVar);
  await s.sql(sql);
  await migrate(s.config(), createLogger('silent'));
  return s;
}

/** Records an order event in the outbox with a chosen id, as `emit_mutation('create_order', …)` would. */
async function emitOrder(orders: Service, eventId: string, orderId: string): Promise<void> {
  await orders.sql(
    `INSERT INTO fraiseql_relay.outbox (id, mutation, operation, entity_type, entity_id, entity)
     VALUES ($1, 'create_order', 'INSERT', 'Order', $2, jsonb_build_object('id', $2::text))`,
    [eventId, orderId],
  );
}

/** Publishes like an attacker who may publish on the subject: any id, any headers, its own message id. */
async function forge(nc: NatsConnection, subject: string, eventId: string, body: object, signature?: string): Promise<void> {
  const h = natsHeaders();
  h.set('Fraiseql-Event-Id', eventId);
  if (signature !== undefined) h.set(SIGNATURE_HEADER, signature);
  await jetstream(nc).publish(subject, JSON.stringify(body), { headers: h, msgID: `forged-${randomUUID()}` });
}

interface DeadLetterRow {
  id: string;
  event_id: string;
  direction: string;
  consumer: string;
  error: string;
  attempts: number;
  headers: Record<string, string>;
  body: string;
}

let env: TestEnv;

before(async () => {
  env = await TestEnv.create({ toml: ORDER_TOML() });
});

after(async () => {
  await env?.destroy();
});

describe('two relays sharing a signing key', () => {
  const K1 = key();
  const K2 = key();
  let orders: Service;
  let inventory: Service;
  let nc: NatsConnection;

  before(async () => {
    orders = await service(env, 'app', ORDER_TOML(), ORDER_SQL, 'TEST_ORDER_SIGNING_KEY');
    inventory = await service(env, 'inventory', INVENTORY_TOML(), INVENTORY_SQL, 'TEST_INVENTORY_SIGNING_KEY');
    await orders.start(K1); // creates the stream
    await inventory.start(K1);
    nc = await env.natsClient();
  });

  after(async () => {
    await nc?.close();
    await inventory?.stop();
    await orders?.stop();
  });

  const reserved = (eventId: string) =>
    inventory.sql<{ order_id: string; calls: number }>(`SELECT order_id, calls FROM app.reserved WHERE event_id = $1`, [eventId]);
  /** Dead letters of messages claiming an event id (in their Fraiseql-Event-Id header). */
  const deadLetters = (eventId: string) =>
    inventory.sql<DeadLetterRow>(
      `SELECT id::text, event_id, direction, consumer, error, attempts, headers, body FROM fraiseql_relay.dead_letter
        WHERE headers->>'Fraiseql-Event-Id' = $1 ORDER BY id`,
      [eventId],
    );
  const inboxHas = async (eventId: string) =>
    (await inventory.sql(`SELECT 1 FROM fraiseql_relay.inbox WHERE consumer = $1 AND event_id = $2`, [INVENTORY_CONSUMER, eventId]))
      .length === 1;

  test('a forged message carrying the id of an event about to be emitted is dead-lettered; the real event is applied', async () => {
    // the attacker knows the id in advance (the strongest case: with a key, table-rule ids and
    // outbox ids cannot be guessed) and may publish on the subject
    const id = randomUUID();
    await forge(nc, 'fraiseql.order.created', id, { event_id: id, id: 'order-forged' });
    await forge(
      nc,
      'fraiseql.order.created',
      id,
      { event_id: id, id: 'order-forged' },
      keysOf(key()).sign(id, 'fraiseql.order.created', Buffer.from('{}')),
    );
    const body = JSON.stringify({ event_id: id, id: 'order-forged' });
    await forge(
      nc,
      'fraiseql.order.created',
      id,
      JSON.parse(body) as object,
      keysOf(key()).sign(id, 'fraiseql.order.created', Buffer.from(body)),
    );
    let dl: DeadLetterRow[] = [];
    for (const until = Date.now() + 15_000; dl.length < 3 && Date.now() < until; await sleep(50)) dl = await deadLetters(id);
    assert.equal(dl.length, 3, 'each forged message is dead-lettered');
    assert.match(dl[0]!.error, /unsigned message \(no Fraiseql-Signature header\)/);
    assert.match(dl[1]!.error, /does not match/);
    assert.match(dl[2]!.error, /does not match/);
    for (const d of dl) {
      assert.equal(d.direction, 'inbound');
      assert.equal(d.consumer, INVENTORY_CONSUMER);
      assert.equal(d.attempts, 1, 'refused at once, never redelivered');
      assert.equal(JSON.parse(d.body).id, 'order-forged');
      assert.match(d.event_id, /^unverified:FRAISEQL:\d+:\d+$/, 'kept under its stream position, not the id it claims');
    }
    assert.equal(dl[1]!.headers[SIGNATURE_HEADER]?.startsWith('v1='), true, 'the dead letter keeps the forged signature');
    assert.equal(await inboxHas(id), false, 'the forged messages never touched the inbox');
    assert.deepEqual(await reserved(id), [], 'nor ran the handler');

    // now the real event: signed by the order service's relay, applied once
    await emitOrder(orders, id, 'order-real');
    const rows = await waitForRows(() => reserved(id), 15_000);
    assert.deepEqual(rows, [{ order_id: 'order-real', calls: 1 }]);
    assert.equal(await inboxHas(id), true);
    const stored = (await env.readStream()).filter((m) => m.headers['Fraiseql-Event-Id'] === id && m.body['id'] === 'order-real');
    assert.equal(stored.length, 1);
    assert.match(stored[0]!.headers[SIGNATURE_HEADER]!, /^v1=[A-Za-z0-9+/]{43}=$/);
    assert.equal((await deadLetters(id)).length, 3, 'nothing more was refused');

    // dlq retry does not apply a refused (unverified) message either
    const { dlqRetry } = await import('../src/commands/dlq.js');
    const ids = (await deadLetters(id)).map((d) => d.id);
    assert.equal(await dlqRetry(inventory.config(), createLogger('silent'), { ids, all: false }), 1, 'the retry fails');
    assert.deepEqual(await reserved(id), [{ order_id: 'order-real', calls: 1 }], 'the forged bodies were never applied');
    const after = await deadLetters(id);
    assert.equal(after.length, 3);
    for (const d of after) assert.match(d.error, /signature did not verify/);
  });

  test('an unsigned message is refused while a key is configured', async () => {
    const id = randomUUID();
    const nc2 = await env.natsClient();
    const h = natsHeaders();
    h.set('Fraiseql-Event-Id', id);
    await jetstream(nc2).publish('fraiseql.order.created', JSON.stringify({ event_id: id, id: 'order-unsigned' }), { headers: h });
    await nc2.close();
    const dl = await waitForRows(() => deadLetters(id), 15_000);
    assert.equal(dl.length, 1);
    assert.match(dl[0]!.error, /^refused: unsigned message .*signing_key_env is set; the inbox was not touched$/);
    await sleep(300);
    assert.equal(await inboxHas(id), false);
    assert.deepEqual(await reserved(id), []);
  });

  test('a message signed by another relay with the same key is applied, table-rule ids are keyed', async () => {
    const id = randomUUID();
    await emitOrder(orders, id, 'order-2');
    assert.deepEqual(await waitForRows(() => reserved(id), 15_000), [{ order_id: 'order-2', calls: 1 }]);

    // a table rule: its event id is the keyed hash of the change's WAL position
    await orders.sql(`INSERT INTO app.tb_item VALUES (1, 'widget')`);
    const items = await waitForRows(
      () => inventory.sql<{ event_id: string; body: { source: { lsn: string; xid: number } } }>(`SELECT event_id, body FROM app.items`),
      15_000,
    );
    assert.equal(items.length, 1);
    const { event_id, body } = items[0]!;
    const lsn = parseLsn(body.source.lsn);
    assert.equal(event_id, walEventId(lsn, body.source.xid, 'app', keysOf(K1)), 'keyed with the signing key');
    assert.notEqual(event_id, walEventId(lsn, body.source.xid, 'app'), 'not the predictable id');
  });

  test('rotation: old+new keys accept both; the switch to the new key needs no downtime', async () => {
    // 1. subscribers learn the new key (they still sign with the old one)
    await inventory.start(`${K1},${K2}`);
    const a = randomUUID();
    await emitOrder(orders, a, 'order-rot-a'); // signed with K1
    assert.equal((await waitForRows(() => reserved(a), 15_000)).length, 1, 'the old key is accepted');

    // 2. publishers sign with the new key, still accepting the old one
    await orders.start(`${K2},${K1}`);
    const b = randomUUID();
    await emitOrder(orders, b, 'order-rot-b'); // signed with K2
    assert.equal((await waitForRows(() => reserved(b), 15_000)).length, 1, 'the new key is accepted');
    // a relay not yet restarted with the new key would still be signing with K1: accepted too
    const c = randomUUID();
    const cBody = { event_id: c, id: 'order-rot-c' };
    await forge(nc, 'fraiseql.order.created', c, cBody, keysOf(K1).sign(c, 'fraiseql.order.created', Buffer.from(JSON.stringify(cBody))));
    assert.equal((await waitForRows(() => reserved(c), 15_000)).length, 1, 'K1-signed messages are still accepted during the switch');

    // 3. the old key is dropped: what it signs is refused, the new key's signatures are applied
    await inventory.start(K2);
    const d = randomUUID();
    const dBody = { event_id: d, id: 'order-rot-d' };
    await forge(nc, 'fraiseql.order.created', d, dBody, keysOf(K1).sign(d, 'fraiseql.order.created', Buffer.from(JSON.stringify(dBody))));
    const dl = await waitForRows(() => deadLetters(d), 15_000);
    assert.match(dl[0]!.error, /with any of the 1 key\(s\) in TEST_INVENTORY_SIGNING_KEY: forged/);
    const e = randomUUID();
    await emitOrder(orders, e, 'order-rot-e');
    assert.equal((await waitForRows(() => reserved(e), 15_000)).length, 1);
    assert.equal(await inboxHas(d), false);
  });

  test('a relay whose signing_key_env is unset refuses to start', async () => {
    const vars = { ...inventory.vars };
    const relay = new Relay(loadConfig(inventory.file, vars), createLogger('silent'), RELAY_OPTS);
    const saved = process.env['TEST_INVENTORY_SIGNING_KEY'];
    delete process.env['TEST_INVENTORY_SIGNING_KEY'];
    try {
      await assert.rejects(relay.start(), (e: unknown) => e instanceof UsageError && /TEST_INVENTORY_SIGNING_KEY/.test(e.message));
    } finally {
      process.env['TEST_INVENTORY_SIGNING_KEY'] = saved;
      await relay.stop();
    }
  });
});

// ---------------------------------------------------------------- deploy/nats/accounts.conf

describe('deploy/nats/accounts.conf: the documented NATS permissions', () => {
  // nats-server parses a variable's value as a config literal: a UUID that starts with digits ("2024…-…") is taken for a date, so each password starts with a letter
  const PASSWORDS = {
    ORDER_RELAY_PASSWORD: `p${randomUUID()}`,
    INVENTORY_RELAY_PASSWORD: `p${randomUUID()}`,
    APP_PASSWORD: `p${randomUUID()}`,
  };
  let dir: string;
  let server: ChildProcess;
  let url: string;
  let log = '';
  let orders: Service;
  let inventory: Service;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-nats-acl-'));
    // the server's own settings, and the example included as deploy/nats/accounts.conf says
    await copyFile(join(ROOT, 'deploy', 'nats', 'accounts.conf'), join(dir, 'accounts.conf'));
    await writeFile(join(dir, 'server.conf'), `jetstream { store_dir: ${JSON.stringify(join(dir, 'js'))} }\ninclude "accounts.conf"\n`);
    const port = await getFreePort();
    server = spawn(findNatsServer(), ['-c', join(dir, 'server.conf'), '-a', '127.0.0.1', '-p', String(port)], {
      env: { ...process.env, ...PASSWORDS },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    server.stdout!.on('data', (b: Buffer) => (log += b.toString()));
    server.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    await waitForPortOpen(port).catch((err: unknown) => {
      throw new Error(`nats-server with deploy/nats/accounts.conf did not start: ${String(err)}\n${log}`);
    });
    url = `nats://127.0.0.1:${port}`;
    const auth = (user: string) => `
[relay.nats]
user_env = "TEST_${user}_NATS_USER"
password_env = "TEST_${user}_NATS_PASSWORD"
`;
    process.env['TEST_ORDER_NATS_USER'] = 'order-relay';
    process.env['TEST_ORDER_NATS_PASSWORD'] = PASSWORDS.ORDER_RELAY_PASSWORD;
    process.env['TEST_INVENTORY_NATS_USER'] = 'inventory-relay';
    process.env['TEST_INVENTORY_NATS_PASSWORD'] = PASSWORDS.INVENTORY_RELAY_PASSWORD;
    // only fraiseql.order.created: the example gives the inventory relay no consumer for items
    const inventoryToml = INVENTORY_TOML(auth('INVENTORY')).replace(
      /\n\[\[observers\.subscribe\]\]\nsubject = "fraiseql\.item\.created"\nhandler = "app\.fn_item"\n/,
      '\n',
    );
    const ordersToml = ORDER_TOML(auth('ORDER'))
      .replace('subjects = ["fraiseql.>"]', 'subjects = ["fraiseql.order.>"]')
      .replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nslot = "fraiseql_relay_acl"') // slots are per cluster
      .replace(/\n\[\[observers\.rules\]\][^[]*/, '\n');
    orders = await service(env, 'orders_acl', ordersToml, ORDER_SQL, 'TEST_ORDER_SIGNING_KEY', url);
    inventory = await service(env, 'inventory_acl', inventoryToml, INVENTORY_SQL, 'TEST_INVENTORY_SIGNING_KEY', url);
  });

  after(async () => {
    await inventory?.stop();
    await orders?.stop();
    if (server && server.exitCode === null) {
      const exited = new Promise((r) => server.once('exit', r));
      server.kill('SIGTERM');
      await exited;
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the relays can do their work with exactly these permissions; another client cannot publish or pull', async () => {
    const k = key();
    await orders.start(k); // creates the stream FRAISEQL through $JS.API
    await inventory.start(k); // creates its durable consumer, pulls and acknowledges
    const id = randomUUID();
    await emitOrder(orders, id, 'order-acl');
    const rows = await waitForRows(
      () => inventory.sql<{ order_id: string }>(`SELECT order_id FROM app.reserved WHERE event_id = $1`, [id]),
      15_000,
    );
    assert.deepEqual(rows, [{ order_id: 'order-acl' }]);

    // everybody else: refused on the subject, on the JetStream API and on acknowledgements
    const app = await natsConnect({ servers: url, user: 'app', pass: PASSWORDS.APP_PASSWORD });
    const errors: string[] = [];
    void (async () => {
      for await (const s of app.status()) if (s.type === 'error') errors.push(String(s.error));
    })();
    try {
      app.publish('fraiseql.order.created', JSON.stringify({ event_id: 'x', id: 'forged' }));
      app.publish('$JS.API.STREAM.DELETE.FRAISEQL');
      app.publish(`$JS.API.CONSUMER.MSG.NEXT.FRAISEQL.${INVENTORY_CONSUMER}`, '{"batch":1}');
      app.publish(`$JS.ACK.FRAISEQL.${INVENTORY_CONSUMER}.1.1.1.1.0`, '+ACK');
      await app.flush();
      for (const until = Date.now() + 5_000; errors.length < 4 && Date.now() < until;) await sleep(50);
    } finally {
      await app.close();
    }
    assert.equal(errors.length, 4, errors.join('\n'));
    for (const e of errors) assert.match(e, /Permissions Violation for Publish/i);

    // the stream is intact and holds only the relay's message
    const admin = await natsConnect({ servers: url, user: 'order-relay', pass: PASSWORDS.ORDER_RELAY_PASSWORD });
    try {
      const info = await (await jetstreamManager(admin)).streams.info('FRAISEQL');
      assert.equal(info.state.messages, 1);
    } finally {
      await admin.close();
    }
    // and the relays never hit a permission they lack
    const violations = log.split('\n').filter((l) => /Violation/.test(l) && !/User "app"/.test(l));
    assert.deepEqual(violations, []);
  });
});

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TestEnv, sleep, type StoredMessage } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';
import { migrate } from '../src/schema/migrate.js';
import { createLogger } from '../src/util/log.js';

const TOML = `
[project]
name = "rules-service"

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.rules]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.inserted"

[[observers.rules]]
table = "tb_order"
event = "UPDATE"
subject = "fraiseql.order.updated"
before_image = true

[[observers.rules]]
table = "tb_order"
event = "DELETE"
subject = "fraiseql.order.deleted"

[[observers.rules]]
table = "app.tb_item"
event = "UPDATE"
subject = "fraiseql.item.updated"

[[observers.rules]]
table = "app.tb_item"
event = "DELETE"
subject = "fraiseql.item.deleted"

[[observers.rules]]
table = "tb_doc"
event = "UPDATE"
subject = "fraiseql.doc.updated"

[[observers.rules]]
table = "tb_doc_full"
event = "UPDATE"
subject = "fraiseql.docfull.updated"
before_image = true

[[observers.rules]]
table = "tb_nokey"
event = "UPDATE"
subject = "fraiseql.nokey.updated"

[relay]
listen = "127.0.0.1:0"

[relay.stream]
subjects = ["fraiseql.>"]
`;

const SCHEMA = `
CREATE SCHEMA app;
CREATE TABLE tb_order (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), customer text, total numeric(12,2), qty int, paid boolean,
  items text[], data jsonb, big bigint, created_at timestamptz DEFAULT '2026-11-22 10:00:00.123456+00');
CREATE TABLE app.tb_item (id int PRIMARY KEY, name text, stock int);
CREATE TABLE tb_doc (id int PRIMARY KEY, title text, body text);
CREATE TABLE tb_doc_full (id int PRIMARY KEY, title text, body text);
CREATE TABLE tb_nokey (a int, b text);
INSERT INTO app.tb_item VALUES (1, 'hammer', 10), (2, 'saw', 5);
INSERT INTO tb_nokey VALUES (1, 'x');
-- a value big enough to be TOASTed out of line, and not compressible
CREATE FUNCTION big_text() RETURNS text LANGUAGE sql AS $$ SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g $$;
INSERT INTO tb_doc VALUES (1, 'first', big_text());
INSERT INTO tb_doc_full VALUES (1, 'first', big_text());
`;

let env: TestEnv;
let relay: Relay;
let problems: string[];

async function next(subject: string, count = 1): Promise<StoredMessage[]> {
  for (const until = Date.now() + 15_000; Date.now() < until; await sleep(50)) {
    const msgs = (await env.readStream()).filter((m) => m.subject === subject);
    if (msgs.length >= count) return msgs;
  }
  throw new Error(`no message on ${subject}`);
}

before(async () => {
  env = await TestEnv.create({ toml: TOML });
  await env.sql(SCHEMA);
  problems = (await migrate(env.config(), createLogger('silent'))).tableProblems;
  relay = await env.startRelay();
});

after(async () => {
  await relay?.stop();
  await env?.destroy();
});

test('migrate publishes the rule tables with the operations the rules need, and reports what it cannot', async () => {
  const pub = await env.sql<{ pubinsert: boolean; pubupdate: boolean; pubdelete: boolean; pubtruncate: boolean }>(
    `SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = '${env.config().relay.publication}_tables'`,
  );
  assert.deepEqual(pub, [{ pubinsert: true, pubupdate: true, pubdelete: true, pubtruncate: false }]);
  const tables = (
    await env.sql<{ t: string }>(
      `SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = '${env.config().relay.publication}_tables' ORDER BY 1`,
    )
  ).map((r) => r.t);
  assert.deepEqual(tables, ['app.tb_item', 'public.tb_doc', 'public.tb_doc_full', 'public.tb_order']);
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /tb_nokey has no replica identity.*REPLICA IDENTITY FULL/s);
  const ident = await env.sql<{ relname: string; relreplident: string }>(
    `SELECT relname, relreplident FROM pg_class WHERE relname IN ('tb_order', 'tb_doc', 'tb_doc_full', 'tb_nokey') ORDER BY relname`,
  );
  assert.deepEqual(
    ident.map((r) => `${r.relname}:${r.relreplident}`),
    ['tb_doc:d', 'tb_doc_full:f', 'tb_nokey:d', 'tb_order:f'],
  );
  // the application's own writes to the table left out still work
  await env.sql(`UPDATE tb_nokey SET b = 'y'`);
});

test('INSERT: the new row as a typed JSON entity', async () => {
  await env.sql(`INSERT INTO tb_order (id, customer, total, qty, paid, items, data, big)
                 VALUES ('00000000-0000-0000-0000-0000000000a1', 'ada', 10.50, 3, true, '{SKU-1,"SKU 2"}', '{"x": 1.0}', 9007199254740993)`);
  const [m] = await next('fraiseql.order.inserted');
  assert.ok(m);
  const b = m.body;
  assert.equal(b['operation'], 'INSERT');
  assert.equal(b['entity_type'], 'Order');
  assert.equal(b['mutation'], null);
  assert.equal(b['id'], '00000000-0000-0000-0000-0000000000a1');
  assert.equal(b['entity_before'], null);
  assert.match(b['event_id'] as string, /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-8[0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(m.headers['Nats-Msg-Id'], `${String(b['event_id'])}:fraiseql.order.inserted`);
  assert.deepEqual(b['entity'], {
    id: '00000000-0000-0000-0000-0000000000a1',
    customer: 'ada',
    total: 10.5,
    qty: 3,
    paid: true,
    items: ['SKU-1', 'SKU 2'],
    data: { x: 1 },
    big: 9007199254740992,
    created_at: '2026-11-22T10:00:00.123456+00:00',
  });
  const raw = JSON.stringify(b);
  void raw;
  const source = b['source'] as Record<string, unknown>;
  assert.equal(source['table'], 'tb_order');
  assert.equal(source['schema'], 'public');
  assert.match(b['occurred_at'] as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?\+00:00$/);
});

test('UPDATE with before_image: entity, entity_before and updated_fields', async () => {
  await env.sql(`UPDATE tb_order SET qty = 4, paid = false WHERE id = '00000000-0000-0000-0000-0000000000a1'`);
  const [m] = await next('fraiseql.order.updated');
  const b = m!.body;
  assert.equal(b['operation'], 'UPDATE');
  assert.equal((b['entity'] as { qty: number }).qty, 4);
  assert.equal((b['entity_before'] as { qty: number }).qty, 3);
  assert.equal((b['entity_before'] as { customer: string }).customer, 'ada');
  assert.deepEqual(b['updated_fields'], ['qty', 'paid']);
});

test('DELETE with before_image: the whole old row', async () => {
  await env.sql(`DELETE FROM tb_order WHERE id = '00000000-0000-0000-0000-0000000000a1'`);
  const [m] = await next('fraiseql.order.deleted');
  const b = m!.body;
  assert.equal(b['operation'], 'DELETE');
  assert.equal(b['entity'], null);
  assert.equal((b['entity_before'] as { customer: string }).customer, 'ada');
  assert.equal(b['id'], '00000000-0000-0000-0000-0000000000a1');
});

test('without a before image: no entity_before on UPDATE, the key on DELETE', async () => {
  await env.sql(`UPDATE app.tb_item SET stock = 9 WHERE id = 1`);
  await env.sql(`DELETE FROM app.tb_item WHERE id = 2`);
  const [u] = await next('fraiseql.item.updated');
  assert.deepEqual(u!.body['entity'], { id: 1, name: 'hammer', stock: 9 });
  assert.equal(u!.body['entity_before'], null);
  assert.equal(u!.body['updated_fields'], null);
  assert.equal(u!.body['entity_type'], 'Item');
  const [d] = await next('fraiseql.item.deleted');
  assert.deepEqual(d!.body['entity_before'], { id: 2 });
  assert.equal(d!.body['id'], '2');
});

test('an unchanged TOASTed value is never published as a placeholder', async () => {
  const [{ body }] = (await env.sql<{ body: string }>(`SELECT body FROM tb_doc_full WHERE id = 1`)) as [{ body: string }];
  assert.ok(body.length > 100_000);
  await env.sql(`UPDATE tb_doc SET title = 'second' WHERE id = 1`);
  await env.sql(`UPDATE tb_doc_full SET title = 'second' WHERE id = 1`);
  const [d] = await next('fraiseql.doc.updated');
  assert.deepEqual(d!.body['entity'], { id: 1, title: 'second' }, 'the unchanged body is left out');
  assert.deepEqual(d!.body['metadata'], { unchanged_toast: ['body'] });
  const [f] = await next('fraiseql.docfull.updated');
  const entity = f!.body['entity'] as { title: string; body: string };
  assert.equal(entity.title, 'second');
  assert.equal(entity.body, body, 'taken from the old row (REPLICA IDENTITY FULL)');
  assert.equal(f!.body['metadata'], null);
  assert.deepEqual(f!.body['updated_fields'], ['title']);
});

test('table changes and outbox events share one stream in commit order', async () => {
  await env.sql(
    `BEGIN; INSERT INTO tb_order (customer) VALUES ('x1'); SELECT fraiseql_relay.emit('fraiseql.mixed', '{"k":1}'); INSERT INTO tb_order (customer) VALUES ('x2'); COMMIT;`,
  );
  const msgs = await next('fraiseql.mixed');
  const all = await env.readStream();
  const idx = all.findIndex((m) => m.seq === msgs[0]!.seq);
  assert.equal((all[idx - 1]!.body['entity'] as { customer: string }).customer, 'x1');
  assert.equal((all[idx + 1]!.body['entity'] as { customer: string }).customer, 'x2');
});

test('check reports each rule table, failing the one without a replica identity', async () => {
  const { runCli } = await import('./fixture.js');
  const r = await runCli(['check', '-c', env.configFile], env.env);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /ok\s+rule table public\.tb_order\s+INSERT\/UPDATE\/DELETE published/);
  assert.match(r.stdout, /FAIL\s+rule table public\.tb_nokey\s+table public\.tb_nokey has no replica identity/);
});

/**
 * Table rule filters: `where` (PostgreSQL's publication row filter), `columns` and `changed`,
 * checked against what PostgreSQL itself does with a row filter on INSERT, UPDATE (a row entering
 * or leaving the filter) and DELETE.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { TestEnv, runCli, sleep, type StoredMessage } from './fixture.js';

const rules = (where: string) => `
[project]
name = "filters"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"

[[observers.rules]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.created"
where = "${where}"
columns = ["id", "status"]

[[observers.rules]]
table = "tb_order"
event = "UPDATE"
subject = "fraiseql.order.updated"
where = "${where}"

[[observers.rules]]
table = "tb_order"
event = "UPDATE"
subject = "fraiseql.order.status"
where = "${where}"
before_image = true
changed = ["status"]

[[observers.rules]]
table = "tb_order"
event = "DELETE"
subject = "fraiseql.order.deleted"
where = "${where}"

[relay]
listen = "127.0.0.1:0"
[relay.stream]
subjects = ["fraiseql.>"]
`;

const SCHEMA = `CREATE TABLE tb_order (id int PRIMARY KEY, status text NOT NULL, amount numeric(12,2), note text)`;

async function settle(env: TestEnv, n: number): Promise<StoredMessage[]> {
  const until = Date.now() + 15_000;
  let msgs: StoredMessage[] = [];
  while (Date.now() < until) {
    msgs = await env.readStream();
    if (msgs.length >= n) break;
    await sleep(50);
  }
  return msgs;
}

test(
  'where, columns and changed: exactly the rows and columns selected, as PostgreSQL defines row filters',
  { timeout: 90_000 },
  async () => {
    const env = await TestEnv.create({ toml: rules("status <> 'draft'") });
    let relay: Awaited<ReturnType<TestEnv['startRelay']>> | undefined;
    try {
      await env.sql(SCHEMA);
      await env.migrate();
      const pub = await env.sql<{ rowfilter: string; relreplident: string }>(
        `SELECT t.rowfilter, c.relreplident FROM pg_publication_tables t JOIN pg_class c ON c.relname = t.tablename
        WHERE t.pubname = $1 AND t.tablename = 'tb_order'`,
        [`${env.config().relay.publication}_tables`],
      );
      assert.equal(pub.length, 1);
      assert.match(pub[0]!.rowfilter, /status <> 'draft'/);
      assert.equal(pub[0]!.relreplident, 'f', 'a row filter with UPDATE/DELETE rules makes the table REPLICA IDENTITY FULL');
      relay = await env.startRelay();
      // (a marker at the end tells when everything before it has been streamed)
      await env.sql(`INSERT INTO tb_order VALUES (1, 'draft', 10, 'a')`); // filtered out
      await env.sql(`INSERT INTO tb_order VALUES (2, 'paid', 20, 'b')`); // INSERT
      await env.sql(`UPDATE tb_order SET note = 'a2' WHERE id = 1`); // draft → draft: nothing
      await env.sql(`UPDATE tb_order SET status = 'paid' WHERE id = 1`); // enters the filter: PostgreSQL sends an INSERT
      await env.sql(`UPDATE tb_order SET amount = 21 WHERE id = 2`); // paid → paid: UPDATE; status unchanged
      await env.sql(`UPDATE tb_order SET status = 'shipped' WHERE id = 2`); // UPDATE, status changed
      await env.sql(`UPDATE tb_order SET status = 'draft' WHERE id = 1`); // leaves the filter: PostgreSQL sends a DELETE
      await env.sql(`INSERT INTO tb_order VALUES (3, 'draft', 30, 'c')`);
      await env.sql(`DELETE FROM tb_order WHERE id = 3`); // a draft: nothing
      await env.sql(`DELETE FROM tb_order WHERE id = 2`); // DELETE
      await env.sql(`INSERT INTO tb_order VALUES (99, 'marker', 0, 'end')`);
      const msgs = await settle(env, 9);
      const seen = msgs.map((m) => {
        const b = m.body as { id: number; operation: string; entity: Record<string, unknown> | null };
        return `${m.subject.replace('fraiseql.order.', '')} ${b.operation} ${b.id}`;
      });
      assert.deepEqual(seen, [
        'created INSERT 2',
        'created INSERT 1',
        'updated UPDATE 2',
        'updated UPDATE 2',
        'status UPDATE 2',
        'deleted DELETE 1',
        'deleted DELETE 2',
        'created INSERT 99',
      ]);
      // columns = ["id", "status"] on the INSERT rule only
      const created = msgs.find((m) => m.subject === 'fraiseql.order.created')!.body as { entity: Record<string, unknown> };
      assert.deepEqual(created.entity, { id: 2, status: 'paid' });
      const updated = msgs.find((m) => m.subject === 'fraiseql.order.updated')!.body as { entity: Record<string, unknown> };
      assert.deepEqual(updated.entity, { id: 2, status: 'paid', amount: 21.0, note: 'b' });
      const status = msgs.find((m) => m.subject === 'fraiseql.order.status')!.body as {
        entity: Record<string, unknown>;
        entity_before: Record<string, unknown>;
        updated_fields: string[];
      };
      assert.equal(status.entity['status'], 'shipped');
      assert.equal(status.entity_before['status'], 'paid');
      assert.deepEqual(status.updated_fields, ['status']);
    } finally {
      await relay?.stop();
      await env.destroy();
    }
  },
);

test(
  'check explains a row filter PostgreSQL refuses, an unknown column, and rules of one table that disagree',
  { timeout: 60_000 },
  async () => {
    const env = await TestEnv.create({ toml: rules('created_at > now()') });
    try {
      await env.sql(SCHEMA.replace('note text', 'note text, created_at timestamptz'));
      await env.migrate().catch(() => {});
      const r = await runCli(['check', '--json', '-c', env.configFile], env.env);
      assert.equal(r.code, 1, r.stderr);
      const report = JSON.parse(r.stdout) as { probes: { what: string; status: string; detail: string }[] };
      const where = report.probes.find((c) => c.what === 'rule #1 where');
      assert.ok(where, r.stdout);
      assert.equal(where.status, 'fail');
      assert.match(where.detail, /only built-in immutable functions.*now\(\)/);
      // a column the table lacks
      await writeFile(env.configFile, rules("status <> 'draft'").replace('columns = ["id", "status"]', 'columns = ["id", "state"]'));
      const r2 = await runCli(['check', '--json', '-c', env.configFile], env.env);
      const cols = (JSON.parse(r2.stdout) as typeof report).probes.find((c) => c.what === 'rule #1 columns');
      assert.match(cols?.detail ?? '', /has no column "state"/);
      // two rules of one table with different filters
      const split = rules("status <> 'draft'").replace(
        `subject = "fraiseql.order.deleted"\nwhere = "status <> 'draft'"`,
        'subject = "fraiseql.order.deleted"',
      );
      await writeFile(env.configFile, split);
      const r3 = await runCli(['check', '--json', '-c', env.configFile], env.env);
      assert.match(r3.stdout, /#1 and #4 watch the same table public.tb_order with different row filters/);
    } finally {
      await env.destroy();
    }
  },
);

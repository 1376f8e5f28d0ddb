/**
 * FraiseQL's own semantics, against FraiseQL's own SQL (test/fixtures/fraiseql/contract.sql: its
 * change-log contract, capture trigger, row-level security, mutation_ok/mutation_err helpers and
 * both mutation_response shapes): the status taxonomy as an allow-list, one operation vocabulary,
 * one event per mutation when the change log is streamed too, capture-trigger rows as table
 * changes, union return types, and W3C trace context.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { TestEnv, runCli, sleep, type StoredMessage } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';
import { parseConfig } from '../src/config/load.js';
import { ChangeLogRouter, operationFromName, traceparentOf, type MutationInfo } from '../src/route/changelog.js';
import { OutboxRouter, outboxRowChange } from '../src/route/outbox.js';
import { MutationTwins } from '../src/route/twins.js';
import type { RowChange } from '../src/route/router.js';

const CONTRACT = readFileSync(join(import.meta.dirname, 'fixtures', 'fraiseql', 'contract.sql'), 'utf8');

/** FraiseQL's compiled schema (crates/fraiseql-core/src/schema/compiled: `unions[].member_types`, `operation` as `{"Insert": {…}}`). */
const SCHEMA = {
  types: [],
  queries: [],
  unions: [{ name: 'CreateUserResult', member_types: ['User', 'CreateUserError'] }],
  mutations: [
    { name: 'createOrder', return_type: 'Order', operation: { Insert: { table: 'tb_order' } }, sql_source: 'app.fn_create_order' },
    { name: 'updateOrder', return_type: 'Order', operation: { Update: { table: 'tb_order' } }, sql_source: 'app.fn_update_order' },
    { name: 'deleteOrder', return_type: 'Order', operation: { Delete: { table: 'tb_order' } }, sql_source: 'app.fn_delete_order' },
    { name: 'createUser', return_type: 'CreateUserResult', operation: { Insert: { table: 'tb_user' } }, sql_source: 'app.fn_create_user' },
  ],
};

const TOML = `
[project]
name = "fraiseql-semantics"

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "createOrder"
subject = "fraiseql.order.created"

[[observers.publish]]
entity = "Order"
operation = "CREATE"                 # the alias of INSERT
subject = "fraiseql.order.changed"

[[observers.publish]]
mutation = "update_order"            # the schema and emit_mutation say updateOrder
subject = "fraiseql.order.updated"

[[observers.publish]]
mutation = "deleteOrder"
subject = "fraiseql.order.deleted"

[[observers.publish]]
mutation = "createUser"
subject = "fraiseql.user.created"

[relay]
listen = "127.0.0.1:0"
schema_file = "schema.compiled.json"

[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;

/** A FraiseQL service: tables, a capture trigger, and mutation functions written with FraiseQL's helpers. */
const APP = `
CREATE TABLE app.tb_order (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), tenant_id uuid, customer text,
                           status text NOT NULL DEFAULT 'new');
CREATE TABLE app.tb_user (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text NOT NULL);
-- what \`fraiseql generate capture-triggers\` installs for a @subscribable type
CREATE TRIGGER tr_order_capture_insert AFTER INSERT ON app.tb_order REFERENCING NEW TABLE AS new_table
  FOR EACH STATEMENT EXECUTE FUNCTION core.fn_entity_change_log_capture('Order', 'id', 'tenant_id');

CREATE FUNCTION app.fn_create_order(p_customer text) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE o app.tb_order; v_result app.mutation_response;
BEGIN
  INSERT INTO app.tb_order (customer) VALUES (p_customer) RETURNING * INTO o;
  SELECT * INTO v_result FROM fraiseql.mutation_ok(to_jsonb(o), o.id, 'Order', true, NULL, NULL, '{"channel": "web"}');
  RETURN fraiseql_relay.emit_mutation('createOrder', v_result);
END $$;

CREATE FUNCTION app.fn_update_order(p_id uuid, p_status text) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE o app.tb_order; v_result app.mutation_response;
BEGIN
  UPDATE app.tb_order SET status = p_status WHERE id = p_id RETURNING * INTO o;
  SELECT * INTO v_result FROM fraiseql.mutation_ok(to_jsonb(o), o.id, 'Order', true, ARRAY['status']);
  RETURN fraiseql_relay.emit_mutation('updateOrder', v_result);
END $$;

CREATE FUNCTION app.fn_delete_order(p_id uuid, p_role text) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE o app.tb_order; v_result app.mutation_response;
BEGIN
  IF p_role <> 'admin' THEN
    SELECT * INTO v_result FROM fraiseql.mutation_err('forbidden', 'not_authorized');
  ELSE
    DELETE FROM app.tb_order WHERE id = p_id RETURNING * INTO o;
    SELECT * INTO v_result FROM fraiseql.mutation_ok(to_jsonb(o), o.id, 'Order');
  END IF;
  RETURN fraiseql_relay.emit_mutation('deleteOrder', v_result);
END $$;

-- any error class FraiseQL defines, as its mutation_err builds it
CREATE FUNCTION app.fn_fail(p_class text) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE v_result app.mutation_response;
BEGIN
  SELECT * INTO v_result FROM fraiseql.mutation_err(p_class, 'refused');
  RETURN fraiseql_relay.emit_mutation('deleteOrder', v_result);
END $$;

-- a function that knows nothing of the relay: its event comes from the change log only
CREATE FUNCTION app.fn_create_user(p_email text) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE u app.tb_user; v_result app.mutation_response;
BEGIN
  INSERT INTO app.tb_user (email) VALUES (p_email) RETURNING * INTO u;
  SELECT * INTO v_result FROM fraiseql.mutation_ok(to_jsonb(u), u.id, 'User');
  RETURN v_result;
END $$;
`;

const TENANT = '33333333-3333-3333-3333-333333333333';
const TRACE = { version: '00', trace_id: '4bf92f3577b34da6a3ce929d0e0e4736', parent_id: '00f067aa0ba902b7', trace_flags: '01' };
const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
const ERROR_CLASSES = [
  'validation',
  'conflict',
  'not_found',
  'unauthorized',
  'forbidden',
  'internal',
  'transaction_failed',
  'timeout',
  'rate_limited',
  'service_unavailable',
];

let env: TestEnv;
let relay: Relay;

/** A connection that records the WARNINGs PostgreSQL sends. */
async function client(): Promise<{ c: pg.Client; notices: string[] }> {
  const c = new pg.Client({ connectionString: env.dbUrl });
  const notices: string[] = [];
  c.on('notice', (n) => notices.push(`${n.severity ?? ''}: ${n.message ?? ''}`));
  await c.connect();
  return { c, notices };
}

/**
 * One mutation the way FraiseQL's executor runs it (fraiseql-facts §1.1, crates/fraiseql-db/src/postgres/
 * adapter/database.rs build_changelog_cte_sql): in its own transaction with fraiseql.cdc_mediated = 'on'
 * and fraiseql.started_at set, the function called once in a MATERIALIZED CTE, and the change-log row
 * INSERTed by a data-modifying CTE only when the response succeeded and changed state.
 */
async function execute(call: string, returnType: string, verb: string): Promise<{ entity_id: string | null; succeeded: boolean }> {
  const { c } = await client();
  try {
    await c.query('BEGIN');
    await c.query(
      `SELECT set_config('fraiseql.cdc_mediated', 'on', true), set_config('fraiseql.started_at', clock_timestamp()::text, true)`,
    );
    const r = await c.query<{ entity_id: string | null; succeeded: boolean }>(
      `WITH r AS MATERIALIZED (SELECT * FROM ${call}),
       log AS (
         INSERT INTO core.tb_entity_change_log (object_type, modification_type, object_id, object_data, updated_fields, cascade,
                                                started_at, duration_ms, tenant_id, trace_id, trace_context, extra_metadata, commit_time)
         SELECT coalesce(r.entity_type, $1), $2, r.entity_id, r.entity, r.updated_fields, r.cascade,
                current_setting('fraiseql.started_at')::timestamptz,
                (EXTRACT(EPOCH FROM (clock_timestamp() - current_setting('fraiseql.started_at')::timestamptz)) * 1000)::integer,
                $3, $4, $5, '{"duration_calc_version": 2}', clock_timestamp()
           FROM r WHERE r.succeeded AND r.state_changed
       )
       SELECT entity_id::text, succeeded FROM r`,
      [returnType, verb, TENANT, TRACE.trace_id, JSON.stringify(TRACE)],
    );
    await c.query('COMMIT');
    return r.rows[0]!;
  } finally {
    await c.end();
  }
}

/** Waits until a marker committed after everything before it is in the stream, then returns the stream. */
async function settled(): Promise<StoredMessage[]> {
  const [{ id }] = (await env.sql<{ id: string }>(`SELECT fraiseql_relay.emit('fraiseql.sentinel', '{}')::text AS id`)) as [{ id: string }];
  for (const until = Date.now() + 15_000; Date.now() < until; await sleep(50)) {
    const all = await env.readStream();
    if (all.some((m) => m.body['event_id'] === id)) return all;
  }
  throw new Error('the sentinel event never arrived');
}

const outboxCount = async () => Number((await env.sql<{ n: string }>(`SELECT count(*) AS n FROM fraiseql_relay.outbox`))[0]!.n);
const logCount = async () => Number((await env.sql<{ n: string }>(`SELECT count(*) AS n FROM core.tb_entity_change_log`))[0]!.n);

describe('with FraiseQL, PostgreSQL and NATS', () => {
  before(async () => {
    env = await TestEnv.create({ toml: TOML });
    await writeFile(join(env.dir, 'schema.compiled.json'), JSON.stringify(SCHEMA));
    await env.sql(CONTRACT);
    await env.migrate();
    await env.sql(APP);
    relay = await env.startRelay();
  });

  after(async () => {
    await relay?.stop();
    await env?.destroy();
  });

  test('emit_mutation records nothing for any FraiseQL error class (v2) or a no-op', async () => {
    const outbox = await outboxCount();
    const log = await logCount();
    for (const cls of ERROR_CLASSES) {
      const r = await execute(`app.fn_fail('${cls}')`, 'Order', 'DELETE');
      assert.equal(r.succeeded, false);
    }
    const { c } = await client();
    try {
      await c.query(
        `SELECT fraiseql_relay.emit_mutation('createOrder', v) FROM (SELECT (r::text)::app.mutation_response AS v
           FROM fraiseql.mutation_ok('{"id": 1}'::jsonb, gen_random_uuid(), 'Order', false) r) s`,
      );
    } finally {
      await c.end();
    }
    assert.equal(await outboxCount(), outbox, 'no outbox row');
    assert.equal(await logCount(), log, "FraiseQL's executor wrote no change-log row either");
  });

  test('a forbidden delete publishes nothing (it deleted nothing)', async () => {
    const [{ id }] = (await env.sql<{ id: string }>(`SELECT (app.fn_create_order('kept')).entity_id::text AS id`)) as [{ id: string }];
    const r = await execute(`app.fn_delete_order('${id}', 'guest')`, 'Order', 'DELETE');
    assert.equal(r.succeeded, false);
    const all = await settled();
    assert.equal(all.filter((m) => m.subject === 'fraiseql.order.deleted').length, 0);
    assert.equal((await env.sql(`SELECT 1 FROM app.tb_order WHERE id = $1`, [id])).length, 1);
  });

  test('legacy statuses: an allow-list; every error class, failed, error and noop record nothing; an unknown status warns', async () => {
    const { c, notices } = await client();
    const emit = (name: string, status: string | null) =>
      c.query(
        `SELECT fraiseql_relay.emit_mutation($1, ROW($2, 'm', gen_random_uuid()::text, 'Thing', '{}', NULL, NULL, NULL)::legacy.mutation_response)`,
        [name, status],
      );
    try {
      const before = await outboxCount();
      const failing = [
        ...ERROR_CLASSES.map((e) => `${e}:detail`),
        ...ERROR_CLASSES,
        'unauthorized:no_token',
        'forbidden:not_authorized',
        'timeout:db',
        'failed',
        'failed:validation',
        'error',
        'noop',
        'noop:unchanged',
        'NOOP:Unchanged',
      ];
      for (const s of failing) await emit('legacy_thing', s);
      assert.equal(await outboxCount(), before, 'no error or no-op status records an event');
      assert.deepEqual(notices, [], 'known statuses raise no warning');

      await emit('legacy_thing', 'maybe:later');
      await emit('legacy_thing', null);
      assert.equal(await outboxCount(), before, 'an unknown status records nothing');
      assert.equal(notices.length, 2);
      assert.match(
        notices[0]!,
        /^WARNING: fraiseql_relay\.emit_mutation\(legacy_thing\): unknown status 'maybe:later': no event recorded$/,
      );
      assert.match(notices[1]!, /unknown status NULL/);

      const ok: [string, string][] = [
        ['success', 'CUSTOM'],
        ['success:imported', 'CUSTOM'],
        ['new', 'INSERT'],
        ['created', 'INSERT'],
        ['Created:Imported', 'INSERT'],
        ['updated', 'UPDATE'],
        ['updated:partial', 'UPDATE'],
        ['deleted', 'DELETE'],
        ['deleted:soft', 'DELETE'],
      ];
      for (const [s] of ok) await emit('legacy_thing', s);
      const rows = await env.sql<{ operation: string }>(
        `SELECT operation FROM fraiseql_relay.outbox WHERE mutation = 'legacy_thing' ORDER BY created_at`,
      );
      assert.deepEqual(
        rows.map((r) => r.operation),
        ok.map(([, op]) => op),
      );
      assert.equal(notices.length, 2, 'success statuses raise no warning');
    } finally {
      await c.end();
    }
  });

  test('operations: one vocabulary, inferred from snake_case and camelCase names alike', async () => {
    const names: [string, string][] = [
      ['create_widget', 'INSERT'],
      ['createWidget', 'INSERT'],
      ['CreateWidget', 'INSERT'],
      ['CREATE_WIDGET', 'INSERT'],
      ['addWidget', 'INSERT'],
      ['registerWidget', 'INSERT'],
      ['updateWidget', 'UPDATE'],
      ['set_widget_color', 'UPDATE'],
      ['patchWidget', 'UPDATE'],
      ['deleteWidget', 'DELETE'],
      ['remove_widget', 'DELETE'],
      ['ArchiveWidget', 'DELETE'],
      ['promoteWidget', 'CUSTOM'],
      ['addressWidget', 'CUSTOM'],
      ['newsletterSend', 'CUSTOM'],
      ['settle', 'CUSTOM'],
    ];
    const { c } = await client();
    try {
      for (const [name] of names) {
        await c.query(
          `SELECT fraiseql_relay.emit_mutation($1, v) FROM (SELECT (r::text)::app.mutation_response AS v
             FROM fraiseql.mutation_ok('{}'::jsonb, gen_random_uuid(), 'Widget') r) s`,
          [name],
        );
      }
      // the operation argument, CREATE included, wins over the name
      await c.query(
        `SELECT fraiseql_relay.emit_mutation('promoteWidget2', v, 'create') FROM (SELECT (r::text)::app.mutation_response AS v
           FROM fraiseql.mutation_ok('{}'::jsonb, gen_random_uuid(), 'Widget') r) s`,
      );
      await c.query(`SELECT fraiseql_relay.emit('fraiseql.widget.raw', '{"operation": "Create", "entity_type": "Widget"}')`);
    } finally {
      await c.end();
    }
    const rows = await env.sql<{ what: string; operation: string }>(
      `SELECT coalesce(mutation, subject) AS what, operation FROM fraiseql_relay.outbox
        WHERE entity_type = 'Widget' OR subject = 'fraiseql.widget.raw' ORDER BY created_at`,
    );
    assert.deepEqual(rows, [
      ...names.map(([what, operation]) => ({ what, operation })),
      { what: 'promoteWidget2', operation: 'INSERT' },
      { what: 'fraiseql.widget.raw', operation: 'INSERT' },
    ]);
    for (const [name, op] of names) assert.equal(operationFromName(name), op, `${name} in TypeScript too`);
  });

  test('one event per mutation: emit_mutation and the executor change-log row publish once, under the outbox event id', async () => {
    const unrouted = relay.stats.unrouted;
    const r = await execute(`app.fn_create_order('ada')`, 'Order', 'INSERT');
    const id = r.entity_id!;
    const all = (await settled()).filter((m) => m.body['id'] === id);
    const [outboxRow] = await env.sql<{ id: string }>(`SELECT id::text FROM fraiseql_relay.outbox WHERE entity_id = $1`, [id]);
    const [logRow] = await env.sql<{ id: string }>(`SELECT id::text FROM core.tb_entity_change_log WHERE object_id = $1`, [id]);
    assert.ok(outboxRow && logRow, 'both the outbox and the change log hold the mutation');

    assert.deepEqual(all.map((m) => m.subject).sort(), ['fraiseql.order.changed', 'fraiseql.order.created']);
    const created = all.find((m) => m.subject === 'fraiseql.order.created')!;
    assert.equal(created.body['event_id'], outboxRow.id, 'the outbox event wins');
    assert.equal((created.body['source'] as { table: string }).table, 'outbox');
    assert.equal(created.body['operation'], 'INSERT');
    assert.equal(created.headers['Fraiseql-Operation'], 'INSERT');
    assert.deepEqual(created.body['metadata'], { channel: 'web' });

    // the entity entry is another subject: the change-log row goes there as the same event
    const changed = all.find((m) => m.subject === 'fraiseql.order.changed')!;
    assert.equal(changed.body['event_id'], outboxRow.id);
    assert.equal(changed.headers['Fraiseql-Event-Id'], outboxRow.id);
    assert.equal(changed.headers['Nats-Msg-Id'], `${outboxRow.id}:fraiseql.order.changed`);
    assert.equal(changed.headers['Fraiseql-Mutation'], 'createOrder');
    assert.equal((changed.body['source'] as { table: string }).table, 'tb_entity_change_log');
    assert.equal(changed.headers['traceparent'], TRACEPARENT);
    assert.equal(relay.stats.unrouted, unrouted);
  });

  test('one event per mutation: a change-log row whose every subject the outbox event took is dropped, not lost', async () => {
    const [{ id }] = (await env.sql<{ id: string }>(`SELECT (app.fn_create_order('bob')).entity_id::text AS id`)) as [{ id: string }];
    await settled();
    const unrouted = relay.stats.unrouted;
    await execute(`app.fn_update_order('${id}', 'paid')`, 'Order', 'UPDATE');
    const all = (await settled()).filter((m) => m.body['id'] === id && m.body['operation'] === 'UPDATE');
    assert.equal(all.length, 1, 'one UPDATE event');
    assert.equal(all[0]!.subject, 'fraiseql.order.updated');
    assert.equal(all[0]!.body['mutation'], 'updateOrder');
    assert.equal((all[0]!.body['source'] as { table: string }).table, 'outbox');
    assert.deepEqual(all[0]!.body['updated_fields'], ['status']);
    assert.equal(
      (await env.sql(`SELECT 1 FROM core.tb_entity_change_log WHERE object_id = $1 AND modification_type = 'UPDATE'`, [id])).length,
      1,
    );
    assert.equal(relay.stats.unrouted, unrouted + 1, 'the duplicate change-log row was acknowledged and counted, not published');

    await execute(`app.fn_delete_order('${id}', 'admin')`, 'Order', 'DELETE');
    const deleted = (await settled()).filter((m) => m.body['id'] === id && m.body['operation'] === 'DELETE');
    assert.deepEqual(
      deleted.map((m) => [m.subject, (m.body['source'] as { table: string }).table]),
      [['fraiseql.order.deleted', 'outbox']],
    );
  });

  test('capture-trigger rows are table changes: entity entries only, no mutation', async () => {
    const [{ id }] = (await env.sql<{ id: string }>(
      `INSERT INTO app.tb_order (customer, tenant_id) VALUES ('walk-in', $1) RETURNING id::text`,
      [TENANT],
    )) as [{ id: string }];
    const all = (await settled()).filter((m) => m.body['id'] === id);
    assert.deepEqual(
      all.map((m) => m.subject),
      ['fraiseql.order.changed'],
      'not on createOrder’s subject, although the compiled schema maps createOrder to Order INSERT',
    );
    const m = all[0]!;
    assert.equal(m.body['mutation'], null);
    assert.equal(m.headers['Fraiseql-Mutation'], undefined);
    assert.equal(m.body['operation'], 'INSERT');
    assert.deepEqual(m.body['metadata'], { cdc_source: 'fallback_trigger' });
    assert.equal(m.headers['Fraiseql-Tenant-Id'], TENANT);
  });

  test('a mutation returning a union matches rows of its member types; trace_context becomes traceparent', async () => {
    const r = await execute(`app.fn_create_user('ada@example.com')`, 'CreateUserResult', 'INSERT');
    const all = (await settled()).filter((m) => m.body['id'] === r.entity_id);
    assert.deepEqual(
      all.map((m) => m.subject),
      ['fraiseql.user.created'],
    );
    const m = all[0]!;
    const [logRow] = await env.sql<{ id: string; object_type: string }>(
      `SELECT id::text, object_type FROM core.tb_entity_change_log WHERE object_id = $1`,
      [r.entity_id],
    );
    assert.equal(logRow!.object_type, 'User', "FraiseQL stamps the function's entity_type");
    assert.equal(m.body['event_id'], logRow!.id, 'no emit_mutation: the change-log row is the event');
    assert.equal(m.body['entity_type'], 'User');
    assert.equal(m.headers['Fraiseql-Mutation'], 'createUser');
    assert.equal(m.headers['traceparent'], TRACEPARENT);
  });

  test('check says which source carries each publish entry', async () => {
    const r = await runCli(['check', '-c', env.configFile], env.env);
    const line = (what: string) => r.stdout.split('\n').find((l) => l.includes(what)) ?? '';
    assert.match(
      line('publish createOrder → fraiseql.order.created'),
      /^ok +.*outbox: emit_mutation in app\.fn_create_order; FraiseQL's change-log row/,
    );
    assert.match(line('publish update_order → fraiseql.order.updated'), /outbox: emit_mutation in app\.fn_update_order/);
    assert.match(
      line('publish createUser → fraiseql.user.created'),
      /^ok +.*change log core\.tb_entity_change_log: CreateUserResult \| User \| CreateUserError INSERT rows/,
    );
    assert.match(line('publish Order INSERT → fraiseql.order.changed'), /change log core\.tb_entity_change_log: rows of Order/);
  });
});

describe('change-log routing (no servers)', () => {
  const config = parseConfig(
    `[database]\nurl = "postgres://x@h/db"\n[observers]\nnats_url = "nats://h:4222"\n` +
      `[[observers.publish]]\nmutation = "createOrder"\nsubject = "order.created"\n` +
      `[[observers.publish]]\nentity = "Order"\nsubject = "order.any"\n`,
    'fraiseql.toml',
    {},
  );
  const mutations = new Map<string, MutationInfo>([
    ['createorder', { entities: new Set(['Order']), operation: 'INSERT', sqlSource: null }],
  ]);
  const columns = ['id', 'object_type', 'modification_type', 'object_id', 'object_data', 'extra_metadata', 'trace_context', 'created_at'];
  const relation = {
    id: 9,
    schema: 'core',
    name: 'tb_entity_change_log',
    replicaIdentity: 'd',
    columns: columns.map((name) => ({ flags: 0, name, typeOid: 25, typeMod: -1 })),
  };
  const logRow = (xid: number, row: Record<string, string | null>): RowChange => ({
    op: 'INSERT',
    relation,
    newTuple: columns.map((c) => row[c] ?? null),
    oldTuple: null,
    oldIsKey: false,
    lsn: '0/2',
    xid,
    commitTime: 0n,
  });
  const outboxRow = (xid: number, id: string, entityId: string, mutation = 'createOrder', operation = 'INSERT') =>
    outboxRowChange('fraiseql_relay', { id, mutation, operation, entity_type: 'Order', entity_id: entityId }, '0/1', xid);
  const E1 = '0b0c0000-0000-0000-0000-0000000000e1';

  test('the change-log twin of an emit_mutation event is not published again on its subjects', () => {
    const twins = new MutationTwins();
    const outbox = new OutboxRouter(config, 'db', twins);
    const log = new ChangeLogRouter(config, 'db', mutations, twins);
    const o = outbox.route(outboxRow(7, 'ev-1', E1.toUpperCase()));
    assert.deepEqual(
      o.messages.map((m) => m.subject),
      ['order.created'],
    );
    const l = log.route(logRow(7, { id: 'log-1', object_type: 'Order', modification_type: 'INSERT', object_id: E1 }));
    assert.deepEqual(
      l.messages.map((m) => [m.subject, m.eventId, m.headers['Fraiseql-Mutation']]),
      [['order.any', 'ev-1', 'createOrder']],
    );
    // the same row in another transaction (or a transaction without emit_mutation) is its own event
    const other = log.route(logRow(8, { id: 'log-2', object_type: 'Order', modification_type: 'INSERT', object_id: E1 }));
    assert.deepEqual(
      other.messages.map((m) => [m.subject, m.eventId]),
      [
        ['order.created', 'log-2'],
        ['order.any', 'log-2'],
      ],
    );
  });

  test('a replayed transaction (after a reconnect) pairs the same way; CUSTOM pairs with any operation', () => {
    const twins = new MutationTwins();
    const outbox = new OutboxRouter(config, 'db', twins);
    const log = new ChangeLogRouter(config, 'db', mutations, twins);
    for (let pass = 0; pass < 2; pass++) {
      outbox.route(outboxRow(11, 'ev-9', E1, 'promoteOrder', 'CUSTOM'));
      const l = log.route(logRow(11, { id: 'log-9', object_type: 'Order', modification_type: 'INSERT', object_id: E1 }));
      assert.deepEqual(
        l.messages.map((m) => [m.subject, m.eventId]),
        [
          ['order.created', 'ev-9'],
          ['order.any', 'ev-9'],
        ],
        `pass ${pass}: promoteOrder was unrouted, so the change-log row goes everywhere, as that event`,
      );
    }
  });

  test('a different entity, or an operation that contradicts, is not a twin', () => {
    const twins = new MutationTwins();
    const outbox = new OutboxRouter(config, 'db', twins);
    const log = new ChangeLogRouter(config, 'db', mutations, twins);
    outbox.route(outboxRow(12, 'ev-a', '0b0c0000-0000-0000-0000-0000000000ff'));
    const a = log.route(logRow(12, { id: 'log-a', object_type: 'Order', modification_type: 'INSERT', object_id: E1 }));
    assert.equal(a.messages.length, 2);
    outbox.route(outboxRow(13, 'ev-b', E1, 'createOrder', 'INSERT'));
    const b = log.route(logRow(13, { id: 'log-b', object_type: 'Order', modification_type: 'DELETE', object_id: E1 }));
    assert.deepEqual(
      b.messages.map((m) => [m.subject, m.eventId]),
      [['order.any', 'log-b']],
    );
  });

  test('a capture-trigger row matches entity entries only and never takes a twin', () => {
    const twins = new MutationTwins();
    const outbox = new OutboxRouter(config, 'db', twins);
    const log = new ChangeLogRouter(config, 'db', mutations, twins);
    outbox.route(outboxRow(14, 'ev-t', E1));
    const t = log.route(
      logRow(14, {
        id: 'log-t',
        object_type: 'Order',
        modification_type: 'INSERT',
        object_id: E1,
        extra_metadata: '{"cdc_source": "fallback_trigger"}',
      }),
    );
    assert.deepEqual(
      t.messages.map((m) => [m.subject, m.eventId, m.headers['Fraiseql-Mutation']]),
      [['order.any', 'log-t', undefined]],
    );
    assert.equal(JSON.parse(t.messages[0]!.body.toString()).mutation, null);
  });

  test('CREATE in a row or a config entry is INSERT', () => {
    const log = new ChangeLogRouter(config, 'db', mutations);
    const r = log.route(logRow(15, { id: 'log-c', object_type: 'Order', modification_type: 'create', object_id: E1 }));
    assert.equal(r.messages[0]!.headers['Fraiseql-Operation'], 'INSERT');
    assert.equal(JSON.parse(r.messages[0]!.body.toString()).operation, 'INSERT');
    const c = parseConfig(
      `[database]\nurl = "postgres://x@h/db"\n[observers]\nnats_url = "nats://h:4222"\n` +
        `[[observers.publish]]\nentity = "Order"\noperation = "create"\nsubject = "s"\n` +
        `[[observers.rules]]\ntable = "tb_order"\nevent = "CREATE"\nsubject = "t"\n`,
      'fraiseql.toml',
      {},
    );
    assert.equal(c.observers.publish[0]!.operation, 'INSERT');
    assert.equal(c.observers.rules[0]!.event, 'INSERT');
  });

  test('trace_context → traceparent, validated', () => {
    assert.equal(traceparentOf(TRACE), TRACEPARENT);
    assert.equal(traceparentOf({ ...TRACE, trace_id: TRACE.trace_id.toUpperCase() }), null, 'upper-case hex');
    assert.equal(traceparentOf({ ...TRACE, trace_id: '0'.repeat(32) }), null, 'all-zero trace id');
    assert.equal(traceparentOf({ ...TRACE, parent_id: '0'.repeat(16) }), null, 'all-zero parent id');
    assert.equal(traceparentOf({ ...TRACE, parent_id: 'abc' }), null, 'wrong length');
    assert.equal(traceparentOf({ ...TRACE, version: 'ff' }), null, 'version ff');
    assert.equal(traceparentOf({ ...TRACE, trace_flags: 1 }), null, 'not a string');
    assert.equal(traceparentOf({ traceparent: TRACEPARENT }), null, 'FraiseQL never writes a traceparent key');
    assert.equal(traceparentOf(null), null);
    assert.equal(traceparentOf([TRACE]), null);
    const log = new ChangeLogRouter(config, 'db', mutations);
    const bad = log.route(
      logRow(16, {
        id: 'x',
        object_type: 'Order',
        modification_type: 'INSERT',
        object_id: E1,
        trace_context: '{"version":"00","trace_id":"x"}',
      }),
    );
    assert.equal(bad.messages[0]!.headers['traceparent'], undefined);
  });

  test('the compiled schema: unions give member types, operations FraiseQL serialises, camelCase and snake_case names', async () => {
    const { loadMutationMap } = await import('../src/route/changelog.js');
    const { mkdtemp, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const dir = await mkdtemp(join(tmpdir(), 'fraiseql-schema-'));
    try {
      const file = join(dir, 'schema.compiled.json');
      await writeFile(file, JSON.stringify(SCHEMA));
      const m = loadMutationMap(file);
      assert.deepEqual([...m.get('createuser')!.entities], ['CreateUserResult', 'User', 'CreateUserError']);
      assert.equal(m.get('createuser')!.operation, 'INSERT');
      assert.equal(m.get('createuser')!.sqlSource, 'app.fn_create_user');
      assert.equal(m.get('updateorder')!.operation, 'UPDATE');
      assert.equal(m.get('deleteorder')!.operation, 'DELETE');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

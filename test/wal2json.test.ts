/**
 * `[relay] plugin = "wal2json"`: the decoder on handwritten messages, the decoder against pgoutput
 * on the same WAL, and the relay's core promises with wal2json against real servers, including
 * message-for-message equality with a pgoutput relay reading the same database.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import pg from 'pg';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect as natsConnect } from '@nats-io/transport-node';
import { TestEnv, allowWal2json, sleep } from './fixture.js';
import { LocalNats } from '../src/local/nats.js';
import { LocalPostgres } from '../src/local/postgres.js';
import { findPostgresBin } from '../src/local/binaries.js';
import { loadConfig } from '../src/config/load.js';
import { migrate } from '../src/schema/migrate.js';
import { createLogger } from '../src/util/log.js';
import { Relay } from '../src/relay/relay.js';
import { Wal2JsonDecoder, Wal2JsonDecodeError, parseJsonKeepingNumbers, parsePgTimestamp } from '../src/source/wal2json.js';
import { PgoutputDecoder } from '../src/source/pgoutput.js';
import { escapeWal2JsonName, startReplicationSql, wal2jsonOptions, type StreamedTable } from '../src/source/plugin.js';
import { publishedTables } from '../src/source/replication.js';
import { formatLsn, PG_EPOCH_OFFSET_MICROS } from '../src/source/lsn.js';
import type { Decoder } from '../src/source/decoder.js';
import type { PgoutputMessage, Relation, Tuple } from '../src/source/types.js';

// ---- unit: the decoder on handwritten wal2json v2 messages ------------------------------------

const enc = (o: unknown) => Buffer.from(typeof o === 'string' ? o : JSON.stringify(o));

describe('wal2json decoder', () => {
  test('numbers keep every digit; strings that look like numbers are untouched', () => {
    const v = parseJsonKeepingNumbers(
      '{"a":12345678901234567890123,"b":-0.1000000000000000055511151231257827,"c":1.5e-07,"d":"12","e":"x\\"1,2\\"","f":[1,true,null]}',
    );
    assert.deepEqual(v, {
      a: '12345678901234567890123',
      b: '-0.1000000000000000055511151231257827',
      c: '1.5e-07',
      d: '12',
      e: 'x"1,2"',
      f: ['1', true, null],
    });
  });

  test('commit timestamps become µs since 2000-01-01, whatever the offset', () => {
    assert.equal(parsePgTimestamp('2000-01-01 00:00:00+00'), 0n);
    const unixMicros = BigInt(Date.parse('2026-11-22T05:22:37.441Z')) * 1000n + 100n;
    assert.equal(parsePgTimestamp('2026-11-22 05:22:37.4411+00'), unixMicros - PG_EPOCH_OFFSET_MICROS);
    assert.equal(parsePgTimestamp('2026-11-22 10:52:37.4411+05:30'), unixMicros - PG_EPOCH_OFFSET_MICROS);
    assert.equal(parsePgTimestamp('2026-11-22 02:22:37.4411-03'), unixMicros - PG_EPOCH_OFFSET_MICROS);
    assert.equal(parsePgTimestamp('1999-12-31 23:59:59.999999+00'), -1n);
    assert.equal(parsePgTimestamp('yesterday'), null);
  });

  test('B and C: xid, commit time, and the commit end LSN (nextlsn) to acknowledge', () => {
    const d = new Wal2JsonDecoder();
    const b = d.decode(
      enc({ action: 'B', xid: 4294967295, timestamp: '2026-11-22 05:22:37.429022+00', lsn: '0/19518B8', nextlsn: '0/1951920' }),
    );
    assert.deepEqual(b, {
      tag: 'begin',
      finalLsn: 0x19518b8n,
      commitTime: parsePgTimestamp('2026-11-22 05:22:37.429022+00'),
      xid: 4294967295,
    });
    const c = d.decode(enc({ action: 'C', xid: 727, timestamp: '2026-11-22 05:22:37.429022+00', lsn: '0/19518B8', nextlsn: 'A/1951920' }));
    assert.deepEqual(c, {
      tag: 'commit',
      flags: 0,
      commitLsn: 0x19518b8n,
      endLsn: 0xa01951920n,
      commitTime: parsePgTimestamp('2026-11-22 05:22:37.429022+00'),
    });
  });

  test('I: values as pgoutput text, one stable relation per column list, pk flagged', () => {
    const d = new Wal2JsonDecoder();
    const row = (qty: number) =>
      enc(
        `{"action":"I","xid":7,"lsn":"0/1","schema":"public","table":"t","columns":[` +
          `{"name":"id","typeoid":23,"value":${qty}},{"name":"ok","typeoid":16,"value":false},{"name":"n","typeoid":1700,"value":12.50},` +
          `{"name":"big","typeoid":20,"value":9007199254740993},{"name":"j","typeoid":3802,"value":"{\\"a\\": 1.10}"},` +
          `{"name":"b","typeoid":17,"value":"0102"},{"name":"s","typeoid":25,"value":null}],"pk":[{"name":"id","typeoid":23}]}`,
      );
    const m = d.decode(row(1));
    assert.equal(m.tag, 'insert');
    assert.ok(m.tag === 'insert');
    assert.deepEqual(m.newTuple, ['1', 'f', '12.50', '9007199254740993', '{"a": 1.10}', '\\x0102', null]);
    const rel = d.relation(m.relationId)!;
    assert.equal(rel.schema, 'public');
    assert.equal(rel.name, 't');
    assert.deepEqual(
      rel.columns.map((c) => [c.name, c.typeOid, c.flags]),
      [
        ['id', 23, 1],
        ['ok', 16, 0],
        ['n', 1700, 0],
        ['big', 20, 0],
        ['j', 3802, 0],
        ['b', 17, 0],
        ['s', 25, 0],
      ],
    );
    const again = d.decode(row(2));
    assert.ok(again.tag === 'insert');
    assert.equal(again.relationId, m.relationId, 'same columns, same relation');
    const other = d.decode(
      enc({
        action: 'I',
        xid: 7,
        lsn: '0/2',
        schema: 'public',
        table: 't',
        columns: [{ name: 'id', typeoid: 23, value: 3 }],
        pk: [{ name: 'id', typeoid: 23 }],
      }),
    );
    assert.ok(other.tag === 'insert');
    assert.notEqual(other.relationId, m.relationId, 'another column list, another relation');
  });

  test('U (default identity): an unchanged TOAST column is undefined; no old key unless the key changed', () => {
    const d = new Wal2JsonDecoder();
    const ins = d.decode(
      enc({
        action: 'I',
        schema: 's',
        table: 'doc',
        columns: [
          { name: 'id', typeoid: 23, value: '1' },
          { name: 'title', typeoid: 25, value: 'a' },
          { name: 'body', typeoid: 25, value: 'x'.repeat(10) },
        ],
        pk: [{ name: 'id', typeoid: 23 }],
      }),
    );
    const upd = d.decode(
      enc({
        action: 'U',
        schema: 's',
        table: 'doc',
        columns: [
          { name: 'id', typeoid: 23, value: '1' },
          { name: 'title', typeoid: 25, value: 'b' },
        ],
        identity: [{ name: 'id', typeoid: 23, value: '1' }],
        pk: [{ name: 'id', typeoid: 23 }],
      }),
    );
    assert.ok(ins.tag === 'insert' && upd.tag === 'update');
    assert.equal(upd.relationId, ins.relationId, 'the whole table, as learned from the insert');
    assert.deepEqual(upd.newTuple, ['1', 'b', undefined]);
    assert.equal(upd.keyTuple, null);
    assert.equal(upd.oldTuple, null);
    const moved = d.decode(
      enc({
        action: 'U',
        schema: 's',
        table: 'doc',
        columns: [
          { name: 'id', typeoid: 23, value: '2' },
          { name: 'title', typeoid: 25, value: 'b' },
        ],
        identity: [{ name: 'id', typeoid: 23, value: '1' }],
        pk: [{ name: 'id', typeoid: 23 }],
      }),
    );
    assert.ok(moved.tag === 'update');
    assert.deepEqual(moved.keyTuple, ['1', null, null], "the old key, like pgoutput's K tuple");
    const del = d.decode(
      enc({
        action: 'D',
        schema: 's',
        table: 'doc',
        identity: [{ name: 'id', typeoid: 23, value: '2' }],
        pk: [{ name: 'id', typeoid: 23 }],
      }),
    );
    assert.ok(del.tag === 'delete');
    assert.deepEqual(del.keyTuple, ['2', null, null]);
    assert.equal(del.oldTuple, null);
    assert.deepEqual(
      d.relation(del.relationId)!.columns.map((c) => c.flags),
      [1, 0, 0],
    );
  });

  test('U and D with REPLICA IDENTITY FULL: the whole old row, every column flagged', () => {
    const d = new Wal2JsonDecoder();
    const cols = (t: string, body?: string) => [
      { name: 'id', typeoid: 23, value: '1' },
      { name: 'title', typeoid: 25, value: t },
      ...(body === undefined ? [] : [{ name: 'body', typeoid: 25, value: body }]),
    ];
    const upd = d.decode(
      enc({ action: 'U', schema: 's', table: 'full', columns: cols('b'), identity: cols('a', 'BIG'), pk: [{ name: 'id', typeoid: 23 }] }),
    );
    assert.ok(upd.tag === 'update');
    assert.deepEqual(upd.newTuple, ['1', 'b', undefined]);
    assert.deepEqual(upd.oldTuple, ['1', 'a', 'BIG']);
    assert.equal(upd.keyTuple, null);
    const rel = d.relation(upd.relationId)!;
    assert.equal(rel.replicaIdentity, 'f');
    assert.deepEqual(
      rel.columns.map((c) => `${c.name}:${c.flags}`),
      ['id:1', 'title:1', 'body:1'],
    );
    const del = d.decode(enc({ action: 'D', schema: 's', table: 'full', identity: cols('b', 'BIG'), pk: [{ name: 'id', typeoid: 23 }] }));
    assert.ok(del.tag === 'delete');
    assert.deepEqual(del.oldTuple, ['1', 'b', 'BIG']);
    assert.equal(del.relationId, upd.relationId);
  });

  test('catalog facts: INSERT flags follow the replica identity, generated columns are left out', () => {
    const facts: StreamedTable[] = [
      { schema: 's', name: 'f', replicaIdentity: 'f', keys: [], generated: ['g'] },
      { schema: 's', name: 'i', replicaIdentity: 'i', keys: ['code'], generated: [] },
    ];
    const d = new Wal2JsonDecoder(facts);
    const f = d.decode(
      enc({
        action: 'I',
        schema: 's',
        table: 'f',
        columns: [
          { name: 'a', typeoid: 25, value: 'x' },
          { name: 'g', typeoid: 23, value: 2 },
        ],
        pk: [],
      }),
    );
    assert.ok(f.tag === 'insert');
    assert.deepEqual(f.newTuple, ['x']);
    assert.deepEqual(
      d.relation(f.relationId)!.columns.map((c) => `${c.name}:${c.flags}`),
      ['a:1'],
    );
    const i = d.decode(
      enc({
        action: 'I',
        schema: 's',
        table: 'i',
        columns: [
          { name: 'id', typeoid: 23, value: 1 },
          { name: 'code', typeoid: 25, value: 'c' },
        ],
        pk: [{ name: 'id', typeoid: 23 }],
      }),
    );
    assert.ok(i.tag === 'insert');
    assert.deepEqual(
      d.relation(i.relationId)!.columns.map((c) => `${c.name}:${c.flags}`),
      ['id:0', 'code:1'],
    );
  });

  test('M, T and unknown actions; malformed input throws a typed error', () => {
    const d = new Wal2JsonDecoder();
    const m = d.decode(
      enc({
        action: 'M',
        xid: null,
        timestamp: null,
        lsn: '0/19B35A8',
        transactional: false,
        prefix: 'fraiseql-relay/heartbeat',
        content: 'héllo',
      }),
    );
    assert.deepEqual(m, {
      tag: 'message',
      transactional: false,
      lsn: 0x19b35a8n,
      prefix: 'fraiseql-relay/heartbeat',
      content: Buffer.from('héllo'),
    });
    const t = d.decode(enc({ action: 'T', xid: 1, lsn: '0/1', schema: 'public', table: 't2' }));
    assert.ok(t.tag === 'truncate');
    assert.equal(d.relation(t.relationIds[0]!)!.name, 't2');
    assert.deepEqual(d.decode(enc({ action: 'X', whatever: [1, 2] })), { tag: 'unknown', byte: 0x58 });
    assert.throws(() => d.decode(enc('{"action":"I","schema":')), Wal2JsonDecodeError);
    assert.throws(() => d.decode(enc('[1,2]')), Wal2JsonDecodeError);
    assert.throws(() => d.decode(enc({ action: 'C', xid: 1, timestamp: '2026-11-22 05:22:37+00', lsn: '0/1' })), /nextlsn/);
    assert.throws(() => d.decode(enc({ action: 'B', xid: 1, lsn: '0/1', nextlsn: '0/2' })), /timestamp/);
    assert.throws(
      () => d.decode(enc({ action: 'I', schema: 's', table: 't', columns: [{ name: 'a', value: { x: 1 } }] })),
      /unexpected value/,
    );
  });

  test('START_REPLICATION options: publications for pgoutput, escaped add-tables for wal2json', () => {
    assert.equal(escapeWal2JsonName(`we.ird t,a*b\\'`), `we\\.ird\\ t\\,a\\*b\\\\\\'`);
    assert.equal(
      startReplicationSql('s"lot', { plugin: 'pgoutput', publications: ['p_outbox', "it's"] }),
      `START_REPLICATION SLOT "s""lot" LOGICAL 0/0 (proto_version '1', publication_names '"p_outbox","it''s"', messages 'true')`,
    );
    const sql = startReplicationSql('s', {
      plugin: 'wal2json',
      tables: [
        { schema: 'fraiseql_relay', name: 'outbox', replicaIdentity: 'd', keys: ['id'], generated: [] },
        { schema: 'we.ird', name: "t,a*b c'", replicaIdentity: 'd', keys: [], generated: [] },
      ],
      actions: ['insert', 'update'],
      numericAsString: false,
    });
    assert.equal(
      sql,
      `START_REPLICATION SLOT "s" LOGICAL 0/0 ("format-version" '2', "include-transaction" 'true', "include-lsn" 'true', "include-xids" 'true', ` +
        `"include-timestamp" 'true', "include-types" 'false', "include-type-oids" 'true', "include-pk" 'true', "actions" 'insert,update', ` +
        `"add-tables" 'fraiseql_relay.outbox,we\\.ird.t\\,a\\*b\\ c\\''')`,
    );
    assert.match(
      startReplicationSql('s', { plugin: 'wal2json', tables: [], actions: ['insert'], numericAsString: true }),
      /"numeric-data-types-as-string" 'true'/,
    );
  });
});

// ---- integration ------------------------------------------------------------------------------

const wal2jsonLib = (() => {
  try {
    return join(findPostgresBin(), '..', 'lib', 'wal2json.so');
  } catch {
    return null;
  }
})();
const SKIP =
  wal2jsonLib && existsSync(wal2jsonLib) ? false : 'the wal2json plugin is not installed (apt-get install postgresql-<version>-wal2json)';

/** Transactions as comparable lines: begin/commit positions, and each change by column name. */
function normalize(d: Decoder, msgs: PgoutputMessage[]): unknown[] {
  const out: unknown[] = [];
  let txn: unknown[] = [];
  const rec = (rel: Relation, t: Tuple | null) =>
    t && Object.fromEntries(rel.columns.map((c, i) => [c.name, t[i] === undefined ? '<unchanged toast>' : t[i]]));
  for (const m of msgs) {
    if (m.tag === 'begin') txn = [`B final=${formatLsn(m.finalLsn)} xid=${m.xid} time=${m.commitTime}`];
    else if (m.tag === 'commit') {
      txn.push(`C commit=${formatLsn(m.commitLsn)} end=${formatLsn(m.endLsn)} time=${m.commitTime}`);
      if (txn.length > 2) out.push(...txn); // pgoutput skips empty transactions; wal2json sends them
      txn = [];
    } else if (m.tag === 'insert' || m.tag === 'update' || m.tag === 'delete') {
      const rel = d.relation(m.relationId)!;
      txn.push({
        op: m.tag,
        table: `${rel.schema}.${rel.name}`,
        columns: rel.columns.map((c) => `${c.name}:${c.typeOid}:${c.flags}`).join(' '),
        new: m.tag === 'delete' ? null : rec(rel, m.newTuple),
        key: m.tag === 'insert' ? null : rec(rel, m.keyTuple),
        old: m.tag === 'insert' ? null : rec(rel, m.oldTuple),
      });
    } else if (m.tag === 'message') {
      const line = `M ${m.transactional} ${formatLsn(m.lsn)} ${m.prefix} ${m.content.toString('utf8')}`;
      if (m.transactional) txn.push(line);
      else out.push(line);
    }
  }
  return out;
}

test('the decoder gives what pgoutput gives on the same WAL, commit end LSNs included', { skip: SKIP }, async () => {
  const pgs = await LocalPostgres.start();
  try {
    const url = await pgs.createDatabase('app');
    await allowWal2json(url);
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      // the session settings the relay's replication connection uses
      await c.query(
        `SET TimeZone = UTC; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3; SET IntervalStyle = postgres; SET bytea_output = hex`,
      );
      await c.query(`
        CREATE SCHEMA "we.ird";
        CREATE TABLE "we.ird"."t,a*b c" (id int PRIMARY KEY, v text);
        CREATE TABLE typed (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), s text, total numeric(12,2), n numeric, qty int, big bigint,
          f float8, r real, paid boolean, items text[], ia int[], data jsonb, j json, b bytea, bits bit(3), at timestamptz, ts timestamp,
          d date, iv interval, g int GENERATED ALWAYS AS (qty * 2) STORED);
        CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
        CREATE TABLE docfull (a text, id int PRIMARY KEY, body text);
        ALTER TABLE docfull REPLICA IDENTITY FULL;
        CREATE TABLE byidx (id int PRIMARY KEY, code text NOT NULL, v text);
        CREATE UNIQUE INDEX byidx_code ON byidx (code);
        ALTER TABLE byidx REPLICA IDENTITY USING INDEX byidx_code;
        CREATE TABLE nopk (a int, b text);
        ALTER TABLE nopk REPLICA IDENTITY FULL;
        CREATE TABLE ignored (x int);
        CREATE FUNCTION big_text() RETURNS text LANGUAGE sql AS $$ SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g $$;
        CREATE PUBLICATION pub FOR TABLE "we.ird"."t,a*b c", typed, doc, docfull, byidx, nopk;`);
      await c.query(`SELECT pg_create_logical_replication_slot('via_pgoutput', 'pgoutput')`);
      await c.query(`SELECT pg_create_logical_replication_slot('via_wal2json', 'wal2json')`);
      await c.query(`INSERT INTO typed (s, total, n, qty, big, f, r, paid, items, ia, data, j, b, bits, at, ts, d, iv)
        VALUES ('a"d\\a é ✓', 12.5, 123456789012345678901234567890.123456789, 3, 9007199254740993, 0.1, 1.5e-7, true, ARRAY['x', 'y z', NULL], '{1,2}',
                '{"k": 1.000000000000000000001, "s": "é"}', '{ "a" : 1 }', '\\x0102ff', B'101', '2026-11-22 10:00:00.123456+02', '2026-01-01 00:00:00.5',
                '2026-02-03', '1 day 2 hours')`);
      await c.query(`UPDATE typed SET qty = 4, paid = false, s = NULL`);
      await c.query(`DELETE FROM typed`);
      await c.query(`BEGIN; INSERT INTO doc VALUES (1, 'a', big_text()); UPDATE doc SET title = 'b'; COMMIT`);
      await c.query(`UPDATE doc SET id = 2; DELETE FROM doc`);
      await c.query(
        `INSERT INTO docfull VALUES ('x', 1, big_text()); UPDATE docfull SET a = 'y'; UPDATE docfull SET id = 2; DELETE FROM docfull`,
      );
      await c.query(`INSERT INTO byidx VALUES (1, 'c1', 'v'); UPDATE byidx SET v = 'w'; UPDATE byidx SET code = 'c2'; DELETE FROM byidx`);
      await c.query(`INSERT INTO nopk VALUES (1, 'x'); UPDATE nopk SET b = 'y'; DELETE FROM nopk`);
      await c.query(`INSERT INTO "we.ird"."t,a*b c" VALUES (1, 'w')`);
      await c.query(`INSERT INTO ignored VALUES (1)`); // in no publication: neither plugin streams it
      await c.query(
        `BEGIN; SELECT pg_logical_emit_message(true, 'fraiseql-relay/heartbeat', 'beat'); INSERT INTO nopk VALUES (2, 'z'); COMMIT`,
      );
      await c.query(`SELECT pg_logical_emit_message(false, 'other', 'non-transactional')`);
      await c.query(`INSERT INTO typed (f, n) VALUES ('NaN', 'Infinity')`);

      const { tables, actions } = await publishedTables(c, ['pub']);
      assert.deepEqual(
        tables.map((t) => `${t.schema}.${t.name}:${t.replicaIdentity}:${t.keys.join('+')}:${t.generated.join('+')}`),
        [
          'public.byidx:i:code:',
          'public.doc:d:id:',
          'public.docfull:f::',
          'public.nopk:f::',
          'public.typed:d:id:g',
          'we.ird.t,a*b c:d:id:',
        ],
      );
      assert.deepEqual(actions, ['insert', 'update', 'delete']);
      const p = await c.query<{ data: Buffer }>(
        `SELECT data FROM pg_logical_slot_peek_binary_changes('via_pgoutput', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')`,
      );
      let numericAsString = true;
      await c
        .query(`SELECT count(*) FROM pg_logical_slot_peek_changes('via_wal2json', '0/1', NULL, 'numeric-data-types-as-string', 'true')`)
        .catch(() => (numericAsString = false));
      const opts = wal2jsonOptions({ tables, actions, numericAsString }).flat();
      const w = await c.query<{ data: string }>(
        `SELECT data FROM pg_logical_slot_peek_changes('via_wal2json', NULL, NULL, ${opts.map((_, i) => `$${i + 1}`).join(', ')})`,
        opts,
      );
      const pd = new PgoutputDecoder();
      const wd = new Wal2JsonDecoder(tables);
      const fromPgoutput = normalize(
        pd,
        p.rows.map((r) => pd.decode(r.data)),
      );
      const fromWal2json = normalize(
        wd,
        w.rows.map((r) => wd.decode(Buffer.from(r.data))),
      );
      // NaN/±Infinity: wal2json < 2.6 can only write null (the one loss it has, documented)
      const special = fromWal2json.findLast((x) => typeof x === 'object') as { new: Record<string, unknown> };
      assert.deepEqual([special.new['f'], special.new['n']], numericAsString ? ['NaN', 'Infinity'] : [null, null]);
      special.new['f'] = 'NaN';
      special.new['n'] = 'Infinity';
      assert.ok(fromPgoutput.length > 40, `${fromPgoutput.length} lines`);
      assert.deepEqual(fromWal2json, fromPgoutput);
      // and the positions acknowledged are the same, transaction by transaction
      const ends = (lines: unknown[]) =>
        lines.filter((l): l is string => typeof l === 'string' && l.startsWith('C ')).map((l) => l.split(' ')[2]);
      assert.equal(ends(fromWal2json).length, 11);
      assert.deepEqual(ends(fromWal2json), ends(fromPgoutput));
      // wal2json also sends the empty transactions (DDL, the slot creation, the ignored table's insert)
      const commits = w.rows.filter((r) => r.data.startsWith('{"action":"C"')).length;
      assert.ok(commits > 11, `${commits} wal2json commits`);
    } finally {
      await c.end();
    }
  } finally {
    await pgs.destroy();
  }
});

// ---- the relay with wal2json ------------------------------------------------------------------

const TOML = (extra = '') => `
[project]
name = "w2j-service"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
subscription_topic = "order_created"

[[observers.publish]]
entity = "Order"
operation = "UPDATE"
subject = "fraiseql.order.changed"

[[observers.rules]]
table = "tb_doc"
event = "INSERT"
subject = "fraiseql.doc.inserted"

[[observers.rules]]
table = "tb_doc"
event = "UPDATE"
subject = "fraiseql.doc.updated"
before_image = true

[[observers.rules]]
table = "tb_doc"
event = "DELETE"
subject = "fraiseql.doc.deleted"

[[observers.rules]]
table = "tb_note"
event = "UPDATE"
subject = "fraiseql.note.updated"

[[observers.rules]]
table = "tb_note"
event = "DELETE"
subject = "fraiseql.note.deleted"

[[observers.rules]]
table = "app.tb_typed"
event = "INSERT"
subject = "fraiseql.typed.inserted"

[relay]
listen = "127.0.0.1:0"
retention = "24h"
${extra}

[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;

const SCHEMA = `
CREATE SCHEMA app;
CREATE TYPE app.mutation_response AS (succeeded boolean, state_changed boolean, error_class text, status_detail text,
  http_status smallint, message text, entity_id uuid, entity_type text, entity jsonb, updated_fields text[], cascade jsonb,
  error_detail jsonb, metadata jsonb);
CREATE TABLE app.tb_order (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), customer text, items text[], total numeric(20,2),
  created_at timestamptz NOT NULL DEFAULT '2026-11-22 10:00:00.123456+00');
CREATE FUNCTION app.fn_create_order(p_customer text, p_items text[]) RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE o app.tb_order;
BEGIN
  INSERT INTO app.tb_order (customer, items, total) VALUES (p_customer, p_items, 12345678901234.56) RETURNING * INTO o;
  RETURN fraiseql_relay.emit_mutation('create_order',
    ROW(true, true, NULL, 'created', 201, 'ok', o.id, 'Order', to_jsonb(o), NULL, NULL, NULL, jsonb_build_object('item_ids', to_jsonb(p_items)))::app.mutation_response);
END $$;
CREATE TABLE tb_doc (id int PRIMARY KEY, title text, body text);
CREATE TABLE tb_note (id int PRIMARY KEY, title text, body text);
CREATE TABLE app.tb_typed (id bigint PRIMARY KEY, n numeric, f float8, ok boolean, b bytea, j jsonb, tags text[], nums int[],
  at timestamptz, iv interval, u uuid, note text, g bigint GENERATED ALWAYS AS (id * 2) STORED);
CREATE FUNCTION big_text() RETURNS text LANGUAGE sql AS $$ SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g $$;
-- FraiseQL's change log (its columns the relay maps), so the change-log source is compared too
CREATE SCHEMA core;
CREATE TABLE core.tb_entity_change_log (
  pk_entity_change_log bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, object_type text NOT NULL, modification_type text NOT NULL,
  id uuid NOT NULL DEFAULT gen_random_uuid(), created_at timestamptz NOT NULL DEFAULT now(), tenant_id uuid, object_id uuid,
  object_data jsonb, object_data_before jsonb, updated_fields text[], trace_context jsonb);
`;

/** Every message of a stream with its raw body text, in stream order. */
async function readRaw(natsUrl: string): Promise<{ subject: string; headers: Record<string, string>; body: string }[]> {
  const nc = await natsConnect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info('FRAISEQL');
    const out: { subject: string; headers: Record<string, string>; body: string }[] = [];
    if (info.state.messages === 0) return out;
    const consumer = await jetstream(nc).consumers.get('FRAISEQL');
    const iter = await consumer.consume({ max_messages: 1000 });
    for await (const m of iter) {
      const headers: Record<string, string> = {};
      if (m.headers) for (const [k] of m.headers) headers[k] = m.headers.get(k);
      out.push({ subject: m.subject, headers, body: m.string() });
      if (m.seq >= info.state.last_seq) break;
    }
    return out;
  } finally {
    await nc.close();
  }
}

async function streamCount(natsUrl: string): Promise<number> {
  const nc = await natsConnect({ servers: natsUrl });
  try {
    return (await (await jetstreamManager(nc)).streams.info('FRAISEQL')).state.messages;
  } catch {
    return 0;
  } finally {
    await nc.close();
  }
}

async function waitForCount(natsUrl: string, n: number, timeoutMs = 30_000): Promise<number> {
  let c = 0;
  for (const until = Date.now() + timeoutMs; Date.now() < until; await sleep(100)) {
    c = await streamCount(natsUrl);
    if (c >= n) return c;
  }
  throw new Error(`timed out: ${c} of ${n} messages`);
}

/** Commits `txns` transactions of `perTxn` emit() events each. */
async function produce(url: string, subject: string, first: number, txns: number, perTxn: number, pauseMs = 0): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    for (let t = 0; t < txns; t++) {
      const from = first + t * perTxn;
      await c.query(`SELECT fraiseql_relay.emit($3, jsonb_build_object('n', g)) FROM generate_series($1::int, $2::int) g`, [
        from,
        from + perTxn - 1,
        subject,
      ]);
      if (pauseMs > 0) await sleep(pauseMs);
    }
  } finally {
    await c.end();
  }
  return txns * perTxn;
}

function assertExactlyOnce(bodies: string[], expected: number): void {
  const parsed = bodies.map((b) => JSON.parse(b) as { event_id: string; entity: { n: number } });
  assert.equal(new Set(parsed.map((p) => p.event_id)).size, parsed.length, 'no event id twice');
  assert.equal(parsed.length, expected, 'every committed event is in the stream');
  const ns = parsed.map((p) => p.entity.n).sort((a, b) => a - b);
  for (let i = 0; i < ns.length; i++) assert.equal(ns[i], i, `event ${i} present once`);
}

describe('the relay with plugin = "wal2json"', { skip: SKIP }, () => {
  let env: TestEnv;
  let natsW: LocalNats;
  let relayP: Relay | undefined;
  let relayW: Relay | undefined;
  const files = { p: '', w: '' };

  before(async () => {
    env = await TestEnv.create();
    natsW = await LocalNats.start();
    await allowWal2json(env.dbUrl);
    await env.sql(SCHEMA);
    files.p = join(env.dir, 'pgoutput.toml');
    files.w = join(env.dir, 'wal2json.toml');
    await writeFile(files.p, TOML(`slot = "via_pgoutput"\nplugin = "pgoutput"`));
    await writeFile(files.w, TOML(`slot = "via_wal2json"\nplugin = "wal2json"`));
    const log = createLogger('silent');
    const configP = loadConfig(files.p, env.env);
    const configW = loadConfig(files.w, { ...env.env, NATS_URL: natsW.url });
    await migrate(configP, log);
    await migrate(configW, log);
    const opts = { backoffMinMs: 100, backoffMaxMs: 1000, publishTimeoutMs: 2000 };
    relayP = new Relay(configP, createLogger(process.env['TEST_LOG_LEVEL'] ?? 'silent'), opts);
    relayW = new Relay(configW, createLogger(process.env['TEST_LOG_LEVEL'] ?? 'silent'), opts);
    await relayP.start();
    await relayW.start();
  });

  after(async () => {
    await relayP?.stop();
    await relayW?.stop();
    await natsW?.destroy();
    await env?.destroy();
  });

  test('migrate created each slot with its plugin and refuses a slot whose plugin differs', async () => {
    const slots = await env.sql<{ slot_name: string; plugin: string }>(`SELECT slot_name, plugin FROM pg_replication_slots ORDER BY 1`);
    assert.deepEqual(slots, [
      { slot_name: 'via_pgoutput', plugin: 'pgoutput' },
      { slot_name: 'via_wal2json', plugin: 'wal2json' },
    ]);
    await writeFile(join(env.dir, 'mismatch.toml'), TOML(`slot = "via_pgoutput"\nplugin = "wal2json"`));
    await assert.rejects(
      migrate(loadConfig(join(env.dir, 'mismatch.toml'), env.env), createLogger('silent')),
      (err: Error & { exitCode?: number }) => {
        assert.equal(err.name, 'UsageError');
        assert.equal(err.exitCode, 2);
        assert.match(err.message, /slot "via_pgoutput" uses plugin pgoutput, but \[relay\] plugin = "wal2json"/);
        return true;
      },
    );
  });

  test("every message equals the pgoutput relay's for the same rows: subjects, headers and bodies byte for byte", async () => {
    const before = await streamCount(env.nats.url);
    assert.equal(await streamCount(natsW.url), before);
    await env.sql(`INSERT INTO tb_doc VALUES (1, 'first', big_text()), (2, 'second', 'short')`);
    await env.sql(`INSERT INTO tb_note VALUES (1, 'first', big_text())`);
    await env.sql(
      `SELECT set_config('fraiseql.tenant_id', '11111111-1111-1111-1111-111111111111', true), set_config('fraiseql.user_id', 'user-7', true),
              app.fn_create_order('ada', ARRAY['SKU-1', 'SKU-2'])`,
    );
    await env.sql(`UPDATE tb_doc SET title = 'renamed' WHERE id = 1`); // body unchanged and TOASTed; FULL identity gives it back
    await env.sql(`UPDATE tb_note SET title = 'renamed' WHERE id = 1`); // default identity: body listed as unchanged
    await env.sql(`UPDATE tb_doc SET id = 3 WHERE id = 2`);
    await env.sql(`DELETE FROM tb_doc WHERE id = 3`);
    await env.sql(`DELETE FROM tb_note`);
    await env.sql(`INSERT INTO app.tb_typed (id, n, f, ok, b, j, tags, nums, at, iv, u, note) VALUES
      (9007199254740993, 123456789012345678901234567890.123456789, 0.1, false, '\\x00ff', '{"big": 12345678901234567890123, "s": "é\\"q"}',
       ARRAY['a', 'b c', NULL], '{1,-2}', '2026-11-22 10:00:00.5+01', '1 day 02:03:04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL)`);
    await env.sql(`INSERT INTO core.tb_entity_change_log (object_type, modification_type, object_id, object_data, object_data_before, updated_fields, tenant_id)
      VALUES ('Order', 'UPDATE', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"id": 1, "total": 1.10}', '{"id": 1, "total": 1.00}', ARRAY['total'], '11111111-1111-1111-1111-111111111111')`);
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after": "comparison"}')`);
    // 2 doc inserts, 1 order (+ its subscription topic), 3 updates, 2 deletes, typed, change log, marker
    const expected = before + 12;
    await waitForCount(env.nats.url, expected);
    await waitForCount(natsW.url, expected);
    const [viaP, viaW] = await Promise.all([readRaw(env.nats.url), readRaw(natsW.url)]);
    assert.equal(viaP.length, expected, viaP.map((m) => m.subject).join(' '));
    assert.equal(viaW.length, expected, viaW.map((m) => m.subject).join(' '));
    for (let i = before; i < expected; i++) {
      assert.deepEqual(viaW[i], viaP[i], `message ${i} (${viaP[i]!.subject})`);
    }
    const bySubject = (s: string) => viaW.filter((m) => m.subject === s).map((m) => JSON.parse(m.body) as Record<string, unknown>);
    assert.deepEqual(
      viaW.slice(before).map((m) => m.subject),
      [
        'fraiseql.doc.inserted',
        'fraiseql.doc.inserted',
        'fraiseql.order.created',
        'fraiseql.subscription.order_created',
        'fraiseql.doc.updated',
        'fraiseql.note.updated',
        'fraiseql.doc.updated',
        'fraiseql.doc.deleted',
        'fraiseql.note.deleted',
        'fraiseql.typed.inserted',
        'fraiseql.order.changed',
        'fraiseql.marker',
      ],
    );
    // the table rule UPDATE with before_image and an unchanged TOASTed column
    const [docUpdate] = bySubject('fraiseql.doc.updated');
    const big = (await env.sql<{ t: string }>(`SELECT big_text() AS t`))[0]!.t;
    assert.equal((docUpdate!['entity'] as { body: string }).body, big, 'the unchanged TOAST value comes from the old row');
    assert.equal((docUpdate!['entity_before'] as { title: string; body: string }).title, 'first');
    assert.equal((docUpdate!['entity_before'] as { body: string }).body, big);
    assert.deepEqual(docUpdate!['updated_fields'], ['title']);
    assert.equal(docUpdate!['metadata'], null);
    const [noteUpdate] = bySubject('fraiseql.note.updated');
    assert.deepEqual(noteUpdate!['metadata'], { unchanged_toast: ['body'] });
    assert.equal('body' in (noteUpdate!['entity'] as object), false, 'never a placeholder');
    const typed = viaW.find((m) => m.subject === 'fraiseql.typed.inserted')!.body;
    assert.match(typed, /"id":9007199254740993,/);
    assert.match(typed, /"n":123456789012345678901234567890\.123456789,/);
    assert.match(typed, /"big": 12345678901234567890123/);
    assert.match(typed, /"b":"\\\\x00ff"/);
    assert.doesNotMatch(typed, /"g":/, 'generated columns are left out, as pgoutput leaves them out');
  });

  test('a rolled-back transaction publishes nothing', async () => {
    const before = await streamCount(natsW.url);
    const c = new pg.Client({ connectionString: env.dbUrl });
    await c.connect();
    try {
      await c.query('BEGIN');
      await c.query(`SELECT app.fn_create_order('rolled-back', ARRAY['SKU-9'])`);
      await c.query(`INSERT INTO tb_doc VALUES (99, 'rolled-back', 'x')`);
      await c.query('ROLLBACK');
      await c.query(`SELECT fraiseql_relay.emit('fraiseql.marker', '{"after": "rollback"}')`);
    } finally {
      await c.end();
    }
    await waitForCount(natsW.url, before + 1);
    await sleep(300);
    const msgs = await readRaw(natsW.url);
    assert.equal(msgs.length, before + 1);
    assert.equal(msgs.at(-1)!.subject, 'fraiseql.marker');
    assert.ok(!msgs.some((m) => m.body.includes('rolled-back')));
  });

  test('2,000 events in 200 transactions arrive in commit order, and the slot is confirmed to the end', async () => {
    const start = await streamCount(natsW.url);
    await produce(env.dbUrl, 'fraiseql.order.seq', 0, 200, 10);
    await waitForCount(natsW.url, start + 2000);
    const ns = (await readRaw(natsW.url))
      .filter((m) => m.subject === 'fraiseql.order.seq')
      .map((m) => (JSON.parse(m.body) as { entity: { n: number } }).entity.n);
    assert.equal(ns.length, 2000);
    for (let i = 0; i < ns.length; i++) assert.equal(ns[i], i, `event ${i} out of order`);
    let lag = -1;
    for (const until = Date.now() + 10_000; Date.now() < until; await sleep(100)) {
      const [r] = await env.sql<{ lag: string }>(
        `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag FROM pg_replication_slots WHERE slot_name = 'via_wal2json'`,
      );
      lag = Number(r!.lag);
      if (lag < 1024) break;
    }
    assert.ok(lag >= 0 && lag < 1024, `slot lag ${lag} bytes`);
  });
});

describe('wal2json under failure', { skip: SKIP }, () => {
  let env: TestEnv;
  before(async () => {
    env = await TestEnv.create({ toml: TOML(`plugin = "wal2json"`) });
    await allowWal2json(env.dbUrl);
    await env.sql(SCHEMA);
    await env.migrate();
  });
  after(async () => {
    await env?.destroy();
  });

  test('NATS stopped while 1,000 events commit, then restarted: all arrive, none twice', async () => {
    const relay = await env.startRelay();
    try {
      await produce(env.dbUrl, 'fraiseql.outage', 0, 10, 10);
      await waitForCount(env.nats.url, 100);
      await env.nats.stop();
      await produce(env.dbUrl, 'fraiseql.outage', 100, 100, 10);
      await sleep(2000); // the relay keeps failing to publish meanwhile
      await env.nats.start();
      await waitForCount(env.nats.url, 1100, 60_000);
      await sleep(500); // a duplicate would show up now
      const msgs = (await readRaw(env.nats.url)).filter((m) => m.subject === 'fraiseql.outage');
      assert.equal(msgs.length, 1100);
      assertExactlyOnce(
        msgs.map((m) => m.body),
        1100,
      );
    } finally {
      await relay.stop();
    }
  });

  test('the relay SIGKILLed twice during a load: every event exactly once', async () => {
    const base = await streamCount(env.nats.url);
    let relay = env.spawnRelay('w2j-0');
    await relay.waitForLog('relay running');
    const load = produce(env.dbUrl, 'fraiseql.killed', 0, 500, 10, 5);
    for (let k = 1; k <= 2; k++) {
      while ((await streamCount(env.nats.url)) < base + k * 1500) await sleep(50);
      await relay.kill('SIGKILL');
      await sleep(300); // commits keep landing while no relay runs
      relay = env.spawnRelay(`w2j-${k}`);
      await relay.waitForLog('relay running');
    }
    assert.equal(await load, 5000);
    await waitForCount(env.nats.url, base + 5000, 60_000);
    await sleep(500);
    const msgs = (await readRaw(env.nats.url)).filter((m) => m.subject === 'fraiseql.killed');
    assertExactlyOnce(
      msgs.map((m) => m.body),
      5000,
    );
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
  });
});

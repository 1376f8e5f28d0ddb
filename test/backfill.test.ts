/**
 * `fraiseql-relay backfill` against real servers: a table's existing rows published as READ
 * events while the relay streams concurrent changes of the same rows (the DBLog watermark
 * technique), resumed after a SIGKILL, de-duplicated when a chunk is published again, cancelled
 * within one chunk.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, allowWal2json, runCli, sleep, type RelayProcess, type StoredMessage } from './fixture.js';
import type { Backfill } from '../src/backfill/store.js';

const TOML = `
[project]
name = "backfill"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"

[[observers.rules]]
table = "tb_item"
event = "INSERT"
subject = "fraiseql.item.changed"

[[observers.rules]]
table = "tb_item"
event = "UPDATE"
subject = "fraiseql.item.changed"

[[observers.rules]]
table = "tb_item"
event = "DELETE"
subject = "fraiseql.item.changed"

[relay]
listen = "127.0.0.1:0"
[relay.stream]
subjects = ["fraiseql.>"]
duplicate_window = "10m"
`;

const SCHEMA = `CREATE TABLE tb_item (id int PRIMARY KEY, v int NOT NULL, note text, tags text[], at timestamptz NOT NULL DEFAULT now())`;
const seed = (n: number) =>
  `INSERT INTO tb_item (id, v, note, tags) SELECT g, g % 97, 'row ' || g, ARRAY['t' || (g % 5)] FROM generate_series(1, ${n}) g`;

type Body = { id: string; operation: string; entity: Record<string, unknown> | null; metadata: Record<string, unknown> | null };

/** What a consumer that applies the stream in order ends with, keyed by id. */
function consumerView(msgs: readonly StoredMessage[]): Map<number, Record<string, unknown>> {
  const view = new Map<number, Record<string, unknown>>();
  for (const m of msgs) {
    const b = m.body as Body;
    if (b.operation === 'DELETE') view.delete(Number(b.id));
    else view.set(Number(b.id), b.entity!);
  }
  return view;
}

async function tableView(env: TestEnv): Promise<Map<number, Record<string, unknown>>> {
  const rows = await env.sql<{ id: number; j: Record<string, unknown> }>(`SELECT id, to_jsonb(t) AS j FROM tb_item t`);
  return new Map(rows.map((r) => [r.id, r.j]));
}

async function backfillRow(
  env: TestEnv,
  id: number,
): Promise<{ state: string; rows_published: string; rows_skipped: string; chunks: string }> {
  return (
    await env.sql<{ state: string; rows_published: string; rows_skipped: string; chunks: string }>(
      `SELECT state, rows_published, rows_skipped, chunks FROM fraiseql_relay.backfill WHERE id = $1`,
      [id],
    )
  )[0]!;
}

async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await ok()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Inserts a marker row and waits until its INSERT is the stream's last message: everything before it is in too. */
async function drained(env: TestEnv, markerId: number): Promise<StoredMessage[]> {
  await env.sql(`INSERT INTO tb_item (id, v, note) VALUES ($1, 0, 'marker')`, [markerId]);
  const nc = await env.natsClient();
  try {
    const jsm = await jetstreamManager(nc);
    await waitFor('the marker in the stream', async () => {
      const last = await jsm.streams.getMessage('FRAISEQL', { last_by_subj: 'fraiseql.item.changed' });
      const b = last?.json<Body>();
      return b?.id === String(markerId) && b.operation === 'INSERT';
    });
  } finally {
    await nc.close();
  }
  return env.readStream();
}

test(
  'backfill of 100,000 rows while 5,000 updates and deletes of the same rows commit: the consumer view equals the table',
  { timeout: 300_000 },
  async () => {
    const env = await TestEnv.create({ toml: TOML });
    let relay: Awaited<ReturnType<TestEnv['startRelay']>> | undefined;
    const writer = new pg.Client({ connectionString: env.dbUrl });
    try {
      await env.sql(SCHEMA);
      // the rows exist before the slot does: only a backfill can publish them
      await env.sql(seed(100_000));
      await env.migrate();
      relay = await env.startRelay();
      await writer.connect();
      const cli = runCli(['backfill', 'tb_item', '-c', env.configFile, '--chunk-size', '1000', '--rate', '20000', '--json'], env.env);
      // concurrent writes: half anywhere, half just ahead of the backfill's position, where its windows are
      await waitFor(
        'the backfill to start',
        async () => (await env.sql(`SELECT 1 FROM fraiseql_relay.backfill WHERE state = 'running'`)).length > 0,
      );
      let updates = 0;
      let deletes = 0;
      for (let i = 0; i < 5000; i++) {
        let id: number;
        if (i % 2 === 0) id = 1 + Math.floor(Math.random() * 100_000);
        else {
          const last = (await writer.query<{ k: string | null }>(`SELECT last_key->>0 AS k FROM fraiseql_relay.backfill WHERE id = 1`))
            .rows[0]?.k;
          id = Math.min(100_000, Number(last ?? 0) + 1 + Math.floor(Math.random() * 1500));
        }
        if (i % 5 === 4) {
          await writer.query(`DELETE FROM tb_item WHERE id = $1`, [id]);
          deletes++;
        } else {
          await writer.query(`UPDATE tb_item SET v = v + 1, note = 'updated ' || $2, at = now() WHERE id = $1`, [id, i]);
          updates++;
        }
      }
      const done = await cli;
      assert.equal(done.code, 0, done.stderr);
      const result = JSON.parse(done.stdout) as { state: string; rows_published: number; rows_skipped: number; rows_total: number };
      assert.equal(result.state, 'done');
      assert.equal(result.rows_total, 100_000, 'rows counted when it started');
      const msgs = await drained(env, 1_000_001);
      const reads = msgs.filter((m) => (m.body as Body).operation === 'READ');
      console.log(
        `backfill: ${reads.length} READ events, ${result.rows_skipped} rows skipped (changed inside their chunk's window), ` +
          `${updates} updates and ${deletes} deletes committed concurrently, ${msgs.length} messages in all`,
      );
      assert.equal(reads.length, result.rows_published);
      assert.ok(result.rows_published + result.rows_skipped <= 100_000, 'rows deleted before their chunk are not read');
      // every READ is an envelope like any other, with a deterministic id per row and backfill
      const r0 = reads[0]!;
      assert.equal(r0.headers['Fraiseql-Operation'], 'READ');
      assert.equal(r0.headers['Nats-Msg-Id'], `${r0.headers['Fraiseql-Event-Id']}:fraiseql.item.changed`);
      assert.deepEqual((r0.body as Body).metadata, { backfill_id: 1 });
      assert.equal(new Set(reads.map((m) => m.headers['Fraiseql-Event-Id'])).size, reads.length);
      // the consumer that applies the stream in order has exactly the table, values as to_jsonb gives them
      const view = consumerView(msgs);
      const table = await tableView(env);
      assert.equal(view.size, table.size);
      const canon = (r: Record<string, unknown> | undefined) => (r === undefined ? 'absent' : JSON.stringify(Object.entries(r).sort()));
      const differ = [...table].filter(([id, row]) => canon(view.get(id)) !== canon(row));
      assert.equal(
        differ.length,
        0,
        `${differ.length} rows differ between the consumer view and the table, e.g. ${differ[0]?.[0]}: ` +
          `${canon(view.get(differ[0]?.[0] ?? 0))} vs ${canon(differ[0]?.[1])}`,
      );
      assert.deepEqual(view, table);
    } finally {
      await writer.end().catch(() => {});
      await relay?.stop();
      await env.destroy();
    }
  },
);

test(
  'a backfill chunk published again is de-duplicated by JetStream; a cancelled backfill stops within one chunk',
  { timeout: 180_000 },
  async () => {
    const env = await TestEnv.create({ toml: TOML });
    let relay: Awaited<ReturnType<TestEnv['startRelay']>> | undefined;
    try {
      await env.sql(SCHEMA);
      await env.sql(seed(5000));
      await env.migrate();
      relay = await env.startRelay();
      const states: Backfill[] = [];
      relay.on('backfill', (b, outcome) => {
        if (outcome === null) states.push(b);
      });

      // one backfill, then the same one again from the start (as after a crash before its progress was recorded)
      const first = await runCli(['backfill', 'tb_item', '-c', env.configFile, '--chunk-size', '700'], env.env);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /backfill 1 of public\.tb_item done: 5000 rows published as READ events/);
      await env.waitForStreamCount(5000);
      const before = await env.streamCount();
      const dupBefore = relay.stats.duplicates ?? 0;
      await env.sql(`UPDATE fraiseql_relay.backfill SET state = 'running', last_key = NULL, finished_at = NULL WHERE id = 1`);
      await waitFor('the repeated backfill', async () => (await backfillRow(env, 1)).state === 'done');
      await waitFor('its duplicates acknowledged', () => Promise.resolve((relay!.stats.duplicates ?? 0) - dupBefore >= 5000), 30_000);
      assert.equal(await env.streamCount(), before, 'JetStream stored none of the repeated READ events');
      assert.equal((relay.stats.duplicates ?? 0) - dupBefore, 5000);
      console.log(
        `repeated backfill: 5000 READ events re-sent, ${(relay.stats.duplicates ?? 0) - dupBefore} de-duplicated, stream still ${before}`,
      );

      // cancel: small chunks, slow, and the relay must stop within one chunk of the cancellation
      const req = await runCli(['backfill', 'tb_item', '-c', env.configFile, '--chunk-size', '100', '--rate', '500', '--detach'], env.env);
      assert.equal(req.code, 0, req.stderr);
      const id = Number(req.stdout.trim());
      assert.equal(id, 2);
      await waitFor('some progress', async () => Number((await backfillRow(env, id)).rows_published) >= 300, 60_000);
      // `status` shows it with its progress
      const status = await runCli(['status', '-c', env.configFile, '--json'], env.env);
      assert.equal(status.code, 0, status.stderr);
      const open = (
        JSON.parse(status.stdout) as {
          backfills: { id: number; table: string; state: string; rows_total: number; rows_published: number }[];
        }
      ).backfills;
      assert.equal(open.length, 1);
      assert.deepEqual([open[0]!.id, open[0]!.table, open[0]!.state, open[0]!.rows_total], [id, 'public.tb_item', 'running', 5000]);
      assert.ok(open[0]!.rows_published >= 300);
      const cancel = await runCli(['backfill', '-c', env.configFile, '--cancel', String(id)], env.env);
      assert.equal(cancel.code, 0, cancel.stderr);
      const atCancel = await env.streamCount();
      await waitFor(
        'the relay to stop the backfill',
        () => Promise.resolve(states.some((s) => s.id === id && s.state === 'cancelled')),
        30_000,
      );
      const after = await env.streamCount();
      const row = await backfillRow(env, id);
      assert.equal(row.state, 'cancelled');
      assert.ok(after - atCancel <= 100, `${after - atCancel} READ events after the cancellation (chunk size 100)`);
      assert.ok(Number(row.rows_published) < 5000);
      console.log(`cancelled after ${row.rows_published} rows; ${after - atCancel} published after the cancel returned`);

      // --status lists both
      const st = await runCli(['backfill', '-c', env.configFile, '--status', '--json'], env.env);
      assert.equal(st.code, 0, st.stderr);
      const listed = (JSON.parse(st.stdout) as { backfills: { id: number; state: string }[] }).backfills;
      assert.deepEqual(
        listed.map((b) => [b.id, b.state]),
        [
          [1, 'done'],
          [2, 'cancelled'],
        ],
      );
    } finally {
      await relay?.stop();
      await env.destroy();
    }
  },
);

test('a relay SIGKILLed mid-backfill resumes at its last chunk and finishes with nothing missing', { timeout: 240_000 }, async () => {
  const env = await TestEnv.create({ toml: TOML });
  let proc: RelayProcess | undefined;
  try {
    await env.sql(SCHEMA);
    await env.sql(seed(30_000));
    await env.migrate();
    proc = env.spawnRelay('relay1');
    await proc.waitForLog('replication connected');
    const req = await runCli(['backfill', 'tb_item', '-c', env.configFile, '--chunk-size', '500', '--rate', '6000', '--detach'], env.env);
    assert.equal(req.code, 0, req.stderr);
    await waitFor('a third of it', async () => Number((await backfillRow(env, 1)).rows_published) >= 10_000, 60_000);
    await proc.kill('SIGKILL');
    const atKill = await backfillRow(env, 1);
    assert.equal(atKill.state, 'running');
    proc = env.spawnRelay('relay2');
    await proc.waitForLog('backfill resumed', 60_000);
    await waitFor('the backfill to finish', async () => (await backfillRow(env, 1)).state === 'done', 120_000);
    // the metrics of the relay that finished it count what it did
    const port = /serving \/livez, \/readyz and \/metrics on http:\/\/127\.0\.0\.1:(\d+)/.exec(proc.output())?.[1];
    assert.ok(port, 'the relay says where it serves /metrics');
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const sample = (name: string) => Number(new RegExp(`^${name.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(metrics)?.[1]);
    assert.equal(sample('fraiseql_relay_backfill_rows_total{result="published"}'), 30_000 - Number(atKill.rows_published));
    assert.equal(sample('fraiseql_relay_backfill_remaining_rows'), 0);
    const msgs = await drained(env, 1_000_001);
    const reads = msgs.filter((m) => (m.body as Body).operation === 'READ');
    const ids = new Set(reads.map((m) => (m.body as Body).id));
    const done = await backfillRow(env, 1);
    console.log(
      `SIGKILL at ${atKill.rows_published} rows (${atKill.chunks} chunks durable); after the resume ${done.rows_published} rows recorded, ` +
        `${reads.length} READ events stored, ${ids.size} distinct rows`,
    );
    assert.equal(ids.size, 30_000, 'every row has its READ event');
    assert.equal(reads.length, 30_000, 'and only one: the chunk read again was de-duplicated');
    assert.equal(Number(done.rows_published), 30_000);
  } finally {
    await proc?.kill('SIGKILL').catch(() => {});
    await env.destroy();
  }
});

test(
  'backfill through wal2json, limited by --where; requests the relay could not serve are refused up front',
  { timeout: 120_000 },
  async () => {
    const env = await TestEnv.create({ toml: TOML.replace('[relay]\n', '[relay]\nplugin = "wal2json"\n') });
    let relay: Awaited<ReturnType<TestEnv['startRelay']>> | undefined;
    try {
      await env.sql(SCHEMA);
      await env.sql(seed(2000));
      await allowWal2json(env.dbUrl);
      await env.sql(`CREATE TABLE tb_other (id int PRIMARY KEY)`);
      await env.sql(`CREATE TABLE tb_nokey (id int)`);
      await env.migrate();
      relay = await env.startRelay();
      const refused = async (args: string[], pattern: RegExp) => {
        const r = await runCli(['backfill', '-c', env.configFile, ...args], env.env);
        assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, pattern);
      };
      await refused(['tb_missing'], /table tb_missing does not exist/);
      await refused(['tb_other'], /no \[\[observers\.rules\]\] watches public\.tb_other.*rule tables: public\.tb_item/);
      await refused(
        ['tb_item', '--where', 'no_such_column > 1'],
        /--where 'no_such_column > 1' is not a valid condition on public\.tb_item: column "no_such_column" does not exist/,
      );
      await refused(['tb_item', '--subject', 'fraiseql.other'], /no rule of public\.tb_item publishes to fraiseql\.other/);
      await refused(['tb_item', '--chunk-size', '0'], /--chunk-size must be an integer from 1 to 100000/);
      const none = await runCli(['backfill', '-c', env.configFile, '--status'], env.env);
      assert.equal(none.stdout, 'no backfills\n');

      const r = await runCli(['backfill', 'public.tb_item', '-c', env.configFile, '--where', 'v = 3', '--chunk-size', '7'], env.env);
      assert.equal(r.code, 0, r.stderr);
      const expected = (await env.sql<{ id: number }>(`SELECT id FROM tb_item WHERE v = 3 ORDER BY id`)).map((x) => String(x.id));
      assert.ok(expected.length > 10);
      assert.match(r.stdout, new RegExp(`done: ${expected.length} rows published as READ events`));
      const msgs = await drained(env, 1_000_001);
      const reads = msgs.filter((m) => (m.body as Body).operation === 'READ');
      assert.deepEqual(
        reads.map((m) => (m.body as Body).id),
        expected,
        'exactly the rows --where selects, in key order',
      );
      const table = await tableView(env);
      for (const m of reads) assert.deepEqual((m.body as Body).entity, table.get(Number((m.body as Body).id)));
    } finally {
      await relay?.stop();
      await env.destroy();
    }
  },
);

/**
 * Inbound batches: many events in one transaction (one inbox row and one handler call each), a
 * failing event isolated so the others commit, and `order_by` keeping each key's events in stream
 * order, retries included, while different keys run in parallel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, sleep } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';

const toml = (sub: string) => `
[project]
name = "batcher"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.subscribe]]
subject = "fraiseql.batch.in"
handler = "app.fn_apply"
${sub}
[relay]
listen = "127.0.0.1:0"
`;

const HANDLERS = `
CREATE SCHEMA app;
CREATE TABLE app.applied (id bigserial PRIMARY KEY, n int NOT NULL UNIQUE, k text, seq int, tx bigint NOT NULL DEFAULT txid_current());
CREATE TABLE app.poison (n int PRIMARY KEY);
-- failures to go per event: a sequence each, since nextval() survives the failed call's rollback
CREATE TABLE app.flaky (n int PRIMARY KEY, fails int NOT NULL);
CREATE FUNCTION app.fn_apply(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM app.poison WHERE n = (p->>'n')::int) THEN
    RAISE EXCEPTION 'cannot apply %', p->>'n';
  END IF;
  -- fails the first times it sees this event (a handler that fails now and then, then succeeds)
  IF EXISTS (SELECT 1 FROM app.flaky f WHERE f.n = (p->>'n')::int AND nextval('app.flaky_' || f.n) <= f.fails) THEN
    RAISE EXCEPTION 'flaky %', p->>'n';
  END IF;
  INSERT INTO app.applied (n, k, seq) VALUES ((p->>'n')::int, p->>'k', (p->>'seq')::int);
END $$;
`;

async function setup(
  t: { after: (fn: () => Promise<void>) => void },
  sub: string,
): Promise<{ env: TestEnv; relay: Relay; publish: (bodies: object[]) => Promise<void> }> {
  const env = await TestEnv.create({ toml: toml(sub) });
  let relay: Relay | null = null;
  const nc = await env.natsClient();
  t.after(async () => {
    await relay?.stop();
    await nc.close();
    await env.destroy();
  });
  await env.migrate();
  await env.sql(HANDLERS);
  await (await jetstreamManager(nc)).streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'] });
  const js = jetstream(nc);
  const publish = async (bodies: object[]) => {
    await Promise.all(
      bodies.map((b) => {
        const h = natsHeaders();
        h.set('Fraiseql-Event-Id', `evt-${(b as { n: number }).n}`);
        return js.publish('fraiseql.batch.in', JSON.stringify(b), { headers: h });
      }),
    );
  };
  return {
    env,
    get relay() {
      return relay!;
    },
    set relay(r: Relay) {
      relay = r;
    },
    publish,
  };
}

async function waitCount(env: TestEnv, sql: string, n: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let c = 0;
  while (Date.now() < deadline && (c = Number((await env.sql<{ c: string }>(sql))[0]!.c)) < n) await sleep(50);
  return c;
}

test(
  'a batch with a failing event in the middle commits the others; the failing one is dead-lettered after max_deliver',
  { timeout: 90_000 },
  async (t) => {
    const s = await setup(t, 'batch = 10\nmax_wait = "200ms"\nmax_deliver = 3\nbackoff = ["100ms"]');
    await s.env.sql(`INSERT INTO app.poison VALUES (5)`);
    s.relay = await s.env.startRelay();
    await s.publish(Array.from({ length: 10 }, (_, i) => ({ n: i + 1 })));
    assert.equal(await waitCount(s.env, `SELECT count(*)::text AS c FROM app.applied`, 9, 20_000), 9, 'the nine others were applied');
    const txs = await s.env.sql<{ c: string }>(`SELECT count(DISTINCT tx)::text AS c FROM app.applied`);
    assert.ok(Number(txs[0]!.c) < 9, `applied in batches (${txs[0]!.c} transactions for 9 events)`);
    assert.equal(await waitCount(s.env, `SELECT count(*)::text AS c FROM fraiseql_relay.dead_letter`, 1, 20_000), 1);
    const [dl] = await s.env.sql<{ event_id: string; error: string; attempts: number }>(
      `SELECT event_id, error, attempts FROM fraiseql_relay.dead_letter`,
    );
    assert.equal(dl!.event_id, 'evt-5');
    assert.match(dl!.error, /cannot apply 5/);
    const inbox = await s.env.sql<{ event_id: string }>(`SELECT event_id FROM fraiseql_relay.inbox ORDER BY event_id`);
    assert.equal(inbox.length, 9, 'one inbox row per applied event, none for the failed one');
    assert.equal(s.relay.inboundStats.applied, 9);
    assert.equal(s.relay.inboundStats.deadLettered, 1);
  },
);

test(
  'a batch larger than 64 with failing events: the others commit, each key stays in order across the smaller transactions',
  { timeout: 90_000 },
  async (t) => {
    // 200 events stored before the relay starts, so they come in (nearly) one batch: its first
    // statement fails (10 raises), so it is applied again a subtransaction each, in transactions of
    // 64 (SUBXACT_CHUNK), where 151 raises too; keys 0 and 1 (n % 5) must wait behind them in every
    // later transaction too
    const s = await setup(t, 'batch = 200\nmax_wait = "500ms"\nmax_deliver = 5\nbackoff = ["100ms"]\norder_by = "$.k"');
    await s.env.sql(`INSERT INTO app.flaky VALUES (10, 2), (151, 1)`);
    await s.env.sql(`CREATE SEQUENCE app.flaky_10; CREATE SEQUENCE app.flaky_151`);
    await s.publish(Array.from({ length: 200 }, (_, i) => ({ n: i + 1, k: String((i + 1) % 5) })));
    s.relay = await s.env.startRelay();
    assert.equal(await waitCount(s.env, `SELECT count(*)::text AS c FROM app.applied`, 200, 30_000), 200, 'every event applied');
    const rows = await s.env.sql<{ n: number; k: string }>(`SELECT n, k FROM app.applied ORDER BY id`);
    for (const k of ['0', '1', '2', '3', '4']) {
      const ns = rows.filter((r) => r.k === k).map((r) => r.n);
      assert.deepEqual(
        ns,
        [...ns].sort((a, b) => a - b),
        `key ${k} applied in stream order`,
      );
      assert.equal(ns.length, 40);
    }
    // (how often depends on how the batches formed: a failed first statement counts no failure)
    assert.ok(s.relay.inboundStats.failed >= 2, `events 10 and 151 failed and were retried (${s.relay.inboundStats.failed} failures)`);
    assert.equal(s.relay.inboundStats.applied, 200);
    const inbox = await s.env.sql<{ c: string }>(`SELECT count(*)::text AS c FROM fraiseql_relay.inbox`);
    assert.equal(inbox[0]!.c, '200');
  },
);

test('order_by: each key applies in stream order, retries included, while keys run in parallel', { timeout: 120_000 }, async (t) => {
  const s = await setup(t, 'batch = 16\nconcurrency = 4\norder_by = "$.k"\nmax_deliver = 10\nbackoff = ["50ms"]');
  // 2,000 events over 100 keys; about one in fifty fails once or twice before it succeeds
  const events = Array.from({ length: 2000 }, (_, i) => ({ n: i + 1, k: `key-${i % 100}`, seq: Math.floor(i / 100) + 1 }));
  await s.env.sql(`INSERT INTO app.flaky SELECT g, 1 + (g % 2) FROM generate_series(1, 2000) g WHERE g % 50 = 7`);
  await s.env.sql(
    `DO $$ DECLARE r record; BEGIN FOR r IN SELECT n FROM app.flaky LOOP EXECUTE format('CREATE SEQUENCE app.flaky_%s', r.n); END LOOP; END $$`,
  );
  s.relay = await s.env.startRelay();
  for (let i = 0; i < events.length; i += 200) await s.publish(events.slice(i, i + 200));
  assert.equal(await waitCount(s.env, `SELECT count(*)::text AS c FROM app.applied`, 2000, 60_000), 2000, 'every event applied');
  const outOfOrder = await s.env.sql<{ k: string }>(
    `SELECT k FROM (SELECT k, seq, lag(seq) OVER (PARTITION BY k ORDER BY id) AS prev FROM app.applied) x WHERE prev IS NOT NULL AND seq <> prev + 1`,
  );
  assert.deepEqual(outOfOrder, [], 'per key, the apply order is the stream order');
  assert.ok(s.relay.inboundStats.failed >= 40, `the flaky handler failed and was retried (${s.relay.inboundStats.failed} failures)`);
  assert.equal(s.relay.inboundStats.deadLettered, 0);
});

test(
  'two relays on one ordered subscription: one consumes, keys stay in order through a SIGKILL takeover; unordered work spreads over both',
  { timeout: 240_000 },
  async (t) => {
    const TWO = `
[project]
name = "pair"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.subscribe]]
subject = "fraiseql.ord.in"
handler = "app.fn_apply"
order_by = "$.k"
concurrency = 4
batch = 16
max_deliver = 20
backoff = ["50ms"]
ack_wait = "5s"
[[observers.subscribe]]
subject = "fraiseql.unord.in"
handler = "app.fn_count"
concurrency = 2
[relay]
listen = "127.0.0.1:0"
`;
    const env = await TestEnv.create({ toml: TWO });
    const nc = await env.natsClient();
    const relays: ReturnType<TestEnv['spawnRelay']>[] = [];
    t.after(async () => {
      for (const r of relays) if (r.child.exitCode === null && r.child.signalCode === null) await r.kill('SIGKILL');
      await nc.close();
      await env.destroy();
    });
    await env.migrate();
    await env.sql(HANDLERS);
    // which relay process applied it: the inbound pool's application_name carries the relay's pid
    await env.sql(`CREATE TABLE app.counted (n int PRIMARY KEY, app text);
    CREATE FUNCTION app.fn_count(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO app.counted VALUES ((p->>'n')::int, current_setting('application_name')) $$`);
    // a handler that fails now and then (about one event in fifty, once or twice), then succeeds
    await env.sql(`INSERT INTO app.flaky SELECT g, 1 + (g % 2) FROM generate_series(1, 10000) g WHERE g % 50 = 7`);
    await env.sql(
      `DO $$ DECLARE r record; BEGIN FOR r IN SELECT n FROM app.flaky LOOP EXECUTE format('CREATE SEQUENCE app.flaky_%s', r.n); END LOOP; END $$`,
    );
    await (await jetstreamManager(nc)).streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'] });
    const js = jetstream(nc);
    const send = async (subject: string, from: number, to: number) => {
      for (let i = from; i < to; i += 500) {
        await Promise.all(
          Array.from({ length: Math.min(500, to - i) }, (_, j) => {
            const n = i + j + 1;
            const h = natsHeaders();
            h.set('Fraiseql-Event-Id', `${subject}-${n}`);
            return js.publish(subject, JSON.stringify({ n, k: `key-${(n - 1) % 100}`, seq: Math.floor((n - 1) / 100) + 1 }), {
              headers: h,
            });
          }),
        );
      }
    };
    const a = env.spawnRelay('a');
    const b = env.spawnRelay('b');
    relays.push(a, b);
    await a.waitForLog('relay running');
    await b.waitForLog('relay running');
    await send('fraiseql.unord.in', 0, 2000);
    await send('fraiseql.ord.in', 0, 5000);
    // kill whichever holds the ordered subscription while it is busy
    await waitCount(env, `SELECT count(*)::text AS c FROM app.applied`, 1500, 60_000);
    const holder = a.output().includes('took over: this relay holds ordered-consumer') ? a : b;
    await holder.kill('SIGKILL');
    await send('fraiseql.ord.in', 5000, 10_000);
    const other = holder === a ? b : a;
    await other.waitForLog('took over: this relay holds ordered-consumer', 30_000);
    assert.equal(
      await waitCount(env, `SELECT count(*)::text AS c FROM app.applied`, 10_000, 120_000),
      10_000,
      'every ordered event applied',
    );
    const outOfOrder = await env.sql<{ k: string; seq: number; prev: number }>(
      `SELECT k, seq, prev FROM (SELECT k, seq, lag(seq) OVER (PARTITION BY k ORDER BY id) AS prev FROM app.applied) x WHERE prev IS NOT NULL AND seq <> prev + 1 LIMIT 5`,
    );
    assert.deepEqual(outOfOrder, [], 'per key, the apply order is the stream order, across the takeover');
    assert.equal(await waitCount(env, `SELECT count(*)::text AS c FROM app.counted`, 2000, 60_000), 2000);
    const relaysSeen = await env.sql<{ app: string }>(`SELECT DISTINCT app FROM app.counted`);
    assert.equal(relaysSeen.length, 2, `unordered events were handled by both relays (${relaysSeen.map((r) => r.app).join(', ')})`);
  },
);

test(
  'SIGKILL between COMMIT and the acks under load: the committed events come again and are not applied twice',
  { timeout: 180_000 },
  async (t) => {
    const env = await TestEnv.create({
      toml: toml('concurrency = 4\nbatch = 100\nack_wait = "2s"').replace('handler = "app.fn_apply"', 'handler = "app.fn_once"'),
    });
    const nc = await env.natsClient();
    const relays: ReturnType<TestEnv['spawnRelay']>[] = [];
    t.after(async () => {
      if (env.nats.pid !== undefined) process.kill(env.nats.pid, 'SIGCONT');
      for (const r of relays) if (r.child.exitCode === null && r.child.signalCode === null) await r.kill('SIGKILL');
      await nc.close();
      await env.destroy();
    });
    await env.migrate();
    // no unique key: a second application of an event would be a second row. A millisecond per
    // event keeps the relay busy for seconds (20,000 events, 4 workers): NATS is stopped while
    // most of them are still to come, with the relay's buffer full, however loaded the machine
    // (a fast handler could apply all of them before the test saw 2,000 and stopped NATS)
    await env.sql(`CREATE SCHEMA app; CREATE TABLE app.once (n int NOT NULL);
      CREATE FUNCTION app.fn_once(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(0.001); INSERT INTO app.once VALUES ((p->>'n')::int) $$`);
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'] });
    const js = jetstream(nc);
    const N = 20_000;
    for (let i = 0; i < N; i += 1000) {
      await Promise.all(
        Array.from({ length: 1000 }, (_, j) => {
          const h = natsHeaders();
          h.set('Fraiseql-Event-Id', `once-${i + j + 1}`);
          return js.publish('fraiseql.batch.in', JSON.stringify({ n: i + j + 1 }), { headers: h });
        }),
      );
    }
    const count = async () => Number((await env.sql<{ c: string }>(`SELECT count(*)::text AS c FROM app.once`))[0]!.c);
    const a = env.spawnRelay('a');
    relays.push(a);
    assert.ok((await waitCount(env, `SELECT count(*)::text AS c FROM app.once`, 2000, 60_000)) >= 2000);
    // NATS stops answering: the relay keeps applying what it holds, and its acks go nowhere
    const pid = env.nats.pid!;
    process.kill(pid, 'SIGSTOP');
    const atStop = await count();
    assert.ok(atStop < N - 1000, `NATS stopped with ${N - atStop} events still to apply`);
    const grown = await waitCount(env, `SELECT count(*)::text AS c FROM app.once`, atStop + 100, 20_000);
    await a.kill('SIGKILL');
    process.kill(pid, 'SIGCONT');
    assert.ok(grown >= atStop + 100, `events committed after NATS stopped (${grown - atStop}): their acks never arrived`);
    const b = env.spawnRelay('b');
    relays.push(b);
    await b.waitForLog('relay running');
    assert.equal(await waitCount(env, `SELECT count(*)::text AS c FROM fraiseql_relay.inbox`, N, 120_000), N);
    // every message settled: nothing is left to come again
    const deadline = Date.now() + 60_000;
    for (;;) {
      const info = await jsm.consumers.info('FRAISEQL', 'batcher-fraiseql_batch_in');
      if (info.num_pending === 0 && info.num_ack_pending === 0) break;
      assert.ok(Date.now() < deadline, `consumer still has ${info.num_pending} pending, ${info.num_ack_pending} unacknowledged`);
      await sleep(200);
    }
    const [r] = await env.sql<{ rows: string; distinct: string }>(
      `SELECT count(*)::text AS rows, count(DISTINCT n)::text AS distinct FROM app.once`,
    );
    assert.deepEqual(r, { rows: String(N), distinct: String(N) }, 'each event applied exactly once');
    const m = /"http":(\d+)/.exec(b.output());
    assert.ok(m, 'the relay logs its HTTP port');
    const metrics = await (await fetch(`http://127.0.0.1:${m[1]}/metrics`)).text();
    const dup = /fraiseql_relay_handler_calls_total\{[^}]*outcome="duplicate"[^}]*\} (\d+)/.exec(metrics);
    assert.ok(dup && Number(dup[1]) > 0, `the events committed before the kill came again and were skipped as duplicates (${dup?.[1]})`);
  },
);

/**
 * Production operations against real servers: readiness, heartbeat on an idle database, HA
 * failover under load, slot invalidation and reconcile, status --json, secrets in logs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { TestEnv, BASE_TOML, RelayProcess, runCli, sleep } from './fixture.js';
import { join } from 'node:path';
import { hostname } from 'node:os';
import type { StatusReport } from '../src/commands/status.js';

const SECRET = 's3cr3t-pw-9876';

async function httpPort(relay: RelayProcess): Promise<number> {
  await relay.waitForLog('relay running');
  const m = /"http":(\d+)/.exec(relay.output());
  assert.ok(m, 'the relay logs its HTTP port');
  return Number(m[1]);
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, body: await r.text() };
}

async function waitStatus(port: number, path: string, status: number, timeoutMs = 20_000): Promise<string> {
  let last = { status: 0, body: '' };
  for (const until = Date.now() + timeoutMs; Date.now() < until; await sleep(100)) {
    last = await get(port, path).catch(() => ({ status: 0, body: '' }));
    if (last.status === status) return last.body;
  }
  throw new Error(`${path} stayed ${last.status} ${last.body}, expected ${status}`);
}

async function produce(url: string, first: number, n: number, perTxn = 10): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    for (let i = first; i < first + n; i += perTxn) {
      await c.query(
        `SELECT fraiseql_relay.emit('fraiseql.order.ha', jsonb_build_object('n', g)) FROM generate_series($1::int, $2::int) g`,
        [i, i + perTxn - 1],
      );
    }
  } finally {
    await c.end();
  }
}

const withHeartbeat = (toml: string, hb = '1s', timeout = '5s') =>
  toml.replace('retention = "24h"', `retention = "24h"\nheartbeat = "${hb}"\nheartbeat_timeout = "${timeout}"`);

test('readiness follows NATS down and back; /metrics shows the relay', async () => {
  const env = await TestEnv.create({ toml: withHeartbeat(BASE_TOML) });
  try {
    await env.migrate();
    const relay = env.spawnRelay();
    const port = await httpPort(relay);
    await waitStatus(port, '/readyz', 200);
    assert.equal((await get(port, '/livez')).status, 200);
    await env.nats.stop();
    const body = await waitStatus(port, '/readyz', 503);
    assert.match(body, /"nats"/);
    assert.equal((await get(port, '/livez')).status, 200, 'still live while NATS is down');
    await env.nats.start();
    await waitStatus(port, '/readyz', 200, 30_000);
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', '{"a":1}')`);
    await env.waitForStreamCount(1);
    const metrics = (await get(port, '/metrics')).body;
    assert.match(metrics, /fraiseql_relay_active 1/);
    assert.match(metrics, /fraiseql_relay_events_published_total\{subject="fraiseql.order.created"\} 1/);
    assert.match(metrics, /fraiseql_relay_reconnects_total\{target="nats"\} [1-9]/);
    assert.match(metrics, /fraiseql_relay_slot_wal_status\{status="reserved"\} 1/);
    assert.match(metrics, /fraiseql_relay_heartbeat_lag_seconds \d/);
    assert.match(metrics, /fraiseql_relay_publish_latency_seconds_count [1-9]/);
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
  } finally {
    await env.destroy();
  }
});

test('the heartbeat keeps the slot moving on an idle database while another database writes heavily', async () => {
  const env = await TestEnv.create({ toml: withHeartbeat(BASE_TOML) });
  try {
    await env.migrate();
    const busyUrl = await env.pg.createDatabase('busy');
    const relay = await env.startRelay();
    try {
      const c = new pg.Client({ connectionString: busyUrl });
      await c.connect();
      await c.query(`CREATE TABLE noise (id serial, pad text)`);
      const until = Date.now() + 6000;
      while (Date.now() < until) await c.query(`INSERT INTO noise (pad) SELECT repeat('x', 1000) FROM generate_series(1, 2000)`);
      const [{ written }] = (await c.query<{ written: string }>(`SELECT pg_current_wal_lsn()::text AS written`)).rows as [
        { written: string },
      ];
      await c.end();
      let lag = Infinity;
      let retained = Infinity;
      for (const deadline = Date.now() + 15_000; Date.now() < deadline && lag > 1024 * 1024; await sleep(200)) {
        const [r] = await env.sql<{ lag: string; retained: string; past: boolean }>(
          `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::text AS retained,
                  confirmed_flush_lsn >= $1::pg_lsn AS past
             FROM pg_replication_slots WHERE slot_name = '${env.config().relay.slot}'`,
          [written],
        );
        lag = Number(r!.lag);
        retained = Number(r!.retained);
      }
      assert.ok(lag < 1024 * 1024, `slot lag ${lag} bytes after heavy writes elsewhere`);
      assert.ok(Number.isFinite(retained));
      assert.ok(relay.outbound!.heartbeatBack !== null, 'heartbeats came back');
    } finally {
      await relay.stop();
    }
  } finally {
    await env.destroy();
  }
});

test('HA: SIGKILL the active relay under load; the standby takes over within 10 s; the stream is complete without duplicates', async () => {
  const env = await TestEnv.create({ toml: withHeartbeat(BASE_TOML) });
  try {
    await env.migrate();
    const a = env.spawnRelay('a');
    const pa = await httpPort(a);
    await waitStatus(pa, '/readyz', 200);
    const b = env.spawnRelay('b');
    const pb = await httpPort(b);
    // a healthy standby is Ready (so rollouts and disruption budgets work); leadership is a metric
    await waitStatus(pb, '/readyz', 200);
    assert.equal((await get(pb, '/livez')).status, 200, 'a standby is live');
    assert.match((await get(pa, '/metrics')).body, /^fraiseql_relay_leader 1$/m, 'a is the leader');
    assert.match((await get(pb, '/metrics')).body, /^fraiseql_relay_leader 0$/m, 'b is a standby');
    // status names both relay processes by host/pid: a leads, b stands by
    const st = await runCli(['status', '--json', '-c', env.configFile], env.env);
    assert.equal(st.code, 0, st.stderr);
    const report = JSON.parse(st.stdout) as StatusReport;
    assert.equal(report.role, 'active');
    assert.deepEqual([report.leader?.host, report.leader?.pid], [hostname(), a.child.pid]);
    assert.deepEqual(
      report.standbys.map((s) => [s.host, s.pid]),
      [[hostname(), b.child.pid]],
    );
    const load = produce(env.dbUrl, 0, 10_000);
    while ((await env.streamCount()) < 3000) await sleep(20);
    const killedAt = Date.now();
    await a.kill('SIGKILL');
    await b.waitForLog('took over', 15_000);
    const takeover = Date.now() - killedAt;
    assert.ok(takeover < 10_000, `standby took over after ${takeover} ms`);
    await waitStatus(pb, '/readyz', 200, 20_000);
    assert.match((await get(pb, '/metrics')).body, /^fraiseql_relay_leader 1$/m, 'b leads after the takeover');
    await load;
    await env.waitForStreamCount(10_000, 60_000);
    await sleep(500);
    const msgs = (await env.readStream()).filter((m) => m.subject === 'fraiseql.order.ha');
    assert.equal(msgs.length, 10_000, 'no event lost, none duplicated');
    const ns = new Set(msgs.map((m) => (m.body['entity'] as { n: number }).n));
    assert.equal(ns.size, 10_000);
    b.child.kill('SIGTERM');
    assert.equal(await b.exited, 0);
  } finally {
    await env.destroy();
  }
});

test('slot invalidated → the relay refuses with the way out → reconcile → the stream is complete', async () => {
  const env = await TestEnv.create({
    pg: { settings: { max_slot_wal_keep_size: '1MB', wal_keep_size: '0', max_wal_size: '32MB', min_wal_size: '32MB' } },
  });
  try {
    await env.migrate();
    let relay = env.spawnRelay('before');
    await relay.waitForLog('relay running');
    await produce(env.dbUrl, 0, 500);
    await env.waitForStreamCount(500);
    // the relay records its last confirmed event
    for (const until = Date.now() + 10_000; Date.now() < until; await sleep(100)) {
      const r = await env.sql(`SELECT 1 FROM fraiseql_relay.relay_state WHERE last_event_id IS NOT NULL`);
      if (r.length > 0) break;
    }
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
    // while no relay runs: events, then enough WAL and checkpoints to invalidate the slot
    await produce(env.dbUrl, 500, 300);
    for (let i = 0; i < 6; i++) {
      await env.sql(
        `CREATE TABLE IF NOT EXISTS filler (pad text); INSERT INTO filler SELECT repeat(md5(g::text), 64) FROM generate_series(1, 4000) g`,
      );
      await env.sql(`SELECT pg_switch_wal()`);
      await env.sql(`CHECKPOINT`);
    }
    const [{ wal_status }] = (await env.sql<{ wal_status: string }>(
      `SELECT wal_status FROM pg_replication_slots WHERE slot_name = '${env.config().relay.slot}'`,
    )) as [{ wal_status: string }];
    assert.equal(wal_status, 'lost');

    relay = env.spawnRelay('refused');
    assert.equal(await relay.exited, 1, 'the relay refuses to run on a gap');
    assert.match(relay.output(), /wal_status = lost/);
    assert.match(relay.output(), /fraiseql-relay reconcile/);

    const r = await runCli(['reconcile', '--yes', '-c', env.configFile], env.env);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /recreated/);
    await produce(env.dbUrl, 800, 200); // after the new slot: streamed normally
    relay = env.spawnRelay('after');
    await relay.waitForLog('relay running');
    await env.waitForStreamCount(1000, 60_000);
    await sleep(500);
    const ns = (await env.readStream()).map((m) => (m.body['entity'] as { n: number }).n);
    assert.equal(ns.length, 1000, 'every event exactly once');
    assert.equal(new Set(ns).size, 1000);
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
  } finally {
    await env.destroy();
  }
});

test('status --json describes the relay; no secret reaches a log line', async () => {
  const env = await TestEnv.create({
    toml: withHeartbeat(BASE_TOML).replace(
      '[relay]\n',
      '[[observers.subscribe]]\nsubject = "fraiseql.order.created"\nhandler = "fn_noop"\n\n[relay]\n',
    ),
  });
  let relay: RelayProcess | undefined;
  try {
    await env.migrate();
    await env.sql(`CREATE FUNCTION fn_noop(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$`);
    const dbWithSecret = env.dbUrl.replace('postgres@', `postgres:${SECRET}@`);
    const natsWithSecret = env.nats.url.replace('nats://', `nats://relay:${SECRET}@`);
    const secretEnv = { ...env.env, DATABASE_URL: dbWithSecret, NATS_URL: natsWithSecret, LOG_LEVEL: 'debug' };
    relay = new RelayProcess(join(env.dir, 'secret.log'), ['run', '-c', env.configFile], secretEnv);
    const port = await httpPort(relay);
    await waitStatus(port, '/readyz', 200);
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', '{"id":"x1"}')`);
    await env.waitForStreamCount(1);
    await sleep(2500); // relay_state is written every 2 s
    const s = await runCli(['status', '--json', '-c', env.configFile], secretEnv);
    assert.equal(s.code, 0, s.stderr);
    const st = JSON.parse(s.stdout) as StatusReport;
    assert.equal(st.role, 'active');
    assert.equal(typeof st.slot?.lag_bytes, 'number');
    assert.equal(st.slot?.wal_status, 'reserved');
    // the relay's own process, not a PostgreSQL backend: the child spawned above
    assert.equal(st.leader?.pid, relay.child.pid);
    assert.equal(st.leader?.host, hostname());
    assert.deepEqual(st.standbys, []);
    assert.equal(typeof st.lag?.seconds, 'number');
    assert.ok(st.lag!.seconds! < 30, `lag ${st.lag?.seconds} s on a healthy relay`);
    assert.match(st.last_event?.id ?? '', /^[0-9a-f-]{36}$/);
    assert.equal(st.last_event?.subject, 'fraiseql.order.created');
    assert.equal(typeof st.heartbeat?.age_seconds, 'number');
    assert.equal(st.consumers[0]?.consumer, 'test-service-fraiseql_order_created');
    assert.equal(typeof st.consumers[0]?.pending, 'number');
    assert.deepEqual(st.dead_letters, { outbound: 0, inbound: 0, webhook: 0 });
    const table = await runCli(['status', '-c', env.configFile], secretEnv);
    assert.match(table.stdout, new RegExp(`relay\\s+active: ${hostname()}/${relay.child.pid}`));
    // a failing command with the secret in the URL: the error does not show it
    const bad = await runCli(['check', '-c', env.configFile], { ...secretEnv, DATABASE_URL: dbWithSecret.replace(/:\d+\//, ':1/') });
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
    for (const out of [relay.output(), s.stdout, s.stderr, table.stdout, table.stderr, bad.stdout, bad.stderr]) {
      assert.ok(!out.includes(SECRET), 'no secret in any output');
    }
    assert.ok(relay.output().includes('"level":20'), 'debug lines were written and checked');
  } finally {
    relay?.child.kill('SIGKILL');
    await env.destroy();
  }
});

/**
 * Diagnostics name the real cause: where (host, database, server) and what to do.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestEnv, runCli, sleep } from './fixture.js';
import { startDaemon } from '../src/daemon.js';
import { createLogger } from '../src/util/log.js';
import { natsConnectError, postgresConnectError } from '../src/util/errors.js';

test('connection errors say where and what to do, without the password', () => {
  const enotfound = Object.assign(new Error('getaddrinfo ENOTFOUND base'), { code: 'ENOTFOUND' });
  const e1 = postgresConnectError(enotfound, 'postgres://relay:s3cret@base:5432/orders');
  assert.match(
    e1.message,
    /^PostgreSQL at base:5432\/orders: getaddrinfo ENOTFOUND base \(the host name does not resolve: check the host in \[database\] url/,
  );
  assert.equal((e1 as Error & { code?: string }).code, 'ENOTFOUND', 'the code stays on the error');
  assert.ok(!e1.message.includes('s3cret'));
  const auth = Object.assign(new Error('password authentication failed for user "relay"'), { code: '28P01' });
  assert.match(postgresConnectError(auth, 'postgres://relay@db/x').message, /refused the credentials: check the user and password/);
  const nats = natsConnectError(Object.assign(new Error('Authorization Violation'), { name: 'NatsError' }), ['nats://user:pw@nats-1:4222']);
  assert.match(
    nats.message,
    /^NATS at nats:\/\/user:\*\*\*@nats-1:4222\/?: Authorization Violation \(the server refused this relay's credentials: check \[relay\.nats\]/,
  );
});

test('check with an unknown PostgreSQL host names the host and the key to fix', async (t) => {
  const env = await TestEnv.create();
  t.after(() => env.destroy());
  const r = await runCli(['check', '-c', env.configFile], { ...env.env, DATABASE_URL: 'postgres://relay:s3cret@base.invalid:5432/app' });
  assert.equal(r.code, 1);
  assert.match(
    r.stdout,
    /PostgreSQL at base\.invalid:5432\/app: .*ENOTFOUND.*the host name does not resolve: check the host in \[database\] url/,
  );
  assert.ok(!(r.stdout + r.stderr).includes('s3cret'));
});

test(
  'after a password rotation /readyz says PostgreSQL refused the credentials, not that another relay holds the lock',
  { timeout: 90_000 },
  async (t) => {
    const env = await TestEnv.create();
    let daemon: Awaited<ReturnType<typeof startDaemon>> | null = null;
    t.after(async () => {
      await daemon?.stop();
      await env.destroy();
    });
    await env.migrate();
    // the relay logs in with a password (scram) as its own role
    await env.sql(`CREATE ROLE relay_pw LOGIN SUPERUSER REPLICATION PASSWORD 'pw-one-9x'`);
    const hba = join(env.pg.dataDir, 'pg_hba.conf');
    await writeFile(hba, `host all relay_pw 127.0.0.1/32 scram-sha-256\n` + (await readFile(hba, 'utf8')));
    await env.sql(`SELECT pg_reload_conf()`);
    const url = new URL(env.dbUrl);
    url.username = 'relay_pw';
    url.password = 'pw-one-9x';
    const config = env.config();
    config.database.url = url.toString();
    daemon = await startDaemon(config, createLogger('silent'), { leaderPollMs: 200 });
    const ready = async () => {
      const r = await fetch(`http://127.0.0.1:${daemon.port}/readyz`);
      return { status: r.status, body: (await r.json()) as { reasons?: Record<string, string> } };
    };
    for (let i = 0; i < 100 && (await ready()).status !== 200; i++) await sleep(100);
    assert.equal((await ready()).status, 200, 'ready before the rotation');

    await env.sql(`ALTER ROLE relay_pw PASSWORD 'pw-two-9x'`);
    await env.sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'relay_pw'`);
    let last = await ready();
    for (let i = 0; i < 150 && !/refused the credentials/.test(last.body.reasons?.['postgres'] ?? ''); i++) {
      await sleep(100);
      last = await ready();
    }
    assert.equal(last.status, 503);
    assert.match(
      last.body.reasons?.['postgres'] ?? '',
      /PostgreSQL at 127\.0\.0\.1:\d+\/app: password authentication failed .*refused the credentials/,
    );
    assert.doesNotMatch(JSON.stringify(last.body), /another relay holds/);
    assert.ok(!JSON.stringify(last.body).includes('pw-one-9x'), 'no password in the reasons');
  },
);

test(
  'a full stream: /readyz says publishing to JetStream fails, and the reconnects count NATS, not PostgreSQL',
  { timeout: 90_000 },
  async (t) => {
    const toml = `
[project]
name = "full"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.full.x"
[relay]
listen = "127.0.0.1:0"
heartbeat = "1s"
heartbeat_timeout = "3s"
[relay.stream]
name = "FULL"
create = false
`;
    const env = await TestEnv.create({ toml });
    let daemon: Awaited<ReturnType<typeof startDaemon>> | null = null;
    const nc = await env.natsClient();
    t.after(async () => {
      await daemon?.stop();
      await nc.close();
      await env.destroy();
    });
    await env.migrate();
    const { jetstreamManager, DiscardPolicy } = await import('@nats-io/jetstream');
    await (
      await jetstreamManager(nc)
    ).streams.add({ name: 'FULL', subjects: ['fraiseql.full.>'], max_msgs: 3, discard: DiscardPolicy.New });
    daemon = await startDaemon(env.config(), createLogger('silent'), { backoffMinMs: 100, backoffMaxMs: 500, publishTimeoutMs: 1000 });
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.full.x', jsonb_build_object('n', g)) FROM generate_series(1, 6) g`);
    let reason = '';
    for (let i = 0; i < 200 && !/publishing to JetStream fails/.test(reason); i++) {
      await sleep(100);
      const r = await fetch(`http://127.0.0.1:${daemon.port}/readyz`);
      reason = ((await r.json()) as { reasons?: Record<string, string> }).reasons?.['heartbeat'] ?? '';
    }
    assert.match(reason, /publishing to JetStream fails \(publish to fraiseql\.full\.x failed: .*maximum messages/);
    assert.doesNotMatch(reason, /not arriving from PostgreSQL|replication connection is down/);
    const metrics = await (await fetch(`http://127.0.0.1:${daemon.port}/metrics`)).text();
    assert.match(metrics, /^fraiseql_relay_reconnects_total\{target="nats"\} [1-9]/m);
    assert.match(metrics, /^fraiseql_relay_reconnects_total\{target="postgres"\} 0$/m);
  },
);

/**
 * `replay --since` cannot crash on a bad row: rows that can never be published are dead-lettered
 * (as `run` records them) and reported, and the rest is re-published with the same message ids.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, runCli } from './fixture.js';

const TOML = `
[project]
name = "replayer"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
[relay]
listen = "127.0.0.1:0"
[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;

test(
  'replay over a range holding bad rows dead-letters them, re-publishes the rest, and exits 0 every time',
  { timeout: 120_000 },
  async (t) => {
    const env = await TestEnv.create({ toml: TOML });
    t.after(() => env.destroy());
    await env.migrate();
    const nc = await env.natsClient();
    t.after(() => nc.close());
    await (await jetstreamManager(nc)).streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'], duplicate_window: 60_000_000_000 });

    // good rows around rows that can never be published (written directly, as emit() would refuse some)
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('n', g)) FROM generate_series(1, 50) g`);
    await env.sql(
      `INSERT INTO fraiseql_relay.outbox (subject, operation, entity) VALUES ('nowhere.nothing', 'CUSTOM', '{"bad": "no stream"}')`,
    );
    await env.sql(
      `INSERT INTO fraiseql_relay.outbox (subject, operation, entity, headers) VALUES ('fraiseql.order.created', 'CUSTOM', '{"bad": "rollup"}', '{"Nats-Rollup": "all"}')`,
    );
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('n', g)) FROM generate_series(51, 100) g`);

    for (let run = 1; run <= 3; run++) {
      const r = await runCli(['replay', '--since', '1h', '-c', env.configFile], env.env);
      assert.equal(r.code, 0, `run ${run}: ${r.stdout}\n${r.stderr}`);
      assert.doesNotMatch(r.stderr, /unhandled|jetstream is not enabled/i, `run ${run}`);
      assert.match(r.stdout, /replayed 102 outbox rows/, `run ${run}`);
      assert.match(r.stdout, run === 1 ? /100 published, 0 already in the stream/ : /0 published, 100 already in the stream/, `run ${run}`);
      assert.match(r.stdout, /2 dead-lettered/, `run ${run}`);
    }
    assert.equal(await env.streamCount(), 100, 'every good row once in the stream, the rollup never applied');
    const dl = await env.sql<{ subject: string; error: string; attempts: number }>(
      `SELECT subject, error, attempts FROM fraiseql_relay.dead_letter ORDER BY subject`,
    );
    assert.equal(dl.length, 2, 'one dead letter per bad row, however often it was replayed');
    assert.match(dl[0]!.error, /Nats-Rollup/);
    assert.equal(dl[1]!.subject, 'nowhere.nothing');
    assert.match(dl[1]!.error, /no JetStream stream captures/);
  },
);

/**
 * Durations within what the runtime can do. Node.js timers wait at most 2^31-1 ms: a longer delay
 * fires after 1 ms (`heartbeat = "30d"` wrote thousands of heartbeat transactions a second), so
 * every duration that becomes a timer is refused above that, and those NATS takes in nanoseconds
 * above 2^63-1 ns. A relay run with the largest accepted values prints no TimeoutOverflowWarning
 * and writes one heartbeat, not a busy loop of them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { TestEnv, RelayProcess, runCli, sleep, waitForRows } from './fixture.js';
import { getFreePort } from '../src/local/ports.js';

const TIMER_MAX = '24d20h31m23s647ms'; // 2^31-1 ms
const NATS_MAX = '106751d23h47m16s854ms'; // 2^63-1 ns, in whole ms
const SIZE_MAX = 2 ** 53 - 1;

const toml = (relay: string, hookPort: number) => `[project]
name = "limits"

[database]
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[[observers.publish.actions]]
type = "webhook"
url = "http://127.0.0.1:${hookPort}/hook"
timeout = "${TIMER_MAX}"
max_attempts = 1

[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_seen"
ack_wait = "${TIMER_MAX}"
backoff = ["${NATS_MAX}"]
max_deliver = 2

[relay]
listen = "127.0.0.1:0"
${relay}

[relay.stream]
subjects = ["fraiseql.>"]
duplicate_window = "${NATS_MAX}"
`;

/** The 1-based line of the first line of `text` that starts with `start`. */
const lineOf = (text: string, start: string) => text.split('\n').findIndex((l) => l.startsWith(start)) + 1;

const LARGEST = `retention = "36500d"
shutdown_timeout = "${TIMER_MAX}"
heartbeat = "${TIMER_MAX}"
heartbeat_timeout = "1000000d"
max_lag = ${SIZE_MAX}
max_in_flight_bytes = ${SIZE_MAX}`;

test('a duration a timer cannot honour is a configuration error naming the key, its line and the limit', async () => {
  const text = toml('heartbeat = "30d"\nheartbeat_timeout = "31d"', 1);
  const env = await TestEnv.create({ toml: text });
  try {
    const r = await runCli(['check', '-c', env.configFile], env.env);
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`fraiseql\\.toml:${lineOf(text, 'heartbeat =')}: relay\\.heartbeat: "30d" is longer`));
    assert.match(
      r.stderr,
      /relay\.heartbeat: "30d" is longer than 24d20h31m23s647ms, the longest wait a Node\.js timer can honour \(2\^31-1 ms; Node\.js would fire a longer one after 1 ms\); use at most "24d20h31m23s647ms"/,
    );
    assert.doesNotMatch(r.stdout, /^ok/m, 'nothing was probed');
    for (const [line, key] of [
      [`shutdown_timeout = "25d"`, 'shutdown_timeout'],
      [`retention = "36501d"`, 'retention'],
    ] as const) {
      const t = toml(line, 1);
      await env.writeConfig(t);
      const e = await runCli(['migrate', '-c', env.configFile], env.env);
      assert.equal(e.code, 2, `${key}: ${e.stderr}`);
      assert.match(e.stderr, new RegExp(`fraiseql\\.toml:${lineOf(t, key)}: relay\\.${key}: ".*" is longer than`), e.stderr);
    }
    const ack = toml('', 1).replace(`ack_wait = "${TIMER_MAX}"`, 'ack_wait = "25d"');
    await env.writeConfig(ack);
    const a = await runCli(['check', '-c', env.configFile], env.env);
    assert.equal(a.code, 2);
    assert.match(
      a.stderr,
      new RegExp(
        `fraiseql\\.toml:${lineOf(ack, 'ack_wait')}: observers\\.subscribe\\[0\\]\\.ack_wait: "25d" is longer than 24d20h31m23s647ms`,
      ),
    );
    await env.writeConfig(toml('', 1).replace(`duplicate_window = "${NATS_MAX}"`, 'duplicate_window = "106752d"'));
    const d = await runCli(['check', '-c', env.configFile], env.env);
    assert.equal(d.code, 2);
    assert.match(
      d.stderr,
      /relay\.stream\.duplicate_window: "106752d" is longer than 106751d23h47m16s854ms, the longest duration NATS can hold/,
    );
  } finally {
    await env.destroy();
  }
});

test('the largest accepted values: the relay runs without TimeoutOverflowWarning, one heartbeat, and stops at once', async () => {
  const hookPort = await getFreePort(); // nothing listens: the webhook is refused at once
  const env = await TestEnv.create({ toml: toml(LARGEST, hookPort) });
  try {
    await env.migrate();
    await env.sql(`CREATE TABLE seen (id text);
      CREATE FUNCTION fn_seen(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO seen VALUES (p->>'id') $$;
      CREATE TYPE mutation_response AS (status text, message text, entity_id text, entity_type text,
        entity jsonb, updated_fields text[], cascade jsonb, metadata jsonb)`);
    // a second slot that sees every heartbeat the relay writes (test_decoding prints logical messages)
    await env.sql(`SELECT pg_create_logical_replication_slot('heartbeat_count', 'test_decoding')`);
    const check = await runCli(['check', '-c', env.configFile], env.env);
    assert.doesNotMatch(check.stdout, /^FAIL/m, check.stdout);

    const relay = new RelayProcess(join(env.dir, 'largest.log'), ['run', '-c', env.configFile], { ...env.env, NODE_OPTIONS: '' });
    try {
      await relay.waitForLog('relay running');
      // an event: published, handled by the subscription (ack_wait timer), queued for the webhook (timeout timer)
      await env.sql(
        `SELECT fraiseql_relay.emit_mutation('create_order', ROW('created', 'ok', 'o-1', 'Order', '{"id": "o-1"}', NULL, NULL, NULL)::mutation_response)`,
      );
      const seen = await waitForRows(() => env.sql(`SELECT id FROM seen`), 20_000);
      assert.deepEqual(seen, [{ id: 'o-1' }]);
      const dead = await waitForRows(() => env.sql(`SELECT error FROM fraiseql_relay.dead_letter WHERE direction = 'webhook'`), 20_000);
      assert.equal(dead.length, 1, 'the webhook delivery was tried (and refused: nothing listens)');
      await sleep(3000);
      const [{ n }] = (await env.sql<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_logical_slot_peek_changes('heartbeat_count', NULL, NULL) WHERE data LIKE '%fraiseql-relay/heartbeat%'`,
      )) as [{ n: number }];
      assert.ok(n >= 1 && n <= 2, `heartbeats written: ${n} (one when the relay took over; a clamped interval writes thousands)`);

      const t0 = Date.now();
      relay.child.kill('SIGTERM');
      assert.equal(await relay.exited, 0, relay.output().slice(-3000));
      assert.ok(Date.now() - t0 < 10_000, `stopped in ${Date.now() - t0} ms`);
      assert.doesNotMatch(relay.output(), /TimeoutOverflowWarning|does not fit into a 32-bit signed integer/);
      assert.doesNotMatch(relay.output(), /"level":(50|60)/, 'no error was logged');
    } finally {
      if (relay.child.exitCode === null && relay.child.signalCode === null) await relay.kill();
      await env.sql(`SELECT pg_drop_replication_slot('heartbeat_count')`);
    }
  } finally {
    await env.destroy();
  }
});

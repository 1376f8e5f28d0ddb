/**
 * Consumers follow their stream: when the JetStream stream disappears (deleted by an operator, or
 * NATS restarted with an empty store), the durable consumers are created again once a stream
 * captures their subjects, `/readyz` is not ready while one is missing, and events flow again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, until } from './fixture.js';
import { startDaemon, type Daemon } from '../src/daemon.js';
import { createLogger } from '../src/util/log.js';

const HANDLERS = `
CREATE SCHEMA app;
CREATE TABLE app.applied (n text PRIMARY KEY);
CREATE FUNCTION app.fn_apply(p_event jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO app.applied VALUES (coalesce(p_event->>'n', p_event->'entity'->>'n')) ON CONFLICT DO NOTHING $$;
`;

function toml(publish: boolean): string {
  return `
[project]
name = "svc"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
${publish ? '[[observers.publish]]\nmutation = "never_called"\nsubject = "fraiseql.follow.unused"\n' : ''}
[[observers.subscribe]]
subject = "fraiseql.follow.in"
handler = "app.fn_apply"
[relay]
listen = "127.0.0.1:0"
heartbeat = "1s"
[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
create = ${publish ? 'true' : 'false'}
`;
}

async function readyz(d: Daemon): Promise<{ status: number; body: { reasons?: Record<string, string> } }> {
  const r = await fetch(`http://127.0.0.1:${d.port}/readyz`);
  return { status: r.status, body: (await r.json()) as { reasons?: Record<string, string> } };
}

const applied = async (env: TestEnv, n: string) => (await env.sql(`SELECT 1 FROM app.applied WHERE n = $1`, [n])).length === 1;

test(
  'a deleted stream: /readyz names the missing consumer, and once the stream exists again the consumer is recreated and events are applied',
  { timeout: 120_000 },
  async (t) => {
    const env = await TestEnv.create({ toml: toml(false) });
    let daemon: Daemon | null = null;
    const nc = await env.natsClient();
    t.after(async () => {
      await daemon?.stop();
      await nc.close();
      await env.destroy();
    });
    await env.migrate();
    await env.sql(HANDLERS);
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'] });
    daemon = await startDaemon(env.config(), createLogger(process.env['TEST_LOG_LEVEL'] ?? 'silent'));

    await jetstream(nc).publish('fraiseql.follow.in', JSON.stringify({ n: 'one' }));
    await until('the first event is applied', () => applied(env, 'one'), 15_000);

    await jsm.streams.delete('FRAISEQL');
    await until(
      '/readyz reports the missing consumer',
      async () => {
        const r = await readyz(daemon);
        return r.status === 503 && /svc-fraiseql_follow_in/.test(r.body.reasons?.['consumers'] ?? '');
      },
      30_000,
    );
    const metrics = await (await fetch(`http://127.0.0.1:${daemon.port}/metrics`)).text();
    assert.match(metrics, /fraiseql_relay_consumer_missing\{consumer="svc-fraiseql_follow_in"\} 1/);

    // the publishing service (or the operator) creates the stream again
    await jsm.streams.add({ name: 'FRAISEQL', subjects: ['fraiseql.>'] });
    await until('/readyz is ready again', async () => (await readyz(daemon)).status === 200, 30_000);
    await jetstream(nc).publish('fraiseql.follow.in', JSON.stringify({ n: 'two' }));
    // published without an event id header, it is keyed by stream, sequence and time: the new
    // stream's sequence 1 is not the old stream's sequence 1
    await until('an event published after the stream came back is applied', () => applied(env, 'two'), 15_000);
    assert.ok((await jsm.consumers.info('FRAISEQL', 'svc-fraiseql_follow_in')).config.durable_name, 'the durable consumer exists again');
  },
);

test(
  'NATS restarted with an empty store: the relay recreates its stream and its consumer, and events flow end to end',
  { timeout: 120_000 },
  async (t) => {
    const env = await TestEnv.create({ toml: toml(true) });
    let daemon: Daemon | null = null;
    t.after(async () => {
      await daemon?.stop();
      await env.destroy();
    });
    await env.migrate();
    await env.sql(HANDLERS);
    daemon = await startDaemon(env.config(), createLogger(process.env['TEST_LOG_LEVEL'] ?? 'silent'), {
      backoffMinMs: 100,
      backoffMaxMs: 1000,
      publishTimeoutMs: 2000,
    });
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.follow.in', '{"n": "before"}')`);
    await until('an event before the restart is applied', () => applied(env, 'before'), 20_000);

    await env.nats.stop();
    await rm(env.nats.storeDir, { recursive: true, force: true });
    await env.nats.start();

    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.follow.in', '{"n": "after"}')`);
    await until('an event committed after the empty restart is applied', () => applied(env, 'after'), 60_000);
    await until('/readyz is ready', async () => (await readyz(daemon)).status === 200, 30_000);
  },
);

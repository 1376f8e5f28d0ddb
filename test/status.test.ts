/**
 * `status` as an operator reads it during an outage: the lag is the age of the newest commit known
 * to be published (from the heartbeat), so it grows while NATS is down, where pg_stat_replication's
 * flush_lag stayed near 0; the relay is named by its own host and pid.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { TestEnv, BASE_TOML, runCli, sleep } from './fixture.js';
import type { StatusReport } from '../src/commands/status.js';

async function status(env: TestEnv): Promise<StatusReport> {
  const r = await runCli(['status', '--json', '-c', env.configFile], env.env);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusReport;
}

/** Polls status until `ok` holds (or fails with the last report). */
async function statusUntil(env: TestEnv, ok: (s: StatusReport) => boolean, timeoutMs: number): Promise<StatusReport> {
  let last = await status(env);
  for (const until = Date.now() + timeoutMs; !ok(last) && Date.now() < until; await sleep(500)) last = await status(env);
  assert.ok(ok(last), JSON.stringify(last, null, 2));
  return last;
}

test('status during a NATS outage: the lag grows from the heartbeat, then falls back; the relay is named by host/pid', async () => {
  const env = await TestEnv.create({
    toml: BASE_TOML.replace('retention = "24h"', 'retention = "24h"\nheartbeat = "1s"\nheartbeat_timeout = "5s"'),
  });
  try {
    await env.migrate();
    const relay = env.spawnRelay();
    try {
      await relay.waitForLog('relay running');
      const healthy = await statusUntil(env, (s) => s.lag?.seconds !== null && s.lag!.seconds < 5, 20_000);
      assert.equal(healthy.role, 'active');
      assert.deepEqual([healthy.leader?.host, healthy.leader?.pid], [hostname(), relay.child.pid]);
      assert.ok(healthy.lag!.measured_from === 'heartbeat' || healthy.lag!.measured_from === 'slot');

      await env.nats.stop();
      const stoppedAt = Date.now();
      await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', '{"n":1}')`);
      await sleep(6_000);
      const down = await status(env);
      const outage = (Date.now() - stoppedAt) / 1000;
      assert.equal(down.lag?.measured_from, 'heartbeat', JSON.stringify(down.lag));
      assert.ok(
        down.lag.seconds! >= outage - 2.5,
        `after ${outage.toFixed(1)} s of outage the lag says ${down.lag.seconds} s (the heartbeat is every 1 s)`,
      );
      assert.ok(down.slot!.lag_bytes > 0, 'the event waits in the slot');
      const table = await runCli(['status', '-c', env.configFile], env.env);
      assert.match(table.stdout, /^lag\s+\d+\.\d s \(the newest commit known published was written at /m);
      assert.match(table.stdout, new RegExp(`^relay\\s+active: ${hostname()}/${relay.child.pid} `, 'm'));
      assert.doesNotMatch(table.stdout, /flush|backend/i);

      await env.nats.start();
      await env.waitForStreamCount(1, 30_000);
      await statusUntil(env, (s) => s.lag?.seconds !== null && s.lag!.seconds < 5, 30_000);
      relay.child.kill('SIGTERM');
      assert.equal(await relay.exited, 0);
    } finally {
      if (relay.child.exitCode === null && relay.child.signalCode === null) await relay.kill('SIGKILL');
    }
  } finally {
    await env.destroy();
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { TestEnv, sleep } from './fixture.js';

/** Peak resident set size of a process in MiB (VmHWM), from /proc. */
function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

test('a transaction of 200,000 outbox rows streams through in bounded memory', async () => {
  const env = await TestEnv.create();
  try {
    await env.migrate();
    const relay = env.spawnRelay();
    await relay.waitForLog('relay running');
    await env.sql(
      `SELECT fraiseql_relay.emit('fraiseql.order.bulk', jsonb_build_object('n', g, 'pad', repeat('x', 200))) FROM generate_series(1, 200000) g`,
    );
    let peak = 0;
    const deadline = Date.now() + 240_000;
    let count = 0;
    while (Date.now() < deadline) {
      peak = Math.max(peak, peakRssMiB(relay.child.pid!));
      count = await env.streamCount();
      if (count >= 200_000) break;
      await sleep(250);
    }
    peak = Math.max(peak, peakRssMiB(relay.child.pid!));
    assert.equal(count, 200_000, 'every row of the transaction was published');
    assert.ok(peak < 300, `relay peak RSS ${peak.toFixed(0)} MiB must stay under 300 MiB`);
    // the slot is confirmed past the whole transaction once its last PubAck is in
    let lag = Infinity;
    for (const until = Date.now() + 10_000; Date.now() < until && lag >= 1024 * 1024; await sleep(100)) {
      const [r] = await env.sql<{ lag: string }>(
        `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag FROM pg_replication_slots WHERE slot_name = '${env.config().relay.slot}'`,
      );
      lag = Number(r!.lag);
    }
    assert.ok(lag < 1024 * 1024, `slot lag ${lag} bytes after the transaction was published`);
    process.stdout.write(`# 200,000-row transaction: relay peak RSS ${peak.toFixed(0)} MiB\n`);
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
  } finally {
    await env.destroy();
  }
});

/**
 * The slot `migrate` creates is a failover slot where PostgreSQL has them (17 and later), so a
 * standby with `sync_replication_slots = on` keeps a copy that survives its promotion; older
 * servers get the plain slot. Runs on every major of `npm run test:matrix`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestEnv } from './fixture.js';

test('migrate creates the slot with failover = true on PostgreSQL 17+, a plain slot before', async () => {
  const env = await TestEnv.create();
  try {
    await env.migrate();
    const v = Number((await env.sql<{ v: string }>(`SELECT current_setting('server_version_num') AS v`))[0]!.v);
    const slot = env.config().relay.slot;
    if (v >= 170000) {
      const r = await env.sql<{ failover: boolean }>(`SELECT failover FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
      assert.deepEqual(r, [{ failover: true }], `PostgreSQL ${v}: the slot is synchronized to standbys`);
    } else {
      const r = await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
      assert.equal(r[0]!.n, '1', `PostgreSQL ${v}: the slot exists`);
      const col = await env.sql<{ n: string }>(
        `SELECT count(*)::text AS n FROM pg_attribute WHERE attrelid = 'pg_catalog.pg_replication_slots'::regclass AND attname = 'failover'`,
      );
      assert.equal(col[0]!.n, '0', 'no failover slots before 17');
    }
  } finally {
    await env.destroy();
  }
});

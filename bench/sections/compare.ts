/**
 * (f) Other outbox relays doing the same job: pg-transactional-outbox (logical replication, its
 * own outbox table, publication and slots) and a polling relay, each on N single-row events.
 */
import { DatabaseSetup } from 'pg-transactional-outbox';
import { STREAM, type BenchEnv } from '../lib/env.js';
import { errMsg, fmtInt, nowMs } from '../lib/util.js';
import type { Series } from '../lib/series.js';
import { BACKLOG_CONNS, COMPARE_SECS, N, REPS, log } from '../lib/settings.js';
import { attempt, spawnContender, splitN, streamRun } from '../lib/runs.js';

export interface CompareResults {
  pto: Series;
  poll: Series;
}

export async function sectionCompare(env: BenchEnv, res: CompareResults): Promise<void> {
  // pg-transactional-outbox: its own table, publication and slots (one per repetition,
  // created before its backlog of N single-row transactions)
  try {
    log(`(f) pg-transactional-outbox: preparing its outbox and a backlog of ${fmtInt(N)} single-row transactions`);
    const cfg = {
      outboxOrInbox: 'outbox' as const,
      database: 'bench',
      schema: 'pto',
      table: 'outbox',
      listenerRole: 'postgres',
      publication: 'pto_pub',
      replicationSlot: 'pto_unused',
    };
    await env.sql(DatabaseSetup.dropAndCreateTable(cfg));
    await env.sql(DatabaseSetup.setupReplicationCore(cfg));
    await env.sql(`CREATE OR REPLACE PROCEDURE bench.pto_backlog(n int) LANGUAGE plpgsql AS $$
      BEGIN
        FOR i IN 1..n LOOP
          INSERT INTO pto.outbox (id, aggregate_type, aggregate_id, message_type, payload, metadata)
          VALUES (gen_random_uuid(), 'order', i::text, 'order_created', bench.payload(i), '{}');
          COMMIT;
        END LOOP;
      END $$`);
    for (let rep = 1; rep <= REPS; rep++) await env.createSlot(`pto_${rep}`);
    const t = nowMs();
    await Promise.all(splitN(N, BACKLOG_CONNS, 1).map((n) => env.sqlOwn(`CALL bench.pto_backlog($1)`, [n])));
    log(`  backlog committed in ${((nowMs() - t) / 1000).toFixed(1)} s`);
    for (let rep = 1; rep <= REPS; rep++) {
      // the listener marks rows processed (UPDATEs, not published): undo that between repetitions
      await env.sql(
        `UPDATE pto.outbox SET processed_at = NULL, abandoned_at = NULL, started_attempts = 0, finished_attempts = 0 WHERE started_attempts > 0 OR processed_at IS NOT NULL`,
      );
      await attempt(res.pto, `pg-transactional-outbox rep ${rep}`, () =>
        streamRun(
          env,
          res.pto,
          N,
          () =>
            spawnContender('pto', {
              dbUrl: env.dbUrl,
              natsUrl: env.nats.url,
              slot: `pto_${rep}`,
              publication: 'pto_pub',
              schema: 'pto',
              table: 'outbox',
              subject: 'bench.pto',
            }),
          // its shutdown waits for the queued backlog: not part of the measurement
          { slot: `pto_${rep}`, capS: COMPARE_SECS, allowPartial: true, stopGraceMs: 2_000 },
        ),
      );
      await env.dropSlot(`pto_${rep}`).catch(() => {});
    }
  } catch (err) {
    log(`  failed: ${errMsg(err)}`);
    if (res.pto.values.length === 0) res.pto.errors.push(errMsg(err));
  } finally {
    await env.dropSlotsLike('pto_').catch(() => {});
    await env.sql(`DROP SCHEMA IF EXISTS pto CASCADE`).catch(() => {});
    await env.sql(`DROP PUBLICATION IF EXISTS pto_pub`).catch(() => {});
  }

  // polling relay: the same N rows in its own table (transaction shape does not matter to it)
  try {
    await env.sql(`CREATE SCHEMA IF NOT EXISTS poll;
      CREATE TABLE IF NOT EXISTS poll.outbox (id bigserial PRIMARY KEY, subject text NOT NULL, payload jsonb NOT NULL,
                                              created_at timestamptz NOT NULL DEFAULT clock_timestamp())`);
    for (let rep = 1; rep <= REPS; rep++) {
      await env.sql(`TRUNCATE poll.outbox RESTART IDENTITY`);
      await env.sql(
        `INSERT INTO poll.outbox (subject, payload) SELECT 'bench.poll', bench.payload(i) FROM generate_series(1, $1::bigint) i`,
        [N],
      );
      await env.sql(`VACUUM ANALYZE poll.outbox`);
      await attempt(res.poll, `polling relay rep ${rep}`, () =>
        streamRun(
          env,
          res.poll,
          N,
          () =>
            spawnContender('poll', { dbUrl: env.dbUrl, natsUrl: env.nats.url, table: 'poll.outbox', batch: 500, workers: 1, idleMs: 100 }),
          { capS: COMPARE_SECS, allowPartial: true },
        ),
      );
    }
  } catch (err) {
    log(`  failed: ${errMsg(err)}`);
    if (res.poll.values.length === 0) res.poll.errors.push(errMsg(err));
  } finally {
    await env.sql(`DROP SCHEMA IF EXISTS poll CASCADE`).catch(() => {});
    await env.deleteStream(STREAM).catch(() => {});
  }
}

/**
 * Comparison: a polling outbox relay. In a loop: BEGIN; SELECT … ORDER BY id LIMIT <batch>
 * FOR UPDATE SKIP LOCKED; publish the batch pipelined with `js.publish` (Nats-Msg-Id = row id);
 * after every PubAck DELETE the rows; COMMIT. An empty batch sleeps `idleMs`. `workers`
 * such loops on their own connections. Runs until SIGTERM.
 *   BENCH_ARGS='{"dbUrl":…,"natsUrl":…,"table":"poll.outbox","batch":500,"workers":1,"idleMs":100}'
 */
import pg from 'pg';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { sleep } from '../lib/util.js';
import { args, minimalBody, ready, runMain, say, stopRequested } from './common.js';

interface Args {
  dbUrl: string;
  natsUrl: string;
  table: string;
  batch?: number;
  workers?: number;
  idleMs?: number;
}

runMain(async () => {
  const a = args<Args>();
  const batch = a.batch ?? 500;
  const nc = await connect({ servers: a.natsUrl });
  const js = jetstream(nc, { timeout: 10_000 });
  let stopping = false;
  void stopRequested.then(() => (stopping = true));

  const worker = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: a.dbUrl });
    await c.connect();
    try {
      while (!stopping) {
        await c.query('BEGIN');
        const r = await c.query<{ id: string; subject: string; p: string; created: string }>(
          `SELECT id, subject, payload::text AS p, created_at::text AS created FROM ${a.table} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`,
          [batch],
        );
        if (r.rows.length === 0) {
          await c.query('COMMIT');
          await sleep(a.idleMs ?? 100);
          continue;
        }
        await Promise.all(
          r.rows.map((row) => js.publish(row.subject, minimalBody(row.id, row.subject, row.p, row.created), { msgID: row.id })),
        );
        await c.query(`DELETE FROM ${a.table} WHERE id = ANY($1::bigint[])`, [r.rows.map((row) => row.id)]);
        await c.query('COMMIT');
      }
    } finally {
      await c.end().catch(() => {});
    }
  };
  ready();
  await Promise.all(Array.from({ length: a.workers ?? 1 }, () => worker()));
  await nc.drain();
  say('STOPPED');
});

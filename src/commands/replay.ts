import type { Config } from '../config/load.js';
import { parseDuration } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { quoteIdent, serverVersionNum, withClient } from '../util/db.js';
import { errorMessage, UsageError } from '../util/errors.js';
import { Republisher, republishOutbox } from '../outbound/republish.js';
import { readSlot } from '../schema/slot.js';
import { assertOwnership, hasOwnedTable, recordOwnedSql } from '../schema/ownership.js';
import { createSlotSql, hasFailoverSlots } from '../schema/plan.js';

/** `--since`: an ISO time, or a duration meaning "that long ago" (e.g. 2h). */
function parseSince(s: string, now = Date.now()): Date {
  if (/^\d+(ms|s|m|h|d)/.test(s)) return new Date(now - parseDuration(s));
  const t = Date.parse(s);
  if (Number.isNaN(t))
    throw new UsageError(`--since ${JSON.stringify(s)} is neither a time (2026-11-22T10:00:00Z) nor a duration (2h, 30m, 7d)`);
  return new Date(t);
}

/** What a re-sent event that the backend already had is called in the summary. */
function duplicatesAre(config: Config): string {
  switch (config.observers.backend) {
    case 'postgres':
      return 'already applied (their inbox rows)';
    case 'webhook':
      return 'duplicates (webhooks are delivered again: receivers de-duplicate by webhook-id)';
    default:
      return 'already in the stream';
  }
}

/** Re-publishes retained outbox rows since a time (same message ids). */
export async function runReplay(config: Config, log: Logger, opts: { since: string }): Promise<number> {
  const since = parseSince(opts.since);
  const publisher = await Republisher.open(config, log, 'replay');
  try {
    const r = await republishOutbox(config, publisher, since, log);
    log.info({ since: since.toISOString(), ...r }, 'replay done');
    process.stdout.write(
      `replayed ${r.rows} outbox rows since ${since.toISOString()}: ${r.published} published, ${r.duplicates} ${duplicatesAre(config)}, ` +
        `${r.unrouted} unrouted, ${r.deadLettered} dead-lettered (can never be published: see \`fraiseql-relay dlq list\`)\n`,
    );
    return 0;
  } finally {
    await publisher.close();
  }
}

/**
 * After the slot was invalidated (wal_status = lost): recreate it, then re-publish every
 * retained outbox row committed after the last confirmed event, less a safety margin for
 * transactions that committed late.
 */
export async function runReconcile(config: Config, log: Logger, opts: { yes: boolean; force: boolean; margin: string }): Promise<number> {
  const slot = config.relay.slot;
  const marginMs = parseDuration(opts.margin);
  const plan = await withClient(config.database.url, async (c) => {
    const stats = await readSlot(c, slot);
    // only this relay's own slot is dropped and recreated (a slot of another database, or one this
    // relay's schema did not create, is refused before anything changes)
    await assertOwnership(c, config, 'reconcile', { slot: stats, publications: [] });
    const s = quoteIdent(config.relay.schema);
    const state = (
      await c.query<{ last_event_id: string | null; last_published_at: Date | null; created_at: Date | null }>(
        `SELECT r.last_event_id, r.last_published_at, o.created_at
           FROM ${s}.relay_state r LEFT JOIN ${s}.outbox o ON o.id::text = r.last_event_id WHERE r.slot = $1`,
        [slot],
      )
    ).rows[0];
    return { stats, state };
  });
  if (plan.stats.exists && plan.stats.walStatus !== 'lost' && !opts.force) {
    throw new UsageError(
      `replication slot "${slot}" is healthy (wal_status = ${plan.stats.walStatus}); nothing to reconcile. ` +
        `Use --force to recreate it anyway, or \`replay --since\` to re-publish without touching the slot.`,
    );
  }
  if (plan.stats.active)
    throw new UsageError(
      `replication slot "${slot}" is in use (PostgreSQL walsender backend ${plan.stats.activePid}): stop the relay streaming from it first ` +
        `(\`fraiseql-relay status\` names it by host/pid). Nothing was changed.`,
    );
  const anchor = plan.state?.created_at ?? plan.state?.last_published_at ?? null;
  const since = anchor ? new Date(anchor.getTime() - marginMs) : new Date(0);
  if (!opts.yes) {
    throw new UsageError(
      `reconcile would drop and recreate replication slot "${slot}" and re-publish retained outbox rows created since ` +
        `${anchor ? since.toISOString() : 'the beginning (no relay state recorded)'}. Run again with --yes to proceed.`,
    );
  }
  // the broker first: one that cannot be reached must fail the command before the slot changes
  const publisher = await Republisher.open(config, log, 'reconcile');
  try {
    await withClient(config.database.url, async (c) => {
      if (plan.stats.exists) await c.query(`SELECT pg_drop_replication_slot($1)`, [slot]);
      await c.query(createSlotSql(slot, config.relay.plugin, hasFailoverSlots(await serverVersionNum(c))));
      if (await hasOwnedTable(c, config.relay.schema)) await c.query(recordOwnedSql(config.relay.schema, 'slot', slot, 'created'));
    });
    log.info({ slot }, 'recreated replication slot');
    let r;
    try {
      r = await republishOutbox(config, publisher, since, log);
    } catch (err) {
      // the slot is new: a second reconcile would find it healthy; replay finishes the job
      throw new Error(
        `slot "${slot}" was recreated, but re-publishing failed: ${errorMessage(err)}. ` +
          `Once that is fixed, run \`fraiseql-relay replay --since ${since.toISOString()}\` to re-publish the rest.`,
        { cause: err },
      );
    }
    process.stdout.write(
      `reconciled: slot "${slot}" recreated; ${r.rows} retained outbox rows since ${since.toISOString()} re-published ` +
        `(${r.published} published, ${r.duplicates} ${duplicatesAre(config)}, ${r.unrouted} unrouted, ${r.deadLettered} dead-lettered)\n`,
    );
    return 0;
  } finally {
    await publisher.close();
  }
}

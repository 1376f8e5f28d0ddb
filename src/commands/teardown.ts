import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { withClient, quoteIdent } from '../util/db.js';
import { UsageError } from '../util/errors.js';
import { outboxPublication } from '../schema/plan.js';
import { tablesPublication } from '../schema/tables.js';
import { assertOwnership, hasOwnedTable, OWNED_TABLE } from '../schema/ownership.js';

/**
 * Drops the slot and publications: the way to stop holding WAL. Tables and data stay. Only this
 * relay's own: a slot of another database, or a slot or publication this relay's schema did not
 * create (see schema/ownership.ts), is refused before anything is dropped.
 */
export async function runTeardown(config: Config, log: Logger, yes: boolean): Promise<number> {
  const slot = config.relay.slot;
  const pubs = [outboxPublication(config), tablesPublication(config)];
  if (!yes) {
    throw new UsageError(
      `teardown drops replication slot "${slot}" and publications ${pubs.join(', ')}; events committed after that are not relayed ` +
        `until \`migrate\` recreates them. Run again with --yes to proceed.`,
    );
  }
  await withClient(config.database.url, async (c) => {
    const report = await assertOwnership(c, config, 'teardown', { slot: true, publications: ['outbox', 'tables'] });
    const row = report.slot!.stats;
    if (row.exists && row.activePid !== null) {
      throw new UsageError(
        `replication slot "${slot}" is in use (PostgreSQL walsender backend ${row.activePid}): stop the relay streaming from it first ` +
          `(\`fraiseql-relay status\` names it by host/pid). Nothing was dropped.`,
      );
    }
    const dropped = report.publications.filter((p) => p.ownership.state !== 'absent').map((p) => p.name);
    if (row.exists) {
      await c.query(`SELECT pg_drop_replication_slot($1)`, [slot]);
      log.info({ slot }, 'dropped replication slot');
    }
    // dropped on purpose, not lost: a later migrate creates it again (it refuses to recreate a slot relay_state still records)
    await c.query(`DELETE FROM ${quoteIdent(config.relay.schema)}.relay_state WHERE slot = $1`, [slot]).catch((err: unknown) => {
      // no relay schema (never migrated): nothing to forget
      if (['42P01', '3F000'].includes((err as { code?: string }).code ?? '')) return;
      log.warn(
        { err: (err as Error).message, table: `${config.relay.schema}.relay_state` },
        "could not forget the dropped slot's relay state; delete its row as the schema owner before the next migrate",
      );
    });
    for (const p of dropped) await c.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(p)}`);
    log.info({ publications: dropped }, 'dropped publications');
    // what no longer exists is no longer this relay's: a later slot of that name is recorded anew by migrate
    if (await hasOwnedTable(c, config.relay.schema)) {
      await c
        .query(
          `DELETE FROM ${quoteIdent(config.relay.schema)}.${OWNED_TABLE} WHERE (kind = 'slot' AND name = $1) OR (kind = 'publication' AND name = ANY($2::text[]))`,
          [slot, pubs],
        )
        .catch((err: unknown) =>
          log.warn(
            { err: (err as Error).message, table: `${config.relay.schema}.${OWNED_TABLE}` },
            'could not forget the dropped slot and publications; delete their rows as the schema owner',
          ),
        );
    }
  });
  return 0;
}

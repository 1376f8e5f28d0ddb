import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { withClient, quoteIdent } from '../util/db.js';
import { UsageError } from '../util/errors.js';
import { outboxPublication } from '../schema/plan.js';
import { tablesPublication } from '../schema/tables.js';
import { readSlot } from '../schema/slot.js';

/** Drops the slot and publications: the way to stop holding WAL. Tables and data stay. */
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
    const row = await readSlot(c, slot);
    if (row.exists) {
      if (row.activePid !== null) {
        throw new Error(`replication slot "${slot}" is in use by process ${row.activePid}; stop the relay first`);
      }
      await c.query(`SELECT pg_drop_replication_slot($1)`, [slot]);
      log.info({ slot }, 'dropped replication slot');
    }
    for (const p of pubs) {
      await c.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(p)}`);
    }
    log.info({ publications: pubs }, 'dropped publications');
  });
  return 0;
}

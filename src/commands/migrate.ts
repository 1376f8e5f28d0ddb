import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { migrate, migrationPlan } from '../schema/migrate.js';
import { formatPlan } from '../schema/plan.js';

export async function runMigrate(config: Config, log: Logger, opts: { dryRun: boolean }): Promise<number> {
  if (opts.dryRun) {
    process.stdout.write(formatPlan(await migrationPlan(config)));
    return 0;
  }
  const r = await migrate(config, log.child({ component: 'migrate' }));
  log.info(
    {
      applied: r.applied,
      publicationCreated: r.publicationCreated,
      slotCreated: r.slotCreated,
      adopted: r.adopted,
      schema: config.relay.schema,
    },
    r.applied.length === 0 && !r.publicationCreated && !r.slotCreated && r.adopted.length === 0 ? 'already up to date' : 'migrated',
  );
  return 0;
}

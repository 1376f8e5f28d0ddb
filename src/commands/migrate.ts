import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { migrate, migrationPlan, type MigrateResult } from '../schema/migrate.js';
import { formatPlan, migrateLockSql, type MigrationPlan } from '../schema/plan.js';
import { pgWhere } from '../util/errors.js';

/** What `migrate --json` prints (README, "Commands": the fields of `migrate --json`). */
interface MigrateReport {
  schema: string;
  database: string;
  up_to_date: boolean;
  applied_migrations: string[];
  created_publications: string[];
  created_slot: { name: string; plugin: string } | null;
  replica_identity_full: string[];
  adopted: { kind: string; name: string }[];
  table_problems: string[];
}

/** What `migrate --dry-run --json` prints: the plan, step by step, with the statements migrate would run. */
interface PlanReport {
  schema: string;
  database: string;
  dry_run: true;
  /** null when the plan was read from the database; otherwise what it assumed instead, and why */
  assumption: string | null;
  /** the session advisory lock migrate holds while it plans and runs */
  lock_statement: string;
  steps: {
    kind: 'schema' | 'migration' | 'ownership' | 'publication' | 'replica_identity' | 'slot';
    name: string | null;
    comment: string[];
    statements: string[];
  }[];
  table_problems: { table: string; problem: string }[];
  change_log: string | null;
}

function planReport(config: Config, plan: MigrationPlan): PlanReport {
  return {
    schema: plan.schema,
    database: pgWhere(config.database.url),
    dry_run: true,
    assumption: plan.assumption,
    lock_statement: migrateLockSql(plan.schema, 'pg_advisory_lock'),
    steps: plan.steps.map((step) => ({
      kind: step.kind === 'replica-identity' ? 'replica_identity' : step.kind,
      name:
        step.kind === 'schema'
          ? plan.schema
          : step.kind === 'migration'
            ? step.name
            : step.kind === 'publication'
              ? step.publication
              : step.kind === 'replica-identity'
                ? step.table
                : step.kind === 'slot'
                  ? step.slot
                  : null,
      comment: step.comment,
      statements: step.statements,
    })),
    table_problems: plan.tableProblems.map(({ table, problem }) => ({ table, problem })),
    change_log: plan.changeLog,
  };
}

/** `"a ""b"""` → `a "b"` */
const unquote = (ident: string) => (ident.startsWith('"') ? ident.slice(1, -1).replace(/""/g, '"') : ident);

function migrateReport(config: Config, r: MigrateResult, statements: string[]): MigrateReport {
  const created = statements.flatMap((sql) => {
    const m = /^CREATE PUBLICATION ("(?:[^"]|"")*"|\S+)/.exec(sql);
    return m ? [unquote(m[1]!)] : [];
  });
  const identity = statements.flatMap((sql) => {
    const m = /^ALTER TABLE (.+) REPLICA IDENTITY FULL$/.exec(sql);
    return m ? [m[1]!.split('.').map(unquote).join('.')] : [];
  });
  const report: MigrateReport = {
    schema: config.relay.schema,
    database: pgWhere(config.database.url),
    up_to_date: false,
    applied_migrations: r.applied,
    created_publications: created,
    created_slot: r.slotCreated ? { name: config.relay.slot, plugin: config.relay.plugin } : null,
    replica_identity_full: identity,
    adopted: r.adopted.map((a) => {
      const i = a.indexOf(' ');
      return { kind: a.slice(0, i), name: a.slice(i + 1) };
    }),
    table_problems: r.tableProblems,
  };
  report.up_to_date =
    report.applied_migrations.length === 0 &&
    report.created_publications.length === 0 &&
    report.created_slot === null &&
    report.replica_identity_full.length === 0 &&
    report.adopted.length === 0;
  return report;
}

/** What a person reads: what was applied and created. */
function formatMigrate(r: MigrateReport): string {
  const where = `schema ${r.schema} in database ${r.database}`;
  const lines = [r.up_to_date ? `${where} is already up to date: nothing to do` : `migrated ${where}:`];
  if (r.applied_migrations.length > 0) lines.push(`  applied migrations   ${r.applied_migrations.join(', ')}`);
  for (const p of r.created_publications) lines.push(`  created publication  ${p}`);
  if (r.created_slot) lines.push(`  created slot         ${r.created_slot.name} (plugin ${r.created_slot.plugin})`);
  for (const t of r.replica_identity_full) lines.push(`  replica identity     ${t} is now REPLICA IDENTITY FULL (before_image = true)`);
  for (const a of r.adopted) lines.push(`  adopted ${a.kind.padEnd(12)} ${a.name} (created before the relay recorded its own objects)`);
  for (const p of r.table_problems) lines.push(`  left out             ${p}`);
  return lines.join('\n') + '\n';
}

export async function runMigrate(config: Config, log: Logger, opts: { dryRun: boolean; json?: boolean }): Promise<number> {
  if (opts.dryRun) {
    const plan = await migrationPlan(config);
    process.stdout.write(opts.json ? JSON.stringify(planReport(config, plan), null, 2) + '\n' : formatPlan(plan));
    return 0;
  }
  const statements: string[] = [];
  const r = await migrate(config, log.child({ component: 'migrate' }), { onStatement: (sql) => statements.push(sql) });
  const report = migrateReport(config, r, statements);
  process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatMigrate(report));
  return 0;
}

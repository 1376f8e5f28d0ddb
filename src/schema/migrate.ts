import type pg from 'pg';
import type { Config } from '../config/load.js';
import { connect } from '../util/db.js';
import { UsageError, errorMessage } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { DEFAULT_CHANGE_LOG } from './tables.js';
import { goneSlotMessage, readSlot, slotRecord, type SlotStats } from './slot.js';
import { assertOwnership } from './ownership.js';
import { buildPlan, emptyDatabaseState, inspectDatabase, migrateLockSql, needsSlot, type MigrationPlan } from './plan.js';
import { legacyNotice, renamedSlotProblem, resolveNames } from './names.js';

/**
 * What `migrate` would run now, for `migrate --dry-run`: the same plan migrate computes, from a
 * read-only look at the database (inside a READ ONLY transaction, rolled back). It refuses the
 * way migrate does (wal_level, an unusable slot, a missing rule table). When the database cannot
 * be reached it is the plan for a database where nothing is applied yet, saying so. Changes nothing.
 */
export async function migrationPlan(config: Config): Promise<MigrationPlan> {
  let client: pg.Client;
  try {
    client = await connect(config.database.url, { connectionTimeoutMillis: 5000 });
  } catch (err) {
    return buildPlan(config, emptyDatabaseState(config), unreachableNote(config, err));
  }
  try {
    await client.query('BEGIN TRANSACTION READ ONLY');
    await assertLogicalWal(client);
    const names = await resolveNames(client, config);
    const renamed = renamedSlotProblem(names);
    if (renamed) throw new UsageError(`migrate refused: ${renamed}. Nothing was changed.`);
    const plan = await readPlan(client, names.config);
    const notice = legacyNotice(names);
    if (notice) plan.notes.push(notice);
    return plan;
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    await client.end().catch(() => {});
  }
}

function unreachableNote(config: Config, err: unknown): string {
  const setting = config.relay.change_log;
  const changeLog =
    setting === false
      ? ''
      : typeof setting === 'string'
        ? `\nThe change log ${setting} is taken as written.`
        : `\nFraiseQL's change log ${DEFAULT_CHANGE_LOG}, if it exists, is also added to the outbox publication (not shown).`;
  return (
    `could not reach the database (${errorMessage(err)}),\n` +
    `so this is the plan for a database where nothing is applied yet.\n` +
    `Rule tables are taken as written (not resolved through the search path, not checked for a replica identity).${changeLog}`
  );
}

/**
 * The slot (checked to be usable: refuse before changing anything) and the plan. Read-only; migrate
 * calls it holding the advisory lock.
 */
async function readPlan(client: pg.Client, config: Config): Promise<MigrationPlan> {
  const slot = needsSlot(config) ? await readSlot(client, config.relay.slot) : null;
  // the slot and the publications migrate would create, alter or adopt must be this relay's
  const owned = await assertOwnership(client, config, 'migrate', {
    slot: slot ?? false,
    publications: config.observers.rules.length > 0 ? ['outbox', 'tables'] : ['outbox'],
  });
  if (slot) await assertSlotUsable(client, config, slot);
  return buildPlan(config, await inspectDatabase(client, config, slot, owned));
}

export interface MigrateResult {
  applied: string[];
  /** rule tables left out of the publication, with the reason and the fix */
  tableProblems: string[];
  publicationCreated: boolean;
  slotCreated: boolean;
  /** the slot and publications of an installation from before ownership was recorded, now recorded as this relay's */
  adopted: string[];
  /** the slot (null when the configuration streams nothing outbound) and publication migrate used: the configured or derived names, or fraiseql-relay 0.1's (`legacy`) */
  names: { slot: string | null; publication: string; legacy: boolean };
}

export interface MigrateOptions {
  /** called with each plan statement just before it runs (and with ROLLBACK when a migration fails) */
  onStatement?: (sql: string) => void;
}

function pluginHint(plugin: string): string {
  return plugin === 'wal2json'
    ? `wal2json must be installed on the server (Debian/Ubuntu: apt-get install postgresql-<version>-wal2json) and, on PostgreSQL versions ` +
        `with output_plugin_libraries, listed there: ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'; SELECT pg_reload_conf();`
    : `PostgreSQL's output_plugin_libraries must list ${plugin}.`;
}

/** The plugins `output_plugin_libraries` allows, or null when the server has no such setting. */
export async function allowedPlugins(client: pg.Client): Promise<string[] | null> {
  const r = await client.query<{ setting: string }>(`SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'`);
  const setting = r.rows[0]?.setting;
  if (setting === undefined) return null;
  return setting
    .split(',')
    .map((p) => p.trim())
    .map((p) => (/^".*"$/.test(p) ? p.slice(1, -1).replace(/""/g, '"') : p.toLowerCase()))
    .filter((p) => p !== '');
}

/**
 * An existing slot must be a logical slot of this database with the configured plugin; a missing
 * one must be creatable with it (`known`: the slot as already read by readSlot). Fails with a
 * UsageError (exit 2) naming both plugins.
 */
async function assertSlotUsable(client: pg.Client, config: Config, known?: SlotStats): Promise<void> {
  const slot = config.relay.slot;
  const plugin = config.relay.plugin;
  const row = known ?? (await readSlot(client, slot));
  if (row.exists) {
    const db = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]?.db;
    if (row.slotType !== 'logical' || row.database !== db) {
      throw new UsageError(
        `replication slot "${slot}" exists but is a ${row.slotType} slot with plugin ${row.plugin} on database ${row.database}; ` +
          `fraiseql-relay needs a logical ${plugin} slot on database ${db}. Choose another name with [relay] slot, ` +
          `or drop it (SELECT pg_drop_replication_slot('${slot}')) if nothing else uses it. Nothing was changed.`,
      );
    }
    if (row.plugin !== plugin) {
      throw new UsageError(
        `replication slot "${slot}" uses plugin ${row.plugin}, but [relay] plugin = "${plugin}". A slot's plugin cannot be changed: ` +
          `set plugin = "${row.plugin}", choose another slot name with [relay] slot, or drop the slot (SELECT pg_drop_replication_slot('${slot}'); ` +
          `events committed but not yet streamed are then lost) and run migrate again. Nothing was changed.`,
      );
    }
  }
  const allowed = await allowedPlugins(client);
  if (allowed && !allowed.includes(plugin)) {
    throw new UsageError(
      `[relay] plugin = "${plugin}", but PostgreSQL's output_plugin_libraries ('${allowed.join(', ')}') does not allow it, ` +
        `so the slot could not ${row.exists ? 'stream' : 'be created'}.\n  ${pluginHint(plugin)} Nothing was changed.`,
    );
  }
}

/** Fails with a UsageError (exit 2) when the server cannot do logical decoding. */
async function assertLogicalWal(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{ wal_level: string }>('SHOW wal_level');
  const level = rows[0]?.wal_level;
  if (level !== 'logical') {
    throw new UsageError(
      `PostgreSQL has wal_level = '${level}', but fraiseql-relay streams the outbox by logical decoding, which needs wal_level = logical.\n` +
        `  Set it in postgresql.conf (wal_level = logical) or run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL.\n` +
        `  (On managed services: RDS/Aurora rds.logical_replication = 1, Cloud SQL cloudsql.logical_decoding = on, Azure wal_level = LOGICAL.)\n` +
        `  Nothing was changed.`,
    );
  }
}

/**
 * Creates or upgrades the relay's schema, functions, publications and slot. Idempotent and safe
 * to run concurrently: under a session advisory lock it computes the plan (the same one
 * `migrate --dry-run` prints) and runs exactly its statements.
 */
export async function migrate(configured: Config, log: Logger = createLogger('silent'), opts: MigrateOptions = {}): Promise<MigrateResult> {
  const schema = configured.relay.schema;
  const client = await connect(configured.database.url);
  let config = configured;
  const result: MigrateResult = {
    applied: [],
    tableProblems: [],
    publicationCreated: false,
    slotCreated: false,
    adopted: [],
    names: { slot: needsSlot(config) ? config.relay.slot : null, publication: config.relay.publication, legacy: false },
  };
  try {
    await assertLogicalWal(client);
    await client.query(migrateLockSql(schema, 'pg_advisory_lock'));
    try {
      // the default names, or those of a fraiseql-relay 0.1 installation that still streams from its slot
      const names = await resolveNames(client, configured);
      const renamed = renamedSlotProblem(names);
      if (renamed) throw new UsageError(`migrate refused: ${renamed}. Nothing was changed.`);
      config = names.config;
      if (needsSlot(config) && !names.slotExists) {
        // lost (a failover without a synchronized copy): created now it would skip the events since the last confirmation
        const rec = await slotRecord(client, config.relay.schema, config.relay.slot);
        if (rec) throw new UsageError(`migrate refused: ${goneSlotMessage(config.relay.slot, rec)} Nothing was changed.`);
      }
      const notice = legacyNotice(names);
      if (notice) log.warn({ slot: config.relay.slot, publication: config.relay.publication }, notice);
      result.names = {
        slot: needsSlot(config) ? config.relay.slot : null,
        publication: config.relay.publication,
        legacy: names.legacy?.state === 'kept',
      };
      const plan = await readPlan(client, config);
      await runPlan(client, plan, result, log, opts.onStatement);
      // the slot was there when the plan was made: it is still the configured one
      if (needsSlot(config) && !result.slotCreated) await assertSlotUsable(client, config);
    } finally {
      await client.query(migrateLockSql(schema, 'pg_advisory_unlock')).catch(() => {});
    }
  } finally {
    await client.end().catch(() => {});
  }
  return result;
}

/** Runs the plan's statements in order, one at a time, filling in the result and logging each step. */
async function runPlan(
  client: pg.Client,
  plan: MigrationPlan,
  result: MigrateResult,
  log: Logger,
  onStatement: ((sql: string) => void) | undefined,
): Promise<void> {
  const run = async (sql: string) => {
    onStatement?.(sql);
    await client.query(sql);
  };
  result.tableProblems = plan.tableProblems.map((p) => p.problem);
  for (const step of plan.steps) {
    switch (step.kind) {
      case 'schema':
        for (const sql of step.statements) await run(sql);
        break;
      case 'migration':
        try {
          for (const sql of step.statements) await run(sql);
        } catch (err) {
          onStatement?.('ROLLBACK');
          await client.query('ROLLBACK').catch(() => {});
          throw new Error(`migration ${step.name} failed: ${(err as Error).message}`, { cause: err });
        }
        result.applied.push(step.name);
        log.info({ migration: step.name }, 'applied migration');
        break;
      case 'publication':
        for (const sql of step.statements) await run(sql);
        if (step.role === 'outbox') {
          if (step.create) {
            result.publicationCreated = true;
            log.info({ publication: step.publication, tables: step.tables }, 'created publication');
          }
          if (plan.changeLog) log.info({ table: plan.changeLog }, "streaming FraiseQL's change log");
          // the rule tables come next
          for (const p of plan.tableProblems) log.warn({ table: p.table }, p.problem);
        } else if (step.create) {
          log.info({ publication: step.publication, tables: step.tables, publish: step.publish }, 'created publication');
        }
        break;
      case 'ownership':
        for (const sql of step.statements) await run(sql);
        for (const o of step.adopted) {
          result.adopted.push(`${o.kind} ${o.name}`);
          log.info({ [o.kind]: o.name }, `adopted the ${o.kind} of this installation (created before ownership was recorded)`);
        }
        break;
      case 'replica-identity':
        for (const sql of step.statements) await run(sql);
        log.info({ table: step.table }, 'set REPLICA IDENTITY FULL (before_image = true)');
        break;
      case 'slot':
        try {
          for (const sql of step.statements) await run(sql);
        } catch (err) {
          const msg = (err as Error).message;
          if (/could not access file|may not be used as an output plugin/.test(msg)) {
            throw new UsageError(
              `cannot create replication slot "${step.slot}" with plugin ${step.plugin}: ${msg}\n  ${pluginHint(step.plugin)}`,
            );
          }
          throw err;
        }
        result.slotCreated = true;
        log.info({ slot: step.slot, plugin: step.plugin }, 'created replication slot');
        break;
    }
  }
}

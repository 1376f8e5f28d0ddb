import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { connect, quoteIdent } from '../util/db.js';
import { UsageError } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { identityProblem, resolveChangeLog, resolveRuleTables, tablesPublication } from './tables.js';

export interface Migration {
  id: number;
  name: string;
  sql: string;
}

const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'sql');

/** Numbered plain-SQL migrations from sql/, with the schema placeholder replaced. */
export function loadMigrations(schema: string, dir = SQL_DIR): Migration[] {
  return readdirSync(dir)
    .filter((f) => /^\d+_.*\.sql$/.test(f))
    .sort()
    .map((f) => ({
      id: Number.parseInt(f, 10),
      name: f,
      sql: readFileSync(join(dir, f), 'utf8').replaceAll('__SCHEMA__', quoteIdent(schema)),
    }));
}

export function outboxPublication(config: Config): string {
  return `${config.relay.publication}_outbox`;
}

/** The relay needs a slot when anything flows outbound (a subscriber-only service needs none). */
export function needsSlot(config: Config): boolean {
  const o = config.observers;
  return o.publish.length > 0 || o.rules.length > 0 || o.subscribe.length === 0;
}

function publicationSql(config: Config): string {
  const pub = quoteIdent(outboxPublication(config));
  const table = `${quoteIdent(config.relay.schema)}.outbox`;
  return `CREATE PUBLICATION ${pub} FOR TABLE ${table} WITH (publish = 'insert');`;
}

/** Every statement migrate may run, for `migrate --dry-run`. Changes nothing. */
export function migrationPlan(config: Config): string {
  const s = quoteIdent(config.relay.schema);
  const out: string[] = [
    `-- fraiseql-relay migrate (dry run): schema ${config.relay.schema}`,
    `-- every step is skipped when already applied; each migration runs in its own transaction`,
    `-- under the advisory lock pg_advisory_lock(hashtext('fraiseql-relay/migrate'), hashtext('${config.relay.schema}'))`,
    `CREATE SCHEMA IF NOT EXISTS ${s};`,
    `CREATE TABLE IF NOT EXISTS ${s}.migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());`,
  ];
  for (const m of loadMigrations(config.relay.schema)) {
    out.push(`\n-- migration ${m.name}\nBEGIN;\n${m.sql.trim()}\nINSERT INTO ${s}.migrations (id, name) VALUES (${m.id}, '${m.name}');\nCOMMIT;`);
  }
  out.push(`\n-- publication (only changes of the outbox's INSERTs are streamed; cleanup deletes are not)`);
  out.push(publicationSql(config));
  if (needsSlot(config)) {
    out.push(`\n-- permanent logical replication slot (created before producers write, never silently recreated)`);
    out.push(`SELECT pg_create_logical_replication_slot('${config.relay.slot}', '${config.relay.plugin}');`);
  }
  return out.join('\n') + '\n';
}

export interface MigrateResult {
  applied: string[];
  /** rule tables left out of the publication, with the reason and the fix */
  tableProblems: string[];
  publicationCreated: boolean;
  slotCreated: boolean;
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
 * one must be creatable with it. Fails with a UsageError (exit 2) naming both plugins.
 */
export async function assertSlotUsable(client: pg.Client, config: Config): Promise<void> {
  const slot = config.relay.slot;
  const plugin = config.relay.plugin;
  const found = await client.query<{ plugin: string; database: string; slot_type: string }>(
    `SELECT plugin, database, slot_type FROM pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  const row = found.rows[0];
  if (row) {
    const db = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]?.db;
    if (row.slot_type !== 'logical' || row.database !== db) {
      throw new UsageError(
        `replication slot "${slot}" exists but is a ${row.slot_type} slot with plugin ${row.plugin} on database ${row.database}; ` +
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
        `so the slot could not ${row ? 'stream' : 'be created'}.\n  ${pluginHint(plugin)} Nothing was changed.`,
    );
  }
}

/** Fails with a UsageError (exit 2) when the server cannot do logical decoding. */
export async function assertLogicalWal(client: pg.Client): Promise<void> {
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
 * Creates or upgrades the relay's schema, functions, publication and slot. Idempotent and safe
 * to run concurrently: everything happens under a session advisory lock.
 */
export async function migrate(config: Config, log: Logger): Promise<MigrateResult> {
  const schema = config.relay.schema;
  const s = quoteIdent(schema);
  const client = await connect(config.database.url);
  const result: MigrateResult = { applied: [], tableProblems: [], publicationCreated: false, slotCreated: false };
  try {
    await assertLogicalWal(client);
    await client.query(`SELECT pg_advisory_lock(hashtext('fraiseql-relay/migrate'), hashtext($1))`, [schema]);
    try {
      // refuse before changing anything when the slot cannot be the one configured
      if (needsSlot(config)) await assertSlotUsable(client, config);
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${s}.migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
      );
      const done = new Set(
        (await client.query<{ id: number }>(`SELECT id FROM ${s}.migrations`)).rows.map((r) => r.id),
      );
      for (const m of loadMigrations(schema)) {
        if (done.has(m.id)) continue;
        await client.query('BEGIN');
        try {
          await client.query(m.sql);
          await client.query(`INSERT INTO ${s}.migrations (id, name) VALUES ($1, $2)`, [m.id, m.name]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => {});
          throw new Error(`migration ${m.name} failed: ${(err as Error).message}`, { cause: err });
        }
        result.applied.push(m.name);
        log.info({ migration: m.name }, 'applied migration');
      }

      const pub = outboxPublication(config);
      const changeLog = await resolveChangeLog(client, config);
      const tables = [`${s}.outbox`];
      if (changeLog) tables.push(`${quoteIdent(changeLog.schema)}.${quoteIdent(changeLog.name)}`);
      const existing = await client.query(`SELECT 1 FROM pg_publication WHERE pubname = $1`, [pub]);
      if (existing.rowCount === 0) {
        await client.query(`CREATE PUBLICATION ${quoteIdent(pub)} FOR TABLE ${tables.join(', ')} WITH (publish = 'insert')`);
        result.publicationCreated = true;
        log.info({ publication: pub, tables }, 'created publication');
      } else {
        // keep it exactly right on upgrade: only these tables, only inserts
        await client.query(`ALTER PUBLICATION ${quoteIdent(pub)} SET TABLE ${tables.join(', ')}`);
        await client.query(`ALTER PUBLICATION ${quoteIdent(pub)} SET (publish = 'insert')`);
      }
      if (changeLog) log.info({ table: `${changeLog.schema}.${changeLog.name}` }, "streaming FraiseQL's change log");

      const problems = await migrateRuleTables(client, config, log);
      result.tableProblems = problems;

      if (needsSlot(config)) {
        const slot = config.relay.slot;
        const found = await client.query<{ plugin: string; database: string; slot_type: string }>(
          `SELECT plugin, database, slot_type FROM pg_replication_slots WHERE slot_name = $1`,
          [slot],
        );
        const row = found.rows[0];
        const plugin = config.relay.plugin;
        if (!row) {
          try {
            await client.query(`SELECT pg_create_logical_replication_slot($1, $2)`, [slot, plugin]);
          } catch (err) {
            const msg = (err as Error).message;
            if (/could not access file|may not be used as an output plugin/.test(msg)) {
              throw new UsageError(`cannot create replication slot "${slot}" with plugin ${plugin}: ${msg}\n  ${pluginHint(plugin)}`);
            }
            throw err;
          }
          result.slotCreated = true;
          log.info({ slot, plugin }, 'created replication slot');
        } else {
          await assertSlotUsable(client, config);
        }
      }
    } finally {
      await client.query(`SELECT pg_advisory_unlock(hashtext('fraiseql-relay/migrate'), hashtext($1))`, [schema]).catch(() => {});
    }
  } finally {
    await client.end().catch(() => {});
  }
  return result;
}

/**
 * The table-rules publication: every rule table, publishing the operations the rules need.
 * `before_image = true` sets REPLICA IDENTITY FULL; a table without a usable replica identity
 * is reported and left out (adding it would make PostgreSQL reject the application's writes).
 */
async function migrateRuleTables(client: pg.Client, config: Config, log: Logger): Promise<string[]> {
  const pub = quoteIdent(tablesPublication(config));
  const exists = (await client.query(`SELECT 1 FROM pg_publication WHERE pubname = $1`, [tablesPublication(config)])).rowCount === 1;
  if (config.observers.rules.length === 0) return [];
  const { tables } = await resolveRuleTables(client, config);
  const problems: string[] = [];
  const ok: string[] = [];
  const ops = new Set<string>();
  for (const t of tables) {
    const q = `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;
    if (t.beforeImage && t.replicaIdentity !== 'f') {
      await client.query(`ALTER TABLE ${q} REPLICA IDENTITY FULL`);
      log.info({ table: `${t.schema}.${t.name}` }, 'set REPLICA IDENTITY FULL (before_image = true)');
    }
    const problem = identityProblem(t);
    if (problem) {
      problems.push(problem);
      log.warn({ table: `${t.schema}.${t.name}` }, problem);
      continue;
    }
    ok.push(q);
    for (const e of t.events) ops.add(e.toLowerCase());
  }
  if (ok.length === 0) return problems;
  const publish = ['insert', 'update', 'delete'].filter((o) => ops.has(o)).join(', ');
  if (!exists) {
    await client.query(`CREATE PUBLICATION ${pub} FOR TABLE ${ok.join(', ')} WITH (publish = '${publish}')`);
    log.info({ publication: tablesPublication(config), tables: ok, publish }, 'created publication');
  } else {
    await client.query(`ALTER PUBLICATION ${pub} SET TABLE ${ok.join(', ')}`);
    await client.query(`ALTER PUBLICATION ${pub} SET (publish = '${publish}')`);
  }
  return problems;
}

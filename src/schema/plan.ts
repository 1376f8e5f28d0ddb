/**
 * The migration plan: the SQL statements `migrate` runs, in order, computed from the config and a
 * read-only look at the database. `migrate` runs exactly these statements and `migrate --dry-run`
 * prints them, so the two cannot drift apart. Every statement is complete SQL text (identifiers
 * through quoteIdent, values as inline literals), runnable as printed.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { quoteIdent, quoteQualified, quoteLiteral, serverVersionNum } from '../util/db.js';
import type { SlotStats } from './slot.js';
import { adoptableObjects, OWNED_TABLE, recordOwnedSql, type ObjectKind, type OwnershipReport } from './ownership.js';
import { identityProblem, needsIdentityFull, resolveChangeLog, resolveRuleTables, tablesPublication } from './tables.js';

function identityReason(t: { beforeImage: boolean }): string {
  return t.beforeImage ? 'before_image = true' : 'a row filter (where) with UPDATE or DELETE rules';
}

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

/**
 * The relay needs a slot when anything flows outbound (a subscriber-only service needs none),
 * and always with backend = "postgres", whose subscriptions are applied from the slot's stream.
 */
export function needsSlot(config: Config): boolean {
  const o = config.observers;
  return o.backend === 'postgres' || o.publish.length > 0 || o.rules.length > 0 || o.subscribe.length === 0;
}

type RowEvent = 'INSERT' | 'UPDATE' | 'DELETE';

/** A `[[observers.rules]]` table as the plan uses it (rules on one table merged). */
interface PlannedRuleTable {
  /** the quoted, schema-qualified name that goes into SQL */
  sql: string;
  /** schema.name for messages and logs */
  name: string;
  events: ReadonlySet<RowEvent>;
  /** before_image = true (or a row filter with UPDATE/DELETE) and the table is not REPLICA IDENTITY FULL yet */
  setIdentityFull: boolean;
  /** why it needs REPLICA IDENTITY FULL */
  identityReason: string;
  /** the rules' row filter, or null */
  where: string | null;
  /** why the table cannot be in the rules publication (it is left out), or null */
  problem: string | null;
}

/** What the plan depends on. */
export interface DatabaseState {
  schemaExists: boolean;
  migrationsTableExists: boolean;
  /** ids recorded in <schema>.migrations */
  applied: ReadonlySet<number>;
  outboxPublicationExists: boolean;
  tablesPublicationExists: boolean;
  slotExists: boolean;
  ruleTables: PlannedRuleTable[];
  /** FraiseQL's change log, streamed through the outbox publication */
  changeLog: { sql: string; name: string } | null;
  /** the slot and publications that are this relay's by proof but not recorded yet (see ownership.ts) */
  adopt: { kind: ObjectKind; name: string; proof: string }[];
  /**
   * PostgreSQL 18 and later: the tables publication publishes stored generated columns. There, a
   * table whose replica identity (FULL, for before_image) holds a generated column that the
   * publication does not publish refuses the application's own UPDATE and DELETE.
   */
  publishGeneratedColumns: boolean;
  /** PostgreSQL 17 and later: the slot is created with failover = true (synchronized to standbys that ask for it) */
  failoverSlots: boolean;
}

interface StepBase {
  /** what the step does, printed as `--` comment lines by the dry run */
  comment: string[];
  /** complete SQL statements, run one at a time in this order */
  statements: string[];
}

type PlanStep = StepBase &
  (
    | { kind: 'schema' }
    /** statements are BEGIN, the migration's SQL, its INSERT INTO <schema>.migrations, COMMIT */
    | { kind: 'migration'; name: string }
    | { kind: 'publication'; role: 'outbox' | 'tables'; publication: string; tables: string[]; publish: string; create: boolean }
    | { kind: 'replica-identity'; table: string }
    | { kind: 'slot'; slot: string; plugin: string }
    /** statements record existing objects as this relay's (an installation from before sql/007) */
    | { kind: 'ownership'; adopted: { kind: ObjectKind; name: string }[] }
  );

export interface MigrationPlan {
  schema: string;
  /** null when the plan was computed from the database; otherwise what it assumed instead, and why */
  assumption: string | null;
  /** what the dry run says besides the steps (e.g. that a fraiseql-relay 0.1 installation keeps its names) */
  notes: string[];
  steps: PlanStep[];
  /** rule tables left out of the rules publication, with the reason and the fix */
  tableProblems: { table: string; problem: string }[];
  /** schema.name of the change log added to the outbox publication, or null */
  changeLog: string | null;
}

/**
 * A read-only look at what exists. Rule tables and the change log are resolved the way the relay
 * resolves them (search path, `[relay] change_log`); a missing rule table or configured change
 * log is a UsageError. `slot` is the slot as read by readSlot (null when none is needed); `owned`
 * says whose the slot and publications are (what migrate adopts).
 */
export async function inspectDatabase(
  client: pg.Client,
  config: Config,
  slot: SlotStats | null,
  owned: OwnershipReport | null = null,
): Promise<DatabaseState> {
  const schema = config.relay.schema;
  const s = quoteIdent(schema);
  const r = await client.query<{ schema_exists: boolean; migrations_exists: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS schema_exists,
            to_regclass($2) IS NOT NULL AS migrations_exists`,
    [schema, `${s}.migrations`],
  );
  const schemaExists = r.rows[0]?.schema_exists === true;
  const migrationsTableExists = r.rows[0]?.migrations_exists === true;
  const applied = migrationsTableExists
    ? new Set((await client.query<{ id: number }>(`SELECT id FROM ${s}.migrations`)).rows.map((row) => row.id))
    : new Set<number>();
  const pubs = new Set(
    (
      await client.query<{ pubname: string }>(`SELECT pubname FROM pg_publication WHERE pubname = ANY($1::text[])`, [
        [outboxPublication(config), tablesPublication(config)],
      ])
    ).rows.map((row) => row.pubname),
  );
  const changeLog = await resolveChangeLog(client, config);
  const versionNum = await serverVersionNum(client);
  const ruleTables: PlannedRuleTable[] = [];
  if (config.observers.rules.length > 0) {
    for (const t of (await resolveRuleTables(client, config)).tables) {
      ruleTables.push({
        sql: `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`,
        name: `${t.schema}.${t.name}`,
        events: t.events,
        setIdentityFull: needsIdentityFull(t) && t.replicaIdentity !== 'f',
        identityReason: identityReason(t),
        where: t.where,
        problem: identityProblem(t),
      });
    }
  }
  return {
    schemaExists,
    migrationsTableExists,
    applied,
    outboxPublicationExists: pubs.has(outboxPublication(config)),
    tablesPublicationExists: pubs.has(tablesPublication(config)),
    slotExists: slot?.exists === true,
    ruleTables,
    changeLog: changeLog
      ? { sql: `${quoteIdent(changeLog.schema)}.${quoteIdent(changeLog.name)}`, name: `${changeLog.schema}.${changeLog.name}` }
      : null,
    adopt: owned ? adoptableObjects(owned) : [],
    publishGeneratedColumns: versionNum >= 180000,
    failoverSlots: hasFailoverSlots(versionNum),
  };
}

/**
 * A database where nothing is applied yet, for a dry run that cannot reach the server: rule
 * tables are taken as written (each `before_image` table gets REPLICA IDENTITY FULL, none is left
 * out), and the change log is the configured `[relay] change_log` (the default one is only added
 * when it exists, which cannot be known here).
 */
export function emptyDatabaseState(config: Config): DatabaseState {
  const byName = new Map<string, { sql: string; name: string; events: Set<RowEvent>; beforeImage: boolean; where: string | null }>();
  for (const rule of config.observers.rules) {
    const sql = quoteQualified(rule.table);
    const t = byName.get(sql) ?? { sql, name: rule.table, events: new Set<RowEvent>(), beforeImage: false, where: rule.where ?? null };
    t.events.add(rule.event);
    t.beforeImage ||= rule.before_image;
    byName.set(sql, t);
  }
  const setting = config.relay.change_log;
  return {
    schemaExists: false,
    migrationsTableExists: false,
    applied: new Set(),
    outboxPublicationExists: false,
    tablesPublicationExists: false,
    slotExists: false,
    ruleTables: [...byName.values()].map((t) => ({
      sql: t.sql,
      name: t.name,
      events: t.events,
      setIdentityFull: needsIdentityFull(t),
      identityReason: identityReason(t),
      where: t.where,
      problem: null,
    })),
    changeLog: typeof setting === 'string' ? { sql: quoteQualified(setting), name: setting } : null,
    adopt: [],
    publishGeneratedColumns: false,
    failoverSlots: false,
  };
}

/** The statements that bring a database in `state` to what `config` asks for, in the order they run. */
export function buildPlan(config: Config, state: DatabaseState, assumption: string | null = null): MigrationPlan {
  const schema = config.relay.schema;
  const s = quoteIdent(schema);
  const steps: PlanStep[] = [];

  const bookkeeping: string[] = [];
  if (!state.schemaExists) bookkeeping.push(`CREATE SCHEMA IF NOT EXISTS ${s}`);
  if (!state.migrationsTableExists) {
    bookkeeping.push(
      `CREATE TABLE IF NOT EXISTS ${s}.migrations (id integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
  }
  if (bookkeeping.length > 0) {
    steps.push({ kind: 'schema', comment: [`schema ${schema} and its record of applied migrations`], statements: bookkeeping });
  }

  for (const m of loadMigrations(schema)) {
    if (state.applied.has(m.id)) continue;
    steps.push({
      kind: 'migration',
      name: m.name,
      comment: [`migration ${m.name}: one transaction, recorded in ${schema}.migrations`],
      statements: ['BEGIN', m.sql.trim(), `INSERT INTO ${s}.migrations (id, name) VALUES (${m.id}, ${quoteLiteral(m.name)})`, 'COMMIT'],
    });
  }

  if (state.adopt.length > 0) {
    steps.push({
      kind: 'ownership',
      adopted: state.adopt.map(({ kind, name }) => ({ kind, name })),
      comment: [
        `this installation's slot and publications, created before ${schema}.${OWNED_TABLE} recorded them, are recorded as this relay's:`,
        ...state.adopt.map((a) => `  ${a.kind} ${a.name}: ${a.proof}`),
      ],
      statements: state.adopt.map((a) => recordOwnedSql(schema, a.kind, a.name, 'adopted')),
    });
  }

  const outboxPub = outboxPublication(config);
  const outboxTables = [`${s}.outbox`, ...(state.changeLog ? [state.changeLog.sql] : [])];
  const streamed = `inserts into ${schema}.outbox${state.changeLog ? ` and FraiseQL's change log ${state.changeLog.name}` : ''}`;
  steps.push(
    publicationStep(
      schema,
      'outbox',
      outboxPub,
      outboxTables,
      'insert',
      !state.outboxPublicationExists,
      state.outboxPublicationExists
        ? [`publication ${outboxPub} exists: set it to exactly ${streamed} (the retention cleanup's deletes are not streamed)`]
        : [`publication ${outboxPub}: ${streamed} (the retention cleanup's deletes are not streamed)`],
    ),
  );

  const tableProblems: MigrationPlan['tableProblems'] = [];
  if (config.observers.rules.length > 0) {
    const ok: string[] = [];
    const ops = new Set<string>();
    for (const t of state.ruleTables) {
      if (t.setIdentityFull) {
        steps.push({
          kind: 'replica-identity',
          table: t.name,
          comment: [`${t.identityReason} on ${t.name}: its UPDATE and DELETE changes carry the whole old row`],
          statements: [`ALTER TABLE ${t.sql} REPLICA IDENTITY FULL`],
        });
      }
      if (t.problem) {
        tableProblems.push({ table: t.name, problem: t.problem });
        continue;
      }
      // PostgreSQL's publication row filter (in parentheses, as its syntax wants)
      ok.push(t.where === null ? t.sql : `${t.sql} WHERE (${t.where})`);
      for (const e of t.events) ops.add(e.toLowerCase());
    }
    if (ok.length > 0) {
      const pub = tablesPublication(config);
      const publish = ['insert', 'update', 'delete'].filter((o) => ops.has(o)).join(', ');
      const left = tableProblems.map((p) => `left out: ${p.problem}`);
      steps.push(
        publicationStep(
          schema,
          'tables',
          pub,
          ok,
          publish,
          !state.tablesPublicationExists,
          state.tablesPublicationExists
            ? [`publication ${pub} exists: set it to exactly the [[observers.rules]] tables and operations (${publish})`, ...left]
            : [`publication ${pub}: the [[observers.rules]] tables, publishing ${publish}`, ...left],
          state.publishGeneratedColumns ? `, publish_generated_columns = 'stored'` : '',
        ),
      );
    }
  }

  if (needsSlot(config) && !state.slotExists) {
    const { slot, plugin } = config.relay;
    steps.push({
      kind: 'slot',
      slot,
      plugin,
      comment: [
        `permanent logical replication slot ${slot} with plugin ${plugin} (never silently recreated), recorded as this relay's in ${schema}.${OWNED_TABLE}`,
        ...(state.failoverSlots
          ? ['failover = true: a standby with sync_replication_slots = on keeps a copy that survives its promotion']
          : []),
      ],
      statements: [createSlotSql(slot, plugin, state.failoverSlots), recordOwnedSql(schema, 'slot', slot, 'created')],
    });
  }

  return { schema, assumption, notes: [], steps, tableProblems, changeLog: state.changeLog?.name ?? null };
}

function publicationStep(
  schema: string,
  role: 'outbox' | 'tables',
  publication: string,
  tables: string[],
  publish: string,
  create: boolean,
  comment: string[],
  /** more publication options, e.g. ", publish_generated_columns = 'stored'" */
  options = '',
): PlanStep {
  const pub = quoteIdent(publication);
  // a publication migrate creates is recorded as this relay's right after it
  const statements = create
    ? [
        `CREATE PUBLICATION ${pub} FOR TABLE ${tables.join(', ')} WITH (publish = ${quoteLiteral(publish)}${options})`,
        recordOwnedSql(schema, 'publication', publication, 'created'),
      ]
    : [
        `ALTER PUBLICATION ${pub} SET TABLE ${tables.join(', ')}`,
        `ALTER PUBLICATION ${pub} SET (publish = ${quoteLiteral(publish)}${options})`,
      ];
  return { kind: 'publication', role, publication, tables, publish, create, comment, statements };
}

/** PostgreSQL 17 and later create logical slots that standbys can synchronize (`failover`). */
export function hasFailoverSlots(versionNum: number): boolean {
  return versionNum >= 170000;
}

/**
 * Creates the relay's logical slot; with `failover` (PostgreSQL 17+), one that standbys with
 * `sync_replication_slots = on` synchronize, so it exists on a promoted standby.
 */
export function createSlotSql(slot: string, plugin: string, failover: boolean): string {
  return failover
    ? `SELECT pg_create_logical_replication_slot(${quoteLiteral(slot)}, ${quoteLiteral(plugin)}, false, false, true)`
    : `SELECT pg_create_logical_replication_slot(${quoteLiteral(slot)}, ${quoteLiteral(plugin)})`;
}

/** Every statement of the plan, in the order migrate runs them. */
export function planStatements(plan: MigrationPlan): string[] {
  return plan.steps.flatMap((step) => step.statements);
}

/** The advisory lock migrate holds while it computes and runs the plan (the schema is the key). */
export function migrateLockSql(schema: string, fn: 'pg_advisory_lock' | 'pg_advisory_unlock'): string {
  return `SELECT ${fn}(hashtext('fraiseql-relay/migrate'), hashtext(${quoteLiteral(schema)}))`;
}

/** The plan as `migrate --dry-run` prints it: `--` comments and the statements, each ending in `;`. */
export function formatPlan(plan: MigrationPlan): string {
  const out: string[] = [
    ...(plan.assumption ? plan.assumption.split('\n').map((l) => `-- ${l}`) : []),
    `-- fraiseql-relay migrate --dry-run (schema ${plan.schema}): the statements migrate would run, in this order. Nothing was changed.`,
    `-- migrate holds this session advisory lock while it reads the database and runs them, so concurrent runs apply each step once:`,
    `--   ${migrateLockSql(plan.schema, 'pg_advisory_lock')};`,
    ...plan.notes.map((n) => `-- note: ${n}`),
  ];
  if (plan.steps.length === 0) out.push('', '-- nothing to do: everything is in place');
  for (const step of plan.steps) {
    out.push('', ...step.comment.map((c) => `-- ${c}`));
    for (const sql of step.statements) out.push(terminated(sql));
  }
  if (plan.tableProblems.length > 0 && !plan.steps.some((s) => s.kind === 'publication' && s.role === 'tables')) {
    out.push('', ...plan.tableProblems.map((p) => `-- left out of the rules publication: ${p.problem}`));
  }
  return out.join('\n') + '\n';
}

function terminated(sql: string): string {
  if (sql.endsWith(';')) return sql;
  const lastLine = sql.slice(sql.lastIndexOf('\n') + 1);
  return lastLine.trimStart().startsWith('--') ? `${sql}\n;` : `${sql};`;
}

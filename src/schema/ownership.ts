/**
 * Whose are the replication slot and the publications the configuration names?
 *
 * A slot name is shared by every database of a PostgreSQL cluster, a publication name by every
 * schema of a database: two services with the default names would stream from, recreate or drop
 * each other's. So `migrate` records what it creates in `<schema>.owned_objects` (sql/007), and
 * `migrate`, `run`, `teardown` and `reconcile` act on a slot or publication only when it is this
 * relay's:
 *
 * - a slot must belong to this database (`pg_replication_slots.database`) and be recorded in this
 *   relay's schema; a publication must be recorded in this relay's schema;
 * - an installation migrated before the record existed is adopted: a publication that publishes
 *   this schema's outbox is ours; a slot of this database is ours when this schema's `relay_state`
 *   has its row (this relay streamed from it), or, while no slot is recorded at all, when this
 *   schema's outbox publication is ours and no other relay schema of the database claims the slot.
 *   `migrate` records what it adopts; the other commands accept it as it stands;
 * - anything else refuses (exit 2, nothing changed), naming the other owner and what to do.
 */
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { LEGACY_RELAY_NAME } from '../config/service.js';
import { quoteIdent, quoteLiteral, withClient } from '../util/db.js';
import { UsageError } from '../util/errors.js';
import { needsSlot, outboxPublication } from './plan.js';
import { readSlot, type SlotStats } from './slot.js';
import { tablesPublication } from './tables.js';

/** The table of the relay's schema that records what it created (sql/007_owned_objects.sql). */
export const OWNED_TABLE = 'owned_objects';

export type ObjectKind = 'slot' | 'publication';

/** One slot or publication as this relay sees it. */
type Ownership =
  /** it does not exist: creating it is fine */
  | { state: 'absent' }
  /** recorded in this relay's schema */
  | { state: 'ours' }
  /** created before ownership was recorded; `proof` says why it is this relay's */
  | { state: 'adoptable'; proof: string }
  /** someone else's: `problem` names the owner as far as it can be known */
  | { state: 'foreign'; problem: string; suggest: 'slot' | 'publication' };

interface OwnedSlot {
  name: string;
  stats: SlotStats;
  ownership: Ownership;
}

interface OwnedPublication {
  name: string;
  role: 'outbox' | 'tables';
  ownership: Ownership;
}

export interface OwnershipReport {
  /** this connection's database */
  database: string;
  /** this relay's schema */
  schema: string;
  /** `<schema>.owned_objects` exists and this role can read it */
  recorded: boolean;
  slot: OwnedSlot | null;
  publications: OwnedPublication[];
}

export interface OwnershipScope {
  /** look at the configured slot (a SlotStats already read, or true to read it) */
  slot: SlotStats | boolean;
  /** the configured publications to look at */
  publications: readonly ('outbox' | 'tables')[];
}

/** A schema of this database that holds a relay's tables, and what it records. */
interface RelaySchema {
  schema: string;
  /** kind:name rows of its owned_objects, or null when it has none (or it cannot be read) */
  owned: Set<string> | null;
  /** slot names of its relay_state rows */
  streamed: Set<string>;
}

const key = (kind: ObjectKind, name: string) => `${kind}:${name}`;

/**
 * The relay schemas of this database (ours included): schemas with an `outbox` and a `migrations`
 * table, with what their `owned_objects` and `relay_state` say, where this role may read them.
 * Read-only, plain SELECTs (it also runs inside migrate --dry-run's READ ONLY transaction).
 */
async function relaySchemas(client: pg.Client): Promise<RelaySchema[]> {
  const { rows } = await client.query<{ schema: string; owned: boolean; state: boolean }>(
    `SELECT n.nspname AS schema,
            bool_or(c.relname = $1 AND has_table_privilege(c.oid, 'SELECT')
                    AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'kind' AND NOT a.attisdropped)
                    AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'name' AND NOT a.attisdropped)) AS owned,
            bool_or(c.relname = 'relay_state' AND has_table_privilege(c.oid, 'SELECT')
                    AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'slot' AND NOT a.attisdropped)) AS state
       FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
      WHERE c.relkind IN ('r', 'p') AND c.relname IN ('outbox', 'migrations', 'relay_state', $1)
        AND has_schema_privilege(n.oid, 'USAGE')
      GROUP BY n.nspname
     HAVING bool_or(c.relname = 'outbox') AND bool_or(c.relname = 'migrations')
      ORDER BY 1`,
    [OWNED_TABLE],
  );
  const out: RelaySchema[] = [];
  for (const r of rows) {
    const s = quoteIdent(r.schema);
    const owned = r.owned
      ? new Set(
          (await client.query<{ kind: ObjectKind; name: string }>(`SELECT kind, name FROM ${s}.${OWNED_TABLE}`)).rows.map((o) =>
            key(o.kind, o.name),
          ),
        )
      : null;
    const streamed = r.state
      ? new Set((await client.query<{ slot: string }>(`SELECT slot FROM ${s}.relay_state WHERE slot IS NOT NULL`)).rows.map((o) => o.slot))
      : new Set<string>();
    out.push({ schema: r.schema, owned, streamed });
  }
  return out;
}

interface PublicationRow {
  pubname: string;
  puballtables: boolean;
  tables: string[];
  has_outbox: boolean;
}

/**
 * Looks at the configured slot and publications and says whose they are. Read-only. The
 * configuration's schema need not exist (a service that was never migrated).
 */
export async function inspectOwnership(client: pg.Client, config: Config, scope: OwnershipScope): Promise<OwnershipReport> {
  const schema = config.relay.schema;
  const database = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
  const schemas = await relaySchemas(client);
  const ours = schemas.find((r) => r.schema === schema) ?? { schema, owned: null, streamed: new Set<string>() };
  const others = schemas.filter((r) => r.schema !== schema);
  const recorded = ours.owned !== null;
  const mine = ours.owned ?? new Set<string>();
  const claimedBy = (kind: ObjectKind, name: string) => others.filter((o) => o.owned?.has(key(kind, name))).map((o) => o.schema);

  const names = {
    outbox: outboxPublication(config),
    tables: tablesPublication(config),
  };
  const wanted = [...new Set(scope.publications)];
  const pubRows = new Map(
    (
      await client.query<PublicationRow>(
        `SELECT p.pubname, p.puballtables,
                coalesce((SELECT array_agg(t.schemaname || '.' || t.tablename ORDER BY t.schemaname, t.tablename)
                            FROM pg_publication_tables t WHERE t.pubname = p.pubname), '{}') AS tables,
                EXISTS (SELECT 1 FROM pg_publication_tables t
                         WHERE t.pubname = p.pubname AND t.schemaname = $2 AND t.tablename = 'outbox') AS has_outbox
           FROM pg_publication p WHERE p.pubname = ANY($1::text[])`,
        [[names.outbox, names.tables], schema],
      )
    ).rows.map((r) => [r.pubname, r]),
  );

  const judgePublication = (role: 'outbox' | 'tables'): Ownership => {
    const name = names[role];
    const row = pubRows.get(name);
    if (!row) return { state: 'absent' };
    if (mine.has(key('publication', name))) return { state: 'ours' };
    const what = row.puballtables
      ? 'is a FOR ALL TABLES publication'
      : row.tables.length > 0
        ? `publishes ${row.tables.join(', ')}`
        : 'publishes no table';
    const owners = claimedBy('publication', name);
    if (owners.length > 0) {
      return {
        state: 'foreign',
        suggest: 'publication',
        problem:
          `publication "${name}" belongs to the relay of schema ${owners.join(', ')} in this database ` +
          `(${owners.map((o) => `${o}.${OWNED_TABLE}`).join(', ')} records it; it ${what}), not to this relay (schema ${schema})`,
      };
    }
    if (role === 'outbox' && !row.puballtables && row.has_outbox) {
      return { state: 'adoptable', proof: `it publishes ${schema}.outbox` };
    }
    if (role === 'tables') {
      const outbox = judgePublication('outbox');
      if (outbox.state === 'ours' || outbox.state === 'adoptable') {
        return { state: 'adoptable', proof: `it was created with this relay's publication ${names.outbox}` };
      }
    }
    return {
      state: 'foreign',
      suggest: 'publication',
      problem:
        `publication "${name}" exists in this database but is not this relay's (schema ${schema}${recorded ? ` has no record of it in ${schema}.${OWNED_TABLE}` : ''}): ` +
        `it ${what}`,
    };
  };

  const publications: OwnedPublication[] = wanted.map((role) => ({ name: names[role], role, ownership: judgePublication(role) }));

  let slot: OwnedSlot | null = null;
  if (scope.slot !== false) {
    const name = config.relay.slot;
    const stats = scope.slot === true ? await readSlot(client, name) : scope.slot;
    const outbox = publications.find((p) => p.role === 'outbox')?.ownership ?? judgePublication('outbox');
    const ownership = judgeSlot({
      name,
      stats,
      database,
      schema,
      recorded,
      mine,
      claimedBy: claimedBy('slot', name),
      streamedByUs: ours.streamed.has(name),
      streamedBy: others.filter((o) => o.streamed.has(name)).map((o) => o.schema),
      outbox: { name: names.outbox, ours: outbox.state === 'ours' || outbox.state === 'adoptable' },
    });
    slot = { name, stats, ownership };
  }

  return { database, schema, recorded, slot, publications };
}

interface SlotFacts {
  name: string;
  stats: SlotStats;
  database: string;
  schema: string;
  recorded: boolean;
  /** kind:name of what this relay's schema records */
  mine: ReadonlySet<string>;
  /** other relay schemas of this database that record the slot */
  claimedBy: string[];
  /** this relay's relay_state has the slot's row */
  streamedByUs: boolean;
  /** other relay schemas whose relay_state has the slot's row */
  streamedBy: string[];
  /** this relay's outbox publication, and whether it is this relay's */
  outbox: { name: string; ours: boolean };
}

function judgeSlot(f: SlotFacts): Ownership {
  const { name, stats, database, schema } = f;
  if (!stats.exists) return { state: 'absent' };
  const usage = stats.activePid !== null ? `in use by process ${stats.activePid}` : 'not in use right now';
  if (stats.slotType !== 'logical' || stats.database === null) {
    return {
      state: 'foreign',
      suggest: 'slot',
      problem: `replication slot "${name}" is a ${stats.slotType ?? 'physical'} slot (a standby's or a backup tool's, ${usage}), not a logical slot of this relay`,
    };
  }
  if (stats.database !== database) {
    return {
      state: 'foreign',
      suggest: 'slot',
      problem:
        `replication slot "${name}" belongs to database "${stats.database}" (logical, plugin ${stats.plugin ?? '?'}, ${usage}), ` +
        `not to "${database}", this relay's database: it is the slot of another service's relay (or of another tool) in the same ` +
        `PostgreSQL cluster, where every database shares the slot names`,
    };
  }
  if (f.mine.has(key('slot', name))) return { state: 'ours' };
  if (f.claimedBy.length > 0) {
    return {
      state: 'foreign',
      suggest: 'slot',
      problem:
        `replication slot "${name}" belongs to this database, but to the relay of schema ${f.claimedBy.join(', ')} ` +
        `(${f.claimedBy.map((o) => `${o}.${OWNED_TABLE}`).join(', ')} records it; ${usage}), not to this relay (schema ${schema})`,
    };
  }
  if (f.streamedByUs) return { state: 'adoptable', proof: `${schema}.relay_state shows this relay streamed from it` };
  if (f.streamedBy.length > 0) {
    return {
      state: 'foreign',
      suggest: 'slot',
      problem:
        `replication slot "${name}" belongs to this database, but the relay of schema ${f.streamedBy.join(', ')} streams from it ` +
        `(its relay_state has the slot's row; ${usage}), not this relay (schema ${schema})`,
    };
  }
  const noSlotRecorded = ![...f.mine].some((k) => k.startsWith('slot:'));
  if (noSlotRecorded && f.outbox.ours) {
    return {
      state: 'adoptable',
      proof: `this relay's publication ${f.outbox.name} publishes ${schema}.outbox and no other relay schema of the database claims the slot`,
    };
  }
  return {
    state: 'foreign',
    suggest: 'slot',
    problem:
      `replication slot "${name}" belongs to this database (${database}), but this relay (schema ${schema}) did not create it: ` +
      `${f.recorded ? `${schema}.${OWNED_TABLE} has no record of it` : `schema ${schema} has no record of it`} and this relay never ` +
      `streamed from it (${usage}); another service or tool of this database uses that name`,
  };
}

/** Every object of the report that is someone else's. */
function foreignObjects(report: OwnershipReport): { name: string; problem: string; suggest: 'slot' | 'publication' }[] {
  const out: { name: string; problem: string; suggest: 'slot' | 'publication' }[] = [];
  if (report.slot?.ownership.state === 'foreign') out.push({ name: report.slot.name, ...report.slot.ownership });
  for (const p of report.publications) if (p.ownership.state === 'foreign') out.push({ name: p.name, ...p.ownership });
  return out;
}

/** Existing objects that are this relay's by proof but not recorded yet. */
export function adoptableObjects(report: OwnershipReport): { kind: ObjectKind; name: string; proof: string }[] {
  const out: { kind: ObjectKind; name: string; proof: string }[] = [];
  if (report.slot?.ownership.state === 'adoptable') out.push({ kind: 'slot', name: report.slot.name, proof: report.slot.ownership.proof });
  for (const p of report.publications) {
    if (p.ownership.state === 'adoptable') out.push({ kind: 'publication', name: p.name, proof: p.ownership.proof });
  }
  return out;
}

/** A PostgreSQL name from `base` and a suffix, lower case, within 63 characters (`max`). */
function suggestedName(base: string, suffix: string, max = 63): string {
  const clean = suffix
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .replace(/^_+|_+$/g, '');
  return `${base}_${clean || 'service'}`.slice(0, max);
}

export type OwnershipCommand = 'migrate' | 'run' | 'teardown' | 'reconcile' | 'check';

/** What is someone else's, and what to do about it, or null when nothing is. */
function ownershipProblems(
  report: OwnershipReport,
  command: OwnershipCommand,
  config: Config,
): { problems: string[]; todo: string } | null {
  const foreign = foreignObjects(report);
  if (foreign.length === 0) return null;
  // a slot of another database: this service's database names the new one; otherwise its schema does
  const slotElsewhere = report.slot?.stats.database != null && report.slot.stats.database !== report.database;
  const suffix = slotElsewhere || report.schema === 'fraiseql_relay' ? report.database : report.schema;
  const settings: string[] = [];
  if (foreign.some((f) => f.suggest === 'slot')) settings.push(`slot = "${suggestedName(config.relay.slot, suffix)}"`);
  if (foreign.some((f) => f.suggest === 'publication')) {
    settings.push(`publication = "${suggestedName(config.relay.publication, suffix, 63 - '_outbox'.length)}"`);
  }
  const rename =
    `give this service names of its own in [relay] (${settings.join(', ')}; slot names must be unique in the whole ` +
    `PostgreSQL cluster, publication names in the database), then run \`fraiseql-relay migrate\``;
  const todo: Record<OwnershipCommand, string> = {
    migrate: `${rename}.`,
    run: `${rename} and start the relay again.`,
    check: `${rename}.`,
    teardown:
      `teardown drops only this relay's own slot and publications, and leaves the other owner's alone. If this service's are ` +
      `under other names, set [relay] slot and publication to them; if it has none, there is nothing to tear down.`,
    reconcile:
      `reconcile recreates only this relay's own slot. If this service's slot has another name, set [relay] slot to it; ` +
      `otherwise ${rename}.`,
  };
  return { problems: foreign.map((f) => f.problem), todo: todo[command] };
}

/**
 * The refusal for a command that would act on someone else's slot or publication (a UsageError:
 * exit 2, nothing changed), or null when everything it acts on is absent or this relay's.
 */
function ownershipError(report: OwnershipReport, command: OwnershipCommand, config: Config): UsageError | null {
  const p = ownershipProblems(report, command, config);
  if (!p) return null;
  return new UsageError(
    `${command} refused: ${p.problems.length === 1 ? 'a replication object it would act on is' : 'replication objects it would act on are'} ` +
      `not this relay's (database "${report.database}", schema ${report.schema}):\n` +
      p.problems.map((problem) => `  - ${problem}.\n`).join('') +
      `  What to do: ${p.todo} Nothing was changed.`,
  );
}

/**
 * fraiseql-relay 0.1's slot (`fraiseql_relay`, every service's default then) as this relay sees it
 * when its configuration derives the slot name: the configuration with the 0.1 names (the
 * publication too, unless `[relay] publication` is written), and whether this relay has streamed
 * from the derived slot yet. Null when that slot is not this relay's: it does not exist, belongs to
 * another database, or another relay (schema) of this database, or a tool, owns it.
 */
export interface LegacySlot {
  /** the configuration with slot (and, when derived, publication) `fraiseql_relay` */
  config: Config;
  /** the 0.1 slot */
  stats: SlotStats;
  /** the derived slot exists */
  derivedExists: boolean;
  /** this relay's relay_state has the derived slot's row: it streams from the derived slot (the move is done) */
  derivedStreamed: boolean;
}

export async function findLegacySlot(client: pg.Client, config: Config): Promise<LegacySlot | null> {
  const derived = config.relay.derivedNames;
  if (!derived?.slot || !needsSlot(config) || config.relay.slot === LEGACY_RELAY_NAME) return null;
  const stats = await readSlot(client, LEGACY_RELAY_NAME);
  if (!stats.exists || stats.slotType !== 'logical') return null;
  const legacy: Config = {
    ...config,
    relay: { ...config.relay, slot: LEGACY_RELAY_NAME, publication: derived.publication ? LEGACY_RELAY_NAME : config.relay.publication },
  };
  const report = await inspectOwnership(client, legacy, { slot: stats, publications: ['outbox'] });
  const state = report.slot?.ownership.state;
  if (state !== 'ours' && state !== 'adoptable') return null;
  const current = await readSlot(client, config.relay.slot);
  const s = quoteIdent(config.relay.schema);
  const streamed =
    current.exists &&
    (
      await client.query<{ ok: boolean }>(
        `SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND c.relname = 'relay_state' AND has_schema_privilege(n.oid, 'USAGE')
                           AND has_table_privilege(c.oid, 'SELECT')) AS ok`,
        [config.relay.schema],
      )
    ).rows[0]?.ok === true &&
    (await client.query<{ ok: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${s}.relay_state WHERE slot = $1) AS ok`, [config.relay.slot]))
      .rows[0]?.ok === true;
  return { config: legacy, stats, derivedExists: current.exists, derivedStreamed: streamed };
}

/** Connects, looks, and throws the refusal when `command` would act on someone else's slot or publications. */
export async function assertOwnership(
  client: pg.Client,
  config: Config,
  command: OwnershipCommand,
  scope: OwnershipScope,
): Promise<OwnershipReport> {
  if (command === 'teardown' || command === 'reconcile') {
    // an installation from 0.1 still streams from slot fraiseql_relay, not from the derived name the
    // command was given: it must not report "nothing to drop" nor create a new slot
    const legacy = await findLegacySlot(client, config);
    if (legacy && !legacy.derivedStreamed) {
      const { slot, publication } = legacy.config.relay;
      throw new UsageError(
        `${command} refused: this relay still streams from fraiseql-relay 0.1's replication slot "${slot}" (this relay's, in database ` +
          `"${legacy.stats.database}"), not from "${config.relay.slot}", the default name derived from ${config.relay.derivedNames!.from}; ` +
          `${command} acts only on the names the configuration gives.\n  What to do: to ${command} the 0.1 slot, write its names under [relay] ` +
          `(slot = "${slot}", publication = "${publication}") and run ${command} again; to move to the new names first, see ` +
          `README "Slot and publication names". Nothing was changed.`,
      );
    }
  }
  const report = await inspectOwnership(client, config, scope);
  const err = ownershipError(report, command, config);
  if (err) throw err;
  return report;
}

/** The statement that records `name` as this relay's (idempotent). */
export function recordOwnedSql(schema: string, kind: ObjectKind, name: string, origin: 'created' | 'adopted'): string {
  return (
    `INSERT INTO ${quoteIdent(schema)}.${OWNED_TABLE} (kind, name, origin) VALUES (${quoteLiteral(kind)}, ${quoteLiteral(name)}, ${quoteLiteral(origin)}) ` +
    `ON CONFLICT (kind, name) DO NOTHING`
  );
}

/** Whether this relay's schema has its ownership record (migration 007 applied). */
export async function hasOwnedTable(client: pg.Client, schema: string): Promise<boolean> {
  const r = await client.query<{ ok: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r') AS ok`,
    [schema, OWNED_TABLE],
  );
  return r.rows[0]?.ok === true;
}

/**
 * `run`'s check before it touches anything: the slot it would stream from and the publications it
 * would stream must be this relay's (an adoptable one of an installation from before sql/007 is
 * accepted as it stands; `migrate` records it). Throws the refusal (a UsageError, exit 2).
 */
export async function assertRunOwnership(config: Config): Promise<void> {
  if (!needsSlot(config)) return;
  await withClient(config.database.url, (c) =>
    assertOwnership(c, config, 'run', {
      slot: true,
      publications: config.observers.rules.length > 0 ? ['outbox', 'tables'] : ['outbox'],
    }),
  );
}

/** `check`'s lines: FAIL for what migrate, run, teardown and reconcile would refuse, warn for what migrate adopts. */
export function ownershipProbes(
  report: OwnershipReport,
  config: Config,
): { what: string; status: 'ok' | 'warn' | 'fail'; detail: string }[] {
  const p = ownershipProblems(report, 'check', config);
  if (p) return [{ what: 'ownership', status: 'fail', detail: `${p.problems.join('; ')}. What to do: ${p.todo}` }];
  const adopt = adoptableObjects(report);
  if (adopt.length > 0) {
    return [
      {
        what: 'ownership',
        status: 'warn',
        detail:
          `${adopt.map((a) => `${a.kind} ${a.name} (${a.proof})`).join('; ')}: this relay's, created before ownership was recorded; ` +
          `run fraiseql-relay migrate to record ${adopt.length === 1 ? 'it' : 'them'}`,
      },
    ];
  }
  const present = [...(report.slot?.ownership.state === 'ours' ? [`slot ${report.slot.name}`] : [])].concat(
    report.publications.filter((p) => p.ownership.state === 'ours').map((p) => `publication ${p.name}`),
  );
  return present.length > 0
    ? [{ what: 'ownership', status: 'ok', detail: `${present.join(', ')}: recorded as this relay's in ${report.schema}.${OWNED_TABLE}` }]
    : [];
}

/**
 * Which replication slot and publications this relay uses, and whether the database is ready for
 * `run`.
 *
 * `[relay] slot` and `publication` default to names derived from the service and the database
 * (config/service.ts): `fraiseql_relay_<service>`, or `fraiseql_relay_<service>_<database>` when the
 * service name is `[project] name`. fraiseql-relay 0.1 named every service's slot and publication
 * `fraiseql_relay`. An installation from then must not silently switch to a new, empty slot (the
 * events its old slot still holds would never be published), so a relay whose configuration
 * derives its names keeps 0.1's slot (and publications) as long as that slot
 *
 *   - exists, is a logical slot of this database and is this relay's (recorded in
 *     `<schema>.owned_objects`, or adoptable: see ownership.ts), and
 *   - this relay has not streamed from the derived slot yet (`<schema>.relay_state` has no row for it).
 *
 * `migrate`, `run` and `check` use these names and say so; `teardown` and `reconcile` refuse
 * (ownership.ts assertOwnership). Names written in the file are always used as written.
 */
import type pg from 'pg';
import type { Config } from '../config/load.js';
import { quoteIdent } from '../util/db.js';
import { UsageError } from '../util/errors.js';
import { findLegacySlot, OWNED_TABLE } from './ownership.js';
import { loadMigrations, needsSlot, outboxPublication } from './plan.js';
import { goneSlotMessage, readSlot, slotRecord } from './slot.js';

export interface ResolvedNames {
  /** the configuration with the slot and publication this relay uses */
  config: Config;
  /**
   * `kept`: 0.1's slot `fraiseql_relay` is used instead of the derived name; `leftover`: the derived
   * slot is in use, and 0.1's slot, this relay's, still exists (it holds WAL); null: neither
   */
  legacy: { state: 'kept' | 'leftover'; slot: string; publication: string; derivedSlot: string; derivedPublication: string } | null;
  /** the slot in use exists */
  slotExists: boolean;
  /**
   * other slots of this database recorded as this relay's in `<schema>.owned_objects` (0.1's,
   * reported as `legacy`, aside): a slot it streamed from under another name, e.g. before the
   * service or the database was renamed (the derived name changed with it)
   */
  otherSlots: string[];
}

/**
 * Slots of this database, other than `except`, recorded as this relay's; [] when there is no
 * record this role may read (asked of the catalog first: an error would abort the READ ONLY
 * transaction of `migrate --dry-run`).
 */
async function recordedSlots(client: pg.Client, config: Config, except: string[]): Promise<string[]> {
  const readable = await client.query<{ ok: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'
                       AND has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')) AS ok`,
    [config.relay.schema, OWNED_TABLE],
  );
  if (readable.rows[0]?.ok !== true) return [];
  const r = await client.query<{ name: string }>(
    `SELECT o.name FROM ${quoteIdent(config.relay.schema)}.${OWNED_TABLE} o
       JOIN pg_replication_slots s ON s.slot_name = o.name AND s.database = current_database()
      WHERE o.kind = 'slot' AND NOT (o.name = ANY($1::text[])) ORDER BY 1`,
    [except],
  );
  return r.rows.map((row) => row.name);
}

/** The slot and publication names this relay uses (see the top of this file). Read-only. */
export async function resolveNames(client: pg.Client, config: Config): Promise<ResolvedNames> {
  const found = await findLegacySlot(client, config);
  let resolved: Omit<ResolvedNames, 'slotExists' | 'otherSlots'> = { config, legacy: null };
  if (found) {
    const legacy = {
      slot: found.config.relay.slot,
      publication: found.config.relay.publication,
      derivedSlot: config.relay.slot,
      derivedPublication: config.relay.publication,
    };
    resolved = found.derivedStreamed
      ? { config, legacy: { state: 'leftover', ...legacy } }
      : { config: found.config, legacy: { state: 'kept', ...legacy } };
  }
  const slot = resolved.config.relay.slot;
  if (!needsSlot(config)) return { ...resolved, slotExists: false, otherSlots: [] };
  return {
    ...resolved,
    slotExists: (await readSlot(client, slot)).exists,
    otherSlots: await recordedSlots(client, config, [slot, ...(resolved.legacy ? [resolved.legacy.slot] : [])]),
  };
}

/**
 * Why the derived slot must not be created now: it does not exist, and another slot of this
 * relay does, holding the events not yet published (the derived name changed, e.g. with the
 * service or database name). Null when creating it is fine.
 */
export function renamedSlotProblem(names: ResolvedNames): string | null {
  const relay = names.config.relay;
  if (!relay.derivedNames?.slot || names.slotExists || names.otherSlots.length === 0) return null;
  const others = names.otherSlots.map((s) => `"${s}"`).join(', ');
  return (
    `this relay's replication slot ${others} exists (recorded in ${relay.schema}.owned_objects), but the slot name derived from ` +
    `${relay.derivedNames.from} is now "${relay.slot}" (did the service or the database get another name?): a new slot would start ` +
    `empty while ${others} still holds the events not yet published.\n  What to do: keep streaming from it: write slot = ` +
    `"${names.otherSlots[0]}" and the publication it streams with (publication = "…", without _outbox) under [relay]; to move to ` +
    `the new name, follow README "Slot and publication names" (create it while the relay runs, advance it, drop the old slot)`
  );
}

/** The steps that move an installation from 0.1's names to the derived ones without losing or repeating an event. */
function moveSteps(l: NonNullable<ResolvedNames['legacy']>): string {
  return (
    `To move to the new names (optional): while the relay runs, \`fraiseql-relay migrate\` with slot = "${l.derivedSlot}" and ` +
    `publication = "${l.derivedPublication}" written under [relay] creates them; once the old slot has caught up ` +
    `(SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name IN ('${l.slot}', '${l.derivedSlot}'): the old one's is the larger), ` +
    `stop the relays, SELECT pg_replication_slot_advance('${l.derivedSlot}', confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = '${l.slot}', ` +
    `drop the old slot and publications (\`fraiseql-relay teardown --yes\` with slot = "${l.slot}" and publication = "${l.publication}" under [relay]), ` +
    `and start the relays with the names derived again (README "Slot and publication names")`
  );
}

/** What the log and `check` say about 0.1's names; null when there is nothing to say. */
export function legacyNotice(names: ResolvedNames): string | null {
  const l = names.legacy;
  if (!l) return null;
  if (l.state === 'kept') {
    return (
      `this installation was made by fraiseql-relay 0.1: it keeps streaming from its replication slot "${l.slot}" and publication ` +
      `"${l.publication}" (this relay's) instead of the default names "${l.derivedSlot}" / "${l.derivedPublication}", so that no event ` +
      `the old slot holds is lost. To keep them for good, write slot = "${l.slot}" and publication = "${l.publication}" under [relay]. ` +
      `${moveSteps(l)}.`
    );
  }
  return (
    `fraiseql-relay 0.1's replication slot "${l.slot}" of this relay still exists, but the relay streams from "${l.derivedSlot}": ` +
    `the old slot holds WAL for nothing. Drop it and its publications: \`fraiseql-relay teardown --yes\` with slot = "${l.slot}" and ` +
    `publication = "${l.publication}" written under [relay] (or SELECT pg_drop_replication_slot('${l.slot}'); DROP PUBLICATION ` +
    `${quoteIdent(`${l.publication}_outbox`)}, ${quoteIdent(`${l.publication}_tables`)})`
  );
}

/** `check`'s line about the slot and publication names. */
export function namesProbe(names: ResolvedNames): { what: string; status: 'ok' | 'warn' | 'fail'; detail: string } {
  const relay = names.config.relay;
  const renamed = renamedSlotProblem(names);
  if (renamed) return { what: 'names', status: 'fail', detail: renamed.replace('\n  What to do:', ' What to do:') };
  const notice = legacyNotice(names);
  if (notice) return { what: 'names', status: 'warn', detail: notice };
  if (names.otherSlots.length > 0) {
    return {
      what: 'names',
      status: 'warn',
      detail:
        `slot ${relay.slot}, publication ${relay.publication}; this relay's other slot ${names.otherSlots.join(', ')} (recorded in ` +
        `${relay.schema}.owned_objects) also exists and holds WAL: once nothing streams from it, drop it (fraiseql-relay teardown ` +
        `--yes with its names under [relay])`,
    };
  }
  const derived = relay.derivedNames;
  const how =
    derived?.slot && derived.publication
      ? `the defaults, derived from ${derived.from}`
      : derived?.slot
        ? `slot derived from ${derived.from}, publication from [relay] publication`
        : derived?.publication
          ? `slot from [relay] slot, publication derived from ${derived.from}`
          : 'as written under [relay]';
  return { what: 'names', status: 'ok', detail: `slot ${relay.slot}, publication ${relay.publication} (${how})` };
}

/**
 * `run`'s check that `migrate` has run against this database: the relay's schema exists and,
 * when the relay streams outbound, its outbox publication and its slot. Otherwise a UsageError
 * (exit 2) saying to run `migrate` first: nothing to wait for, since only `migrate` creates them.
 * Returns a warning when the schema lacks migrations this version has (`migrate` applies them).
 */
export async function assertMigrated(client: pg.Client, names: ResolvedNames): Promise<string | null> {
  const { config } = names;
  const { schema, slot } = config.relay;
  const renamed = renamedSlotProblem(names);
  if (renamed) throw new UsageError(`run refused: ${renamed}. Nothing was changed.`);
  const db = (await client.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
  const has = (
    await client.query<{ migrations: boolean; publication: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = $1 AND c.relname = 'migrations') AS migrations,
              EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2) AS publication`,
      [schema, outboxPublication(config)],
    )
  ).rows[0]!;
  const missing: string[] = [];
  if (!has.migrations) missing.push(`the relay's schema ${schema} does not exist`);
  if (needsSlot(config)) {
    if (!has.publication) missing.push(`publication ${outboxPublication(config)} does not exist`);
    if (!names.slotExists) missing.push(`replication slot "${slot}" does not exist`);
  }
  if (has.migrations && needsSlot(config) && !names.slotExists) {
    // streamed from before and gone (a failover without a synchronized copy): migrate would create it empty
    const rec = await slotRecord(client, schema, slot);
    if (rec) throw new UsageError(`run refused: ${goneSlotMessage(slot, rec)} Nothing was changed.`);
  }
  if (missing.length > 0) {
    throw new UsageError(
      `run refused: database "${db}" is not migrated for this relay: ${missing.join(', ')}.\n` +
        `  What to do: run \`fraiseql-relay migrate\` first (with the same configuration; it is idempotent and takes an advisory lock), ` +
        `or start the relay with \`fraiseql-relay run --migrate\`, which runs it before starting. Nothing was changed.`,
    );
  }
  try {
    const applied = new Set(
      (await client.query<{ id: number }>(`SELECT id FROM ${quoteIdent(schema)}.migrations`)).rows.map((r) => Number(r.id)),
    );
    const pending = loadMigrations(schema).filter((m) => !applied.has(m.id));
    return pending.length === 0
      ? null
      : `schema ${schema} lacks migrations ${pending.map((m) => m.name).join(', ')}: run \`fraiseql-relay migrate\``;
  } catch {
    return null; // this role may not read the record; `check` says more
  }
}

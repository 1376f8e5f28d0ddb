/**
 * START_REPLICATION options per logical decoding output plugin, and the decoder that reads them.
 *
 * pgoutput filters by publication. wal2json ignores publications, so the relay gives it the very
 * tables and operations its publications hold (`add-tables`, `actions`): both plugins then stream
 * the same changes, and `migrate` stays the one place that decides what is published.
 */
import type { Decoder, PluginName } from './decoder.js';
import { PgoutputDecoder } from './pgoutput.js';
import { Wal2JsonDecoder } from './wal2json.js';

/**
 * The decoder for a plugin. wal2json's is told what pgoutput's Relation messages would have said
 * about the streamed tables (replica identity, generated columns), when the connection read it.
 */
export function createDecoder(plugin: PluginName, tables: readonly StreamedTable[] = []): Decoder {
  return plugin === 'wal2json' ? new Wal2JsonDecoder(tables) : new PgoutputDecoder();
}

interface QualifiedTable {
  schema: string;
  name: string;
}

/** A table a wal2json stream carries, with the catalog facts pgoutput would announce. */
export interface StreamedTable extends QualifiedTable {
  /** pg_class.relreplident: d default, f full, i index, n nothing */
  replicaIdentity: string;
  /** replica identity key columns (primary key, or the identity index); empty for 'f'/'n' */
  keys: string[];
  /** stored generated columns, which pgoutput (PostgreSQL ≤ 17) leaves out and wal2json sends */
  generated: string[];
}

export interface Wal2JsonStreamOptions {
  /** exactly the tables to stream */
  tables: StreamedTable[];
  /** the row operations to stream */
  actions: ('insert' | 'update' | 'delete')[];
  /** wal2json ≥ 2.6: numbers, NaN and ±Infinity as strings (older versions write NaN as null) */
  numericAsString: boolean;
}

/**
 * One name part for wal2json's `add-tables`: a backslash before every character its list parser
 * treats specially (`,` between tables, `.` between schema and table, `*` as a wildcard,
 * whitespace as a separator, and the backslash itself).
 */
export function escapeWal2JsonName(part: string): string {
  return part.replace(/[\\,.*\s']/g, (c) => `\\${c}`);
}

/** `add-tables` value: `schema.table,…` with every name part escaped. */
function wal2jsonTableList(tables: readonly QualifiedTable[]): string {
  return tables.map((t) => `${escapeWal2JsonName(t.schema)}.${escapeWal2JsonName(t.name)}`).join(',');
}

/** A string literal for the replication command grammar (only `'` needs doubling there). */
function replLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

function replIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

/** The wal2json options that make its stream lossless and shaped like pgoutput's. */
export function wal2jsonOptions(o: Wal2JsonStreamOptions): [string, string][] {
  const opts: [string, string][] = [
    ['format-version', '2'],
    ['include-transaction', 'true'],
    ['include-lsn', 'true'],
    ['include-xids', 'true'],
    ['include-timestamp', 'true'],
    ['include-types', 'false'],
    ['include-type-oids', 'true'],
    ['include-pk', 'true'],
  ];
  if (o.numericAsString) opts.push(['numeric-data-types-as-string', 'true']);
  opts.push(['actions', o.actions.join(',')]);
  opts.push(['add-tables', wal2jsonTableList(o.tables)]);
  return opts;
}

export type StartOptions = { plugin: 'pgoutput'; publications: string[] } | ({ plugin: 'wal2json' } & Wal2JsonStreamOptions);

/** `START_REPLICATION SLOT … LOGICAL 0/0 (…)`: always from the slot's confirmed position. */
export function startReplicationSql(slot: string, o: StartOptions): string {
  let options: string;
  if (o.plugin === 'wal2json') {
    options = wal2jsonOptions(o)
      .map(([k, v]) => `${replIdent(k)} ${replLiteral(v)}`)
      .join(', ');
  } else {
    const pubs = o.publications.map(replIdent).join(',');
    options = `proto_version '1', publication_names ${replLiteral(pubs)}, messages 'true'`;
  }
  return `START_REPLICATION SLOT ${replIdent(slot)} LOGICAL 0/0 (${options})`;
}

import type { Relation, Tuple, TupleValue } from '../source/types.js';
import type { OutboundMessage } from '../sink/sink.js';

/** One row change as the source decoded it, in the shape every router reads. */
export interface RowChange {
  op: 'INSERT' | 'UPDATE' | 'DELETE';
  relation: Relation;
  /** the new row (INSERT, UPDATE); null for DELETE */
  newTuple: Tuple | null;
  /** the old row (UPDATE, DELETE) when the replica identity sends one: whole, or only its key columns */
  oldTuple: Tuple | null;
  /** `oldTuple` holds only the replica identity key columns (or nothing was sent for an UPDATE) */
  oldIsKey: boolean;
  /** the change's WAL position as PostgreSQL prints it ("0/16B3748") */
  lsn: string;
  xid: number;
  /** commit timestamp of the transaction, µs since 2000-01-01 */
  commitTime: bigint;
}

export interface RouteResult {
  readonly messages: readonly OutboundMessage[];
  /** the event was read but no rule routes it (acknowledged and counted, not published) */
  unrouted: boolean;
}

/** A change this router does not handle at all (neither published nor counted as unrouted). */
export const IGNORED: RouteResult = Object.freeze({ messages: Object.freeze([]), unrouted: false });
/** A change no rule routes. */
export const UNROUTED: RouteResult = Object.freeze({ messages: Object.freeze([]), unrouted: true });

/** Turns the changes of the relations it watches into messages. */
export interface Router {
  route(change: RowChange): RouteResult;
  /**
   * Called before each change of `relation` is routed. A promise when the router must first read
   * something (a column type from the catalog): the stream waits for it, so nothing is reordered.
   */
  prepare?(relation: Relation): Promise<void> | undefined;
}

/** The router for a relation's changes, or null when nothing watches it. */
export type RouterFor = (relation: Relation) => Router | null;

/** A tuple as a record by column name (for routers that are not on the hot path). */
export function tupleRecord(relation: Relation, t: readonly TupleValue[]): Record<string, TupleValue> {
  const out: Record<string, TupleValue> = {};
  const cols = relation.columns;
  for (let i = 0; i < cols.length; i++) out[cols[i]!.name] = t[i];
  return out;
}

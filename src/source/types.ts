/** What the source hands on: decoded replication messages, relations and tuples as text. */

/** A PostgreSQL log sequence number as an unsigned 64-bit integer. */
export type Lsn = bigint;

/** One column of a relation as announced by a pgoutput Relation message. */
export interface RelationColumn {
  /** bit 1 = part of the replica identity key */
  flags: number;
  name: string;
  typeOid: number;
  typeMod: number;
}

export interface Relation {
  id: number;
  schema: string;
  name: string;
  /** 'd' default, 'n' nothing, 'f' full, 'i' index */
  replicaIdentity: string;
  columns: RelationColumn[];
}

/**
 * A tuple's values in text form, exactly as PostgreSQL's output functions wrote them
 * (jsonb and timestamps are never re-parsed). `null` is SQL NULL; `undefined` is an
 * unchanged TOASTed value that pgoutput did not send.
 */
export type TupleValue = string | null | undefined;
export type Tuple = TupleValue[];

export type PgoutputMessage =
  | { tag: 'begin'; finalLsn: Lsn; commitTime: bigint; xid: number }
  | { tag: 'commit'; flags: number; commitLsn: Lsn; endLsn: Lsn; commitTime: bigint }
  | { tag: 'origin'; originLsn: Lsn; name: string }
  | { tag: 'relation'; relation: Relation }
  | { tag: 'type'; typeOid: number; schema: string; name: string }
  | { tag: 'insert'; relationId: number; newTuple: Tuple }
  | { tag: 'update'; relationId: number; keyTuple: Tuple | null; oldTuple: Tuple | null; newTuple: Tuple }
  | { tag: 'delete'; relationId: number; keyTuple: Tuple | null; oldTuple: Tuple | null }
  | { tag: 'truncate'; options: number; relationIds: number[] }
  | { tag: 'message'; transactional: boolean; lsn: Lsn; prefix: string; content: Buffer }
  /** any tag the decoder does not know: ignored by the pipeline, never a crash */
  | { tag: 'unknown'; byte: number };

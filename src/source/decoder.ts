import type { PgoutputMessage, Relation } from './types.js';

/**
 * What the outbound pipeline needs from a logical decoding output plugin's decoder: one
 * replication message in, one message of the pgoutput-shaped union out, and the relation a
 * change refers to. Decoders never throw on message kinds they do not know (`{ tag: 'unknown' }`);
 * malformed input throws a typed error.
 */
export interface Decoder {
  decode(buf: Buffer): PgoutputMessage;
  /** the relation a change's `relationId` refers to */
  relation(id: number): Relation | undefined;
}

/** Logical decoding output plugins the relay can read (`[relay] plugin`). */
export type PluginName = 'pgoutput' | 'wal2json';

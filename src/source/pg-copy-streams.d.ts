// Minimal typing for the part of pg-copy-streams the relay uses (COPY BOTH for replication).
declare module 'pg-copy-streams' {
  import type { Duplex, DuplexOptions } from 'node:stream';
  import type { Submittable, Connection } from 'pg';
  export interface CopyBothOptions extends DuplexOptions {
    /** push exactly one CopyData payload per readable chunk */
    alignOnCopyDataFrame?: boolean;
  }
  export class CopyBothQueryStream extends Duplex implements Submittable {
    text: string;
    submit(connection: Connection): void;
  }
  export function both(txt: string, options?: CopyBothOptions): CopyBothQueryStream;
}

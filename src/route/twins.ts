/**
 * One event per mutation when a mutation function calls emit_mutation() and FraiseQL's executor also
 * writes its change-log row. Both rows are in the mutation's transaction, and the outbox row comes
 * first: the executor runs the function (whose emit_mutation INSERTs the outbox row) inside the CTE
 * whose next step INSERTs the change-log row, and logical decoding delivers a transaction's changes
 * in the order they were made. So the OutboxRouter records each emit_mutation row of the current
 * transaction here, and the ChangeLogRouter asks for the twin of each change-log row FraiseQL's
 * executor wrote: the outbox event wins (it has the mutation's name, metadata, tenant and user), and
 * the change-log row is not published again on the subjects the outbox event went to.
 */

/** An emit_mutation event of the current transaction. */
export interface MutationClaim {
  /** the outbox row's id: the event id */
  eventId: string;
  mutation: string;
  entityType: string | null;
  /** lower-case */
  entityId: string | null;
  operation: string;
  /** every subject the outbox event was published to (none when no entry routes it) */
  subjects: readonly string[];
}

/**
 * The twin is the newest matching claim (the top-level function's `RETURN emit_mutation(…)` is the
 * last thing before the executor's change-log INSERT); older ones are emit_mutation calls of nested
 * functions. Keeping the newest few bounds memory for a transaction of many emits.
 */
const MAX_CLAIMS = 64;

const compatible = (a: string, b: string) => a === b || a === 'CUSTOM' || b === 'CUSTOM';

/** Per-transaction emit_mutation events, shared by the outbox and change-log routers of one relay. */
export class MutationTwins {
  private xid = Number.NaN;
  private claims: MutationClaim[] = [];

  /** Records an emit_mutation outbox row of transaction `xid`. */
  claim(xid: number, c: MutationClaim): void {
    this.enter(xid);
    if (this.claims.length === MAX_CLAIMS) this.claims.shift();
    this.claims.push(c);
  }

  /**
   * The emit_mutation event a change-log row written by FraiseQL's executor (not its capture
   * trigger) in transaction `xid` duplicates, or null. Same entity id (both may be null), the
   * outbox event's entity type when it has one, and the same operation (CUSTOM is compatible with
   * any: FraiseQL's operation kind defaults to Custom while emit_mutation infers one from the name).
   * A later change-log row in the transaction belongs to a later statement, whose emit_mutation
   * comes after this row, so the claims are cleared.
   */
  take(xid: number, objectType: string, objectId: string | null, operation: string): MutationClaim | null {
    this.enter(xid);
    const id = objectId === null ? null : objectId.toLowerCase();
    let twin: MutationClaim | null = null;
    for (let i = this.claims.length - 1; i >= 0; i--) {
      const c = this.claims[i]!;
      if (c.entityId === id && (c.entityType === null || c.entityType === objectType) && compatible(c.operation, operation)) {
        twin = c;
        break;
      }
    }
    this.claims = [];
    return twin;
  }

  /** Claims belong to one transaction: a change of another one starts afresh. */
  private enter(xid: number): void {
    if (xid !== this.xid) {
      this.xid = xid;
      this.claims = [];
    }
  }
}

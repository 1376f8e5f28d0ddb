/**
 * The watermark windows of backfill chunks, shared by the backfill runner (which reads chunks)
 * and the replication session (which streams changes): DBLog's technique, as Debezium's
 * incremental snapshots use it.
 *
 * For each chunk the runner writes a low watermark through the WAL (a transactional logical
 * message), reads the chunk, then writes a high watermark. The session notes the key of every
 * change of the table it streams between the two; at the high watermark it publishes the chunk's
 * rows as READ events, except those whose key changed in the window: the change itself, already
 * published in commit order, is at least as new as what the chunk read. Every row is thus
 * published at a point of the stream where its value is current, so a consumer that applies the
 * stream in order ends with the table's state, and nothing stale follows a newer change.
 *
 * One gap in the plain technique is closed too: a transaction whose commit record precedes the
 * low watermark may still be invisible to the chunk's snapshot (a commit is written to the WAL a
 * moment before it becomes visible). The runner hands over the xids the snapshot saw as running,
 * and keys those transactions changed just before the low watermark are dropped as well.
 */
import type { Relation, Tuple } from '../source/types.js';
import type { OutboundMessage } from '../sink/sink.js';

/** The logical-message prefix of the watermarks. */
export const BACKFILL_PREFIX = 'fraiseql-relay/backfill';

/** How many recent changes of a backfilled table are kept for the snapshot-visibility check. */
const RECENT = 4096;

/** Where the high watermark is in the stream: READ events carry it as their position. */
export interface MarkerPoint {
  lsn: string;
  xid: number;
  /** the high watermark's commit time, µs since 2000-01-01 */
  commitTime: bigint;
}

/** One row a chunk read: the key columns' text (as JSON) and every streamed column's text. */
export interface ChunkRow {
  key: string;
  tuple: Tuple;
}

export interface ChunkOutcome {
  /** rows published as READ events */
  published: number;
  /** rows left out because a change of theirs came in the window (the change was published) */
  skipped: number;
}

/** What the runner hands over once a chunk is read. */
interface Chunk {
  rows: readonly ChunkRow[];
  /** low 32 bits of the xids the chunk's snapshot saw as running */
  running: ReadonlySet<number>;
  /** the READ messages of the rows that survive */
  build(rows: readonly ChunkRow[], at: MarkerPoint): OutboundMessage[];
}

/** The window could not be followed whole (the session ended): read the chunk again. */
export class WindowLostError extends Error {}

/** Something that settles when the transaction carrying the high watermark is durable. */
export interface DurableHook {
  whenDurable: (() => void) | null;
}

interface Change {
  xid: number;
  key: string;
}

class Table {
  /** relation ▶ positions of the key columns in its tuples (null: a key column is missing) */
  private readonly keyIndexes = new WeakMap<Relation, number[] | null>();
  private readonly recent: Change[] = [];
  private next = 0;
  readonly open = new Set<Window>();

  constructor(readonly keyColumns: readonly string[]) {}

  note(rel: Relation, tuples: (Tuple | null)[], xid: number): void {
    let idx = this.keyIndexes.get(rel);
    if (idx === undefined) {
      const found = this.keyColumns.map((k) => rel.columns.findIndex((c) => c.name === k));
      idx = found.includes(-1) ? null : found;
      this.keyIndexes.set(rel, idx);
    }
    if (idx === null) return;
    for (const t of tuples) {
      if (t === null) continue;
      const key = keyOf(t, idx);
      const c = { xid, key };
      if (this.recent.length < RECENT) this.recent.push(c);
      else this.recent[this.next] = c;
      this.next = (this.next + 1) % RECENT;
      for (const w of this.open) w.changed.add(key);
    }
  }

  /** The recent changes, oldest first. */
  snapshot(): Change[] {
    return this.recent.length < RECENT ? this.recent.slice() : [...this.recent.slice(this.next), ...this.recent.slice(0, this.next)];
  }
}

/** The key text of a tuple: its key columns' values as a JSON array (the same for a chunk row). */
export function keyOf(t: Tuple, idx: readonly number[]): string {
  return JSON.stringify(idx.map((i) => t[i] ?? null));
}

class Window {
  /** the session epoch the low watermark was seen in (null: not yet) */
  epoch: number | null = null;
  readonly changed = new Set<string>();
  before: Change[] = [];
  chunk: Chunk | null = null;
  resolve!: (o: ChunkOutcome) => void;
  reject!: (err: Error) => void;
  readonly settled: Promise<ChunkOutcome>;

  constructor(
    readonly id: string,
    readonly table: Table,
  ) {
    this.settled = new Promise<ChunkOutcome>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    this.settled.catch(() => {});
  }
}

/** A chunk's window as the runner sees it. */
export interface WindowHandle {
  readonly id: string;
  /** the chunk was read: hand its rows over (before the high watermark is written) */
  attach(chunk: Chunk): void;
  /** resolves when the chunk's READ events are durable; rejects with WindowLostError when it must be read again */
  readonly settled: Promise<ChunkOutcome>;
  /** the runner gives up on it */
  drop(): void;
}

export class BackfillWindows {
  private readonly tables = new Map<string, Table>();
  private readonly windows = new Map<string, Window>();
  /** high watermark seen, READ events on their way */
  private readonly publishing = new Set<Window>();
  private epoch = 0;

  /** True while some table is being backfilled (the session's fast path asks this first). */
  get active(): boolean {
    return this.tables.size > 0;
  }

  /** Starts noting the changes of a table (before its first chunk's low watermark). */
  track(schema: string, name: string, keyColumns: readonly string[]): void {
    const k = `${schema}\u0000${name}`;
    if (!this.tables.has(k)) this.tables.set(k, new Table(keyColumns));
  }

  untrack(schema: string, name: string): void {
    this.tables.delete(`${schema}\u0000${name}`);
  }

  /** A change the session streamed: note its key(s) if its table is being backfilled. */
  noteChange(rel: Relation, newTuple: Tuple | null, oldTuple: Tuple | null, xid: number): void {
    const t = this.tables.get(`${rel.schema}\u0000${rel.name}`);
    if (t !== undefined) t.note(rel, [newTuple, oldTuple], xid);
  }

  /** A new window for a chunk of a tracked table; its id goes into both watermarks. */
  open(id: string, schema: string, name: string): WindowHandle {
    const t = this.tables.get(`${schema}\u0000${name}`);
    if (t === undefined) throw new Error(`backfill window for untracked table ${schema}.${name}`);
    const w = new Window(id, t);
    this.windows.set(id, w);
    return {
      id,
      attach: (chunk) => {
        w.chunk = chunk;
      },
      settled: w.settled,
      drop: () => this.forget(w),
    };
  }

  /**
   * A backfill watermark the session read, inside the transaction `ticket` (at `at`). Returns the
   * READ messages to publish at a high watermark, in that transaction; null otherwise (a low
   * watermark, or one of a window this process no longer follows).
   */
  marker(content: Buffer, ticket: DurableHook, at: MarkerPoint): OutboundMessage[] | null {
    const m = parseMarker(content);
    const w = m === null ? undefined : this.windows.get(m.window);
    if (m === null || w === undefined) return null;
    if (m.kind === 'low') {
      w.epoch = this.epoch;
      w.before = w.table.snapshot();
      w.table.open.add(w);
      return null;
    }
    this.forget(w);
    const chunk = w.chunk;
    if (w.epoch !== this.epoch || chunk === null) {
      w.reject(new WindowLostError(`backfill window ${w.id} was not streamed whole by one session`));
      return null;
    }
    // keys the chunk's snapshot could not see the change of, though it was committed just before the low watermark
    for (const c of w.before) if (chunk.running.has(c.xid)) w.changed.add(c.key);
    const rows = w.changed.size === 0 ? chunk.rows : chunk.rows.filter((r) => !w.changed.has(r.key));
    const outcome: ChunkOutcome = { published: rows.length, skipped: chunk.rows.length - rows.length };
    const messages = chunk.build(rows, at);
    // the window is done with its rows: the READ messages carry what is needed from here on
    w.chunk = null;
    w.before = [];
    w.changed.clear();
    this.publishing.add(w);
    ticket.whenDurable = () => {
      this.publishing.delete(w);
      w.resolve(outcome);
    };
    return messages;
  }

  /** The session ended: every window it was following must be read again. */
  sessionEnded(): void {
    this.epoch++;
    const lost = [...this.windows.values(), ...this.publishing];
    this.windows.clear();
    this.publishing.clear();
    for (const w of lost) {
      w.table.open.delete(w);
      w.reject(new WindowLostError(`the replication session ended while backfill window ${w.id} was open`));
    }
  }

  private forget(w: Window): void {
    this.windows.delete(w.id);
    w.table.open.delete(w);
  }
}

export function markerContent(kind: 'low' | 'high', window: string): string {
  return JSON.stringify({ k: kind, w: window });
}

function parseMarker(content: Buffer): { kind: 'low' | 'high'; window: string } | null {
  try {
    const v = JSON.parse(content.toString('utf8')) as { k?: unknown; w?: unknown };
    if ((v.k === 'low' || v.k === 'high') && typeof v.w === 'string') return { kind: v.k, window: v.w };
  } catch {
    // not ours
  }
  return null;
}

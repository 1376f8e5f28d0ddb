/**
 * The watermark windows on their own: which chunk rows survive to the high watermark, and when a
 * window must be read again. (test/backfill.test.ts proves the whole against real servers.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BackfillWindows, WindowLostError, markerContent, type ChunkRow, type DurableHook } from '../src/backfill/windows.js';
import { runningXids } from '../src/backfill/chunk.js';
import type { Relation } from '../src/source/types.js';

const rel: Relation = {
  id: 1,
  schema: 'public',
  name: 'tb_item',
  replicaIdentity: 'd',
  columns: [
    { name: 'id', typeOid: 23, typeMod: -1, flags: 1 },
    { name: 'v', typeOid: 23, typeMod: -1, flags: 0 },
  ],
};
const row = (id: number, v = 0): ChunkRow => ({ key: JSON.stringify([String(id)]), tuple: [String(id), String(v)] });
const at = { lsn: '0/10', xid: 9, commitTime: 0n };
const mark = (kind: 'low' | 'high', id: string) => Buffer.from(markerContent(kind, id));

function setup(): { w: BackfillWindows; built: ChunkRow[][] } {
  const w = new BackfillWindows();
  w.track('public', 'tb_item', ['id']);
  return { w, built: [] };
}

test('rows changed between the watermarks are left out; the others are published at the high watermark', async () => {
  const { w, built } = setup();
  w.noteChange(rel, ['1', '5'], null, 100); // before the window: the chunk sees it
  const h = w.open('a', 'public', 'tb_item');
  assert.equal(w.marker(mark('low', 'a'), { whenDurable: null }, at), null);
  w.noteChange(rel, ['2', '7'], null, 101); // UPDATE of 2
  w.noteChange(rel, null, ['3', null], 102); // DELETE of 3 (key-only old row)
  w.noteChange({ ...rel, name: 'tb_other' }, ['4', '1'], null, 103); // another table
  h.attach({ rows: [row(1), row(2), row(3), row(4)], running: new Set(), build: (rows) => (built.push([...rows]), []) });
  const ticket: DurableHook = { whenDurable: null };
  assert.deepEqual(w.marker(mark('high', 'a'), ticket, at), []);
  assert.deepEqual(
    built[0]!.map((r) => r.key),
    ['["1"]', '["4"]'],
  );
  ticket.whenDurable!();
  assert.deepEqual(await h.settled, { published: 2, skipped: 2 });
});

test("a change committed just before the low watermark but invisible to the chunk's snapshot is left out too", async () => {
  const { w, built } = setup();
  w.noteChange(rel, ['1', '5'], null, 500); // its transaction was still running for the snapshot
  w.noteChange(rel, ['2', '5'], null, 499); // visible to it
  const h = w.open('b', 'public', 'tb_item');
  w.marker(mark('low', 'b'), { whenDurable: null }, at);
  h.attach({ rows: [row(1), row(2)], running: new Set([500]), build: (rows) => (built.push([...rows]), []) });
  const ticket: DurableHook = { whenDurable: null };
  w.marker(mark('high', 'b'), ticket, at);
  assert.deepEqual(
    built[0]!.map((r) => r.key),
    ['["2"]'],
  );
  ticket.whenDurable!();
  assert.deepEqual(await h.settled, { published: 1, skipped: 1 });
});

test('a window not streamed whole by one session is read again; unknown markers are ignored', async () => {
  const { w } = setup();
  assert.equal(w.marker(mark('high', 'nobody'), { whenDurable: null }, at), null);
  assert.equal(w.marker(Buffer.from('not json'), { whenDurable: null }, at), null);

  // the session ends between the watermarks
  const a = w.open('a', 'public', 'tb_item');
  w.marker(mark('low', 'a'), { whenDurable: null }, at);
  w.sessionEnded();
  await assert.rejects(a.settled, WindowLostError);

  // a new session starts after the low watermark (it was confirmed): only the high one is seen
  const b = w.open('b', 'public', 'tb_item');
  w.marker(mark('low', 'b'), { whenDurable: null }, at);
  w.sessionEnded();
  await assert.rejects(b.settled, WindowLostError);
  const c = w.open('c', 'public', 'tb_item');
  c.attach({ rows: [row(1)], running: new Set(), build: () => [] });
  assert.equal(w.marker(mark('high', 'c'), { whenDurable: null }, at), null, 'no low watermark seen: nothing published');
  await assert.rejects(c.settled, WindowLostError);

  // READ events on their way when the session ends: not durable, read again
  const d = w.open('d', 'public', 'tb_item');
  w.marker(mark('low', 'd'), { whenDurable: null }, at);
  d.attach({ rows: [row(1)], running: new Set(), build: () => [] });
  w.marker(mark('high', 'd'), { whenDurable: null }, at);
  w.sessionEnded();
  await assert.rejects(d.settled, WindowLostError);
});

test("pg_current_snapshot's running xids, as the stream's 32-bit xids", () => {
  assert.deepEqual([...runningXids('100:104:100,102')], [100, 102]);
  assert.deepEqual([...runningXids('4294967396:4294967400:4294967397')], [101]);
  assert.deepEqual([...runningXids('5:5:')], []);
});

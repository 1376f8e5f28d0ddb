import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
// not re-exported from the package entry point; the package has no "exports" map, so a deep import works
import { PgoutputParser } from 'pg-logical-replication/dist/output-plugins/pgoutput/pgoutput-parser.js';

import { MAX_LSN, PG_EPOCH_OFFSET_MS, formatLsn, parseLsn, pgMicrosToIso, pgTimeToDate, unixMsToPgMicros } from '../src/source/lsn.js';
import { FrameDecodeError, parseFrame, standbyStatus } from '../src/source/frames.js';
import { PgoutputDecodeError, PgoutputDecoder } from '../src/source/pgoutput.js';
import type { PgoutputMessage, TupleValue } from '../src/source/types.js';

// ---- a tiny pgoutput v1 encoder ---------------------------------------------------------

class Enc {
  private readonly parts: Buffer[] = [];
  byte(v: number | string): this {
    this.parts.push(Buffer.from([typeof v === 'string' ? v.charCodeAt(0) : v]));
    return this;
  }
  i16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeInt16BE(v);
    this.parts.push(b);
    return this;
  }
  i32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.parts.push(b);
    return this;
  }
  i64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(v);
    this.parts.push(b);
    return this;
  }
  str(s: string): this {
    this.parts.push(Buffer.from(s, 'utf8'), Buffer.from([0]));
    return this;
  }
  raw(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  /** TupleData; string → 't', null → 'n', undefined → 'u', Buffer → 'b' */
  tuple(values: (string | null | undefined | Buffer)[]): this {
    this.i16(values.length);
    for (const v of values) {
      if (v === null) this.byte('n');
      else if (v === undefined) this.byte('u');
      else if (Buffer.isBuffer(v)) this.byte('b').i32(v.length).raw(v);
      else {
        const b = Buffer.from(v, 'utf8');
        this.byte('t').i32(b.length).raw(b);
      }
    }
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

const OID_INT4 = 23;
const OID_TEXT = 25;
const OID_JSONB = 3802;
const OID_TIMESTAMPTZ = 1184;

const REL_ID = 16_385;
const FINAL_LSN = 0x1_52b9_68n; // 0/152B968
const COMMIT_LSN = 0x1_52b9_40n;
const END_LSN = 0x1_52b9_68n;
const COMMIT_TIME = 769_000_000_123_456n; // µs since 2000-01-01
const XID = 727;

const begin = () => new Enc().byte('B').u64(FINAL_LSN).i64(COMMIT_TIME).i32(XID).done();
const commit = () => new Enc().byte('C').byte(0).u64(COMMIT_LSN).u64(END_LSN).i64(COMMIT_TIME).done();
const relation = () =>
  new Enc()
    .byte('R')
    .u32(REL_ID)
    .str('app')
    .str('outbox')
    .byte('d')
    .i16(5)
    .byte(1)
    .str('id')
    .u32(OID_INT4)
    .i32(-1)
    .byte(0)
    .str('topic')
    .u32(OID_TEXT)
    .i32(-1)
    .byte(0)
    .str('payload')
    .u32(OID_JSONB)
    .i32(-1)
    .byte(0)
    .str('note')
    .u32(OID_TEXT)
    .i32(-1)
    .byte(0)
    .str('created_at')
    .u32(OID_TIMESTAMPTZ)
    .i32(-1)
    .done();
const PAYLOAD = '{"a": 1, "ü": "☃", "n": [1, 2.50, null]}';
const insert = () =>
  new Enc().byte('I').u32(REL_ID).byte('N').tuple(['42', 'orders.created', PAYLOAD, 'héllo wörld', '2024-05-01 12:34:56.789012+00']).done();

function decodeAll(bufs: Buffer[]): PgoutputMessage[] {
  const d = new PgoutputDecoder();
  return bufs.map((b) => d.decode(b));
}

function narrow<T extends PgoutputMessage['tag']>(m: PgoutputMessage, tag: T): Extract<PgoutputMessage, { tag: T }> {
  assert.equal(m.tag, tag);
  return m as Extract<PgoutputMessage, { tag: T }>;
}

// ---- pgoutput decoder -------------------------------------------------------------------

describe('PgoutputDecoder', () => {
  it('decodes Begin', () => {
    const m = narrow(new PgoutputDecoder().decode(begin()), 'begin');
    assert.deepEqual(m, { tag: 'begin', finalLsn: FINAL_LSN, commitTime: COMMIT_TIME, xid: XID });
  });

  it('decodes xid and OIDs as unsigned 32-bit', () => {
    const d = new PgoutputDecoder();
    const b = narrow(d.decode(new Enc().byte('B').u64(1n).i64(0n).u32(0xffff_fff0).done()), 'begin');
    assert.equal(b.xid, 0xffff_fff0);
    const r = narrow(d.decode(new Enc().byte('R').u32(0x8000_0001).str('s').str('t').byte('f').i16(0).done()), 'relation');
    assert.equal(r.relation.id, 0x8000_0001);
    assert.equal(d.relation(0x8000_0001), r.relation);
  });

  it('decodes Relation and caches it', () => {
    const d = new PgoutputDecoder();
    assert.equal(d.relation(REL_ID), undefined);
    const m = narrow(d.decode(relation()), 'relation');
    assert.deepEqual(m.relation, {
      id: REL_ID,
      schema: 'app',
      name: 'outbox',
      replicaIdentity: 'd',
      columns: [
        { flags: 1, name: 'id', typeOid: OID_INT4, typeMod: -1 },
        { flags: 0, name: 'topic', typeOid: OID_TEXT, typeMod: -1 },
        { flags: 0, name: 'payload', typeOid: OID_JSONB, typeMod: -1 },
        { flags: 0, name: 'note', typeOid: OID_TEXT, typeMod: -1 },
        { flags: 0, name: 'created_at', typeOid: OID_TIMESTAMPTZ, typeMod: -1 },
      ],
    });
    assert.equal(d.relation(REL_ID), m.relation);
    // a later Relation message with the same id replaces the cached one
    const m2 = narrow(
      d.decode(new Enc().byte('R').u32(REL_ID).str('app').str('outbox').byte('f').i16(1).byte(0).str('x').u32(OID_TEXT).i32(-1).done()),
      'relation',
    );
    assert.equal(d.relation(REL_ID), m2.relation);
    assert.equal(d.relation(REL_ID)?.replicaIdentity, 'f');
  });

  it('decodes Insert with text (utf8), null, unchanged-toast and binary values', () => {
    const d = new PgoutputDecoder();
    const buf = new Enc()
      .byte('I')
      .u32(REL_ID)
      .byte('N')
      .tuple(['42', null, undefined, '', 'ünïcødé ☃ 😀', Buffer.from('raw')])
      .done();
    const m = narrow(d.decode(buf), 'insert');
    assert.equal(m.relationId, REL_ID);
    assert.deepEqual(m.newTuple, ['42', null, undefined, '', 'ünïcødé ☃ 😀', 'raw']);
    assert.equal(m.newTuple.length, 6);
    assert.ok(2 in m.newTuple, 'unchanged toast is an explicit undefined entry');
    // decoding does not need a cached relation
    assert.equal(d.relation(REL_ID), undefined);
  });

  it('decodes mixed ASCII / non-ASCII values and length fields with high bytes', () => {
    const long = 'a'.repeat(200); // length 0xC8: a non-ASCII byte in the message header area
    const longU = 'ä'.repeat(150); // 300 bytes
    const vals = ['x', longU, long, '', 'é', '{"k":"v"}', long + 'ß', '1'];
    const buf = new Enc()
      .byte('U')
      .u32(0x8080_8080)
      .byte('O')
      .tuple(vals)
      .byte('N')
      .tuple([...vals].reverse())
      .done();
    const m = narrow(new PgoutputDecoder().decode(buf), 'update');
    assert.equal(m.relationId, 0x8080_8080);
    assert.deepEqual(m.oldTuple, vals);
    assert.deepEqual(m.newTuple, [...vals].reverse());
  });

  it('keeps jsonb and timestamps as raw text', () => {
    const m = narrow(new PgoutputDecoder().decode(insert()), 'insert');
    assert.equal(m.newTuple[2], PAYLOAD);
    assert.equal(m.newTuple[4], '2024-05-01 12:34:56.789012+00');
  });

  it('decodes Update without old tuple, with K and with O', () => {
    const d = new PgoutputDecoder();
    const plain = narrow(d.decode(new Enc().byte('U').u32(REL_ID).byte('N').tuple(['1', 'b']).done()), 'update');
    assert.deepEqual(plain, { tag: 'update', relationId: REL_ID, keyTuple: null, oldTuple: null, newTuple: ['1', 'b'] });

    const k = narrow(d.decode(new Enc().byte('U').u32(REL_ID).byte('K').tuple(['1', null]).byte('N').tuple(['2', 'b']).done()), 'update');
    assert.deepEqual(k, { tag: 'update', relationId: REL_ID, keyTuple: ['1', null], oldTuple: null, newTuple: ['2', 'b'] });

    const o = narrow(
      d.decode(new Enc().byte('U').u32(REL_ID).byte('O').tuple(['1', 'a']).byte('N').tuple(['1', undefined]).done()),
      'update',
    );
    assert.deepEqual(o, { tag: 'update', relationId: REL_ID, keyTuple: null, oldTuple: ['1', 'a'], newTuple: ['1', undefined] });
  });

  it('decodes Delete with K and with O', () => {
    const d = new PgoutputDecoder();
    assert.deepEqual(d.decode(new Enc().byte('D').u32(REL_ID).byte('K').tuple(['7', null, null]).done()), {
      tag: 'delete',
      relationId: REL_ID,
      keyTuple: ['7', null, null],
      oldTuple: null,
    });
    assert.deepEqual(d.decode(new Enc().byte('D').u32(REL_ID).byte('O').tuple(['7', 'x', null]).done()), {
      tag: 'delete',
      relationId: REL_ID,
      keyTuple: null,
      oldTuple: ['7', 'x', null],
    });
  });

  it('decodes Truncate', () => {
    const m = new PgoutputDecoder().decode(new Enc().byte('T').i32(3).byte(3).u32(1).u32(REL_ID).u32(0xffff_ffff).done());
    assert.deepEqual(m, { tag: 'truncate', options: 3, relationIds: [1, REL_ID, 0xffff_ffff] });
  });

  it('decodes transactional and non-transactional Message, content without copy', () => {
    const d = new PgoutputDecoder();
    const body = Buffer.from('{"event":"x"}');
    const buf = new Enc().byte('M').byte(1).u64(0x16_b374_d848n).str('fraiseql').i32(body.length).raw(body).done();
    const m = narrow(d.decode(buf), 'message');
    assert.equal(m.transactional, true);
    assert.equal(m.lsn, 0x16_b374_d848n);
    assert.equal(m.prefix, 'fraiseql');
    assert.deepEqual(m.content, body);
    assert.equal(m.content.buffer, buf.buffer, 'content shares memory with the input');
    assert.equal(m.content.byteOffset, buf.byteOffset + buf.length - body.length);

    const nt = narrow(d.decode(new Enc().byte('M').byte(0).u64(5n).str('hb').i32(0).done()), 'message');
    assert.equal(nt.transactional, false);
    assert.equal(nt.prefix, 'hb');
    assert.equal(nt.content.length, 0);
  });

  it('decodes Commit, Origin and Type', () => {
    const d = new PgoutputDecoder();
    assert.deepEqual(d.decode(commit()), { tag: 'commit', flags: 0, commitLsn: COMMIT_LSN, endLsn: END_LSN, commitTime: COMMIT_TIME });
    assert.deepEqual(d.decode(new Enc().byte('O').u64(0xabn).str('node_a').done()), { tag: 'origin', originLsn: 0xabn, name: 'node_a' });
    assert.deepEqual(d.decode(new Enc().byte('Y').u32(70_000).str('app').str('mood').done()), {
      tag: 'type',
      typeOid: 70_000,
      schema: 'app',
      name: 'mood',
    });
  });

  it('decodes negative commit times (before 2000)', () => {
    const m = narrow(new PgoutputDecoder().decode(new Enc().byte('B').u64(1n).i64(-5n).i32(1).done()), 'begin');
    assert.equal(m.commitTime, -5n);
  });

  it('returns unknown for unknown tags without throwing', () => {
    const d = new PgoutputDecoder();
    // 'S' Stream Start (proto 2): Int32 xid, Int8 first segment
    assert.deepEqual(d.decode(new Enc().byte('S').i32(9).byte(1).done()), { tag: 'unknown', byte: 0x53 });
    assert.deepEqual(d.decode(Buffer.from([0xff])), { tag: 'unknown', byte: 0xff });
    // decoder still works afterwards
    assert.equal(d.decode(begin()).tag, 'begin');
  });

  it('throws PgoutputDecodeError with tag and offset on truncated/malformed buffers', () => {
    const d = new PgoutputDecoder();
    const check = (buf: Buffer, tag: string, offset: number) => {
      assert.throws(
        () => d.decode(buf),
        (e: unknown) => {
          assert.ok(e instanceof PgoutputDecodeError, String(e));
          assert.equal(e.name, 'PgoutputDecodeError');
          assert.equal(e.tag, tag);
          assert.equal(e.offset, offset);
          return true;
        },
      );
    };
    check(Buffer.alloc(0), '', 0);
    check(begin().subarray(0, 10), 'B', 9); // finalLsn (offset 1) complete, commitTime at 9 cut
    check(begin().subarray(0, 5), 'B', 1);
    check(commit().subarray(0, commit().length - 1), 'C', 18);
    const ins = insert();
    // layout: I relid N ncols | 't' len '42' (8..15) | 't' len 'orders.created' (15..34) | 't' len(35) payload(39..)
    // cut in the middle of the third value (payload): reported at its length field
    check(ins.subarray(0, 49), 'I', 35);
    // cut inside the length field of the third value
    check(ins.subarray(0, 37), 'I', 35);
    // cut right before the kind byte of the third value
    check(ins.subarray(0, 34), 'I', 34);
    // cut right after the tuple column count
    check(ins.subarray(0, 8), 'I', 8);
    // missing 'N'
    check(new Enc().byte('I').u32(1).byte('X').tuple([]).done(), 'I', 5);
    // unknown value kind
    check(new Enc().byte('I').u32(1).byte('N').i16(1).byte('z').done(), 'I', 8);
    // negative value length
    check(new Enc().byte('I').u32(1).byte('N').i16(1).byte('t').i32(-2).done(), 'I', 9);
    // unterminated string
    check(Buffer.from([0x52, 0, 0, 0, 1, 0x61, 0x62]), 'R', 5);
    // bad Update / Delete sub-message
    check(new Enc().byte('U').u32(1).byte('Q').done(), 'U', 5);
    check(new Enc().byte('D').u32(1).byte('N').tuple([]).done(), 'D', 5);
    // message content longer than the buffer
    check(new Enc().byte('M').byte(1).u64(1n).str('p').i32(10).raw(Buffer.from('abc')).done(), 'M', 16);
    // trailing bytes after a complete message (e.g. a proto-2 streamed message)
    check(Buffer.concat([begin(), Buffer.from([0])]), 'B', 21);
    // the decoder recovers
    assert.equal(d.decode(insert()).tag, 'insert');
  });
});

// ---- cross-check against pg-logical-replication's parser --------------------------------

describe('cross-check with pg-logical-replication PgoutputParser', () => {
  const PG_EPOCH_US = BigInt(PG_EPOCH_OFFSET_MS) * 1000n;
  const theirLsn = (lsn: bigint) => {
    // their format: zero-padded 8+8 hex digits, upper case
    const [hi, lo] = formatLsn(lsn).split('/') as [string, string];
    return `${hi.padStart(8, '0')}/${lo.padStart(8, '0')}`;
  };

  it('agrees on Begin, Relation, Insert, Update, Delete, Message, Commit', () => {
    const bufs = [
      begin(),
      relation(),
      insert(),
      new Enc().byte('I').u32(REL_ID).byte('N').tuple(['43', null, '{}', 'x', null]).done(),
      new Enc()
        .byte('U')
        .u32(REL_ID)
        .byte('O')
        .tuple(['43', 'a', '[]', 'old', null])
        .byte('N')
        .tuple(['43', 'b', '[1]', 'new', null])
        .done(),
      new Enc().byte('D').u32(REL_ID).byte('K').tuple(['43', null, null, null, null]).done(),
      new Enc().byte('M').byte(1).u64(0x1_0000_0000n).str('pfx').i32(3).raw(Buffer.from('abc')).done(),
      commit(),
    ];
    const ours = decodeAll(bufs);
    const parser = new PgoutputParser();
    const theirs = bufs.map((b) => parser.parse(b));

    const [ob, tb] = [narrow(ours[0]!, 'begin'), theirs[0]!];
    assert.equal(tb.tag, 'begin');
    if (tb.tag !== 'begin') return;
    assert.equal(tb.commitLsn, theirLsn(ob.finalLsn));
    assert.equal(tb.commitTime, ob.commitTime + PG_EPOCH_US);
    assert.equal(tb.xid, ob.xid);

    const or = narrow(ours[1]!, 'relation').relation;
    const tr = theirs[1]!;
    assert.equal(tr.tag, 'relation');
    if (tr.tag !== 'relation') return;
    assert.equal(tr.relationOid, or.id);
    assert.equal(tr.schema, or.schema);
    assert.equal(tr.name, or.name);
    assert.equal(tr.replicaIdentity, 'default');
    assert.deepEqual(
      tr.columns.map((c) => [c.flags, c.name, c.typeOid, c.typeMod]),
      or.columns.map((c) => [c.flags, c.name, c.typeOid, c.typeMod]),
    );

    // rows: compare text columns as is, jsonb after JSON.parse of our text
    const cols = or.columns;
    const compareRow = (ourTuple: readonly TupleValue[] | null, theirRow: Record<string, unknown> | null) => {
      assert.ok(ourTuple !== null && theirRow !== null);
      cols.forEach((c, i) => {
        const v = ourTuple[i];
        if (c.typeOid === OID_TEXT) assert.equal(theirRow[c.name], v, c.name);
        else if (c.typeOid === OID_JSONB) assert.deepEqual(theirRow[c.name], v == null ? v : JSON.parse(v), c.name);
        else if (c.typeOid === OID_INT4) assert.equal(theirRow[c.name], v == null ? v : Number(v), c.name);
      });
    };
    for (const i of [2, 3]) {
      const o = narrow(ours[i]!, 'insert');
      const t = theirs[i]!;
      assert.equal(t.tag, 'insert');
      if (t.tag !== 'insert') return;
      assert.equal(t.relation.relationOid, o.relationId);
      compareRow(o.newTuple, t.new);
    }
    const ou = narrow(ours[4]!, 'update');
    const tu = theirs[4]!;
    if (tu.tag !== 'update') return assert.fail('update');
    compareRow(ou.oldTuple, tu.old);
    compareRow(ou.newTuple, tu.new);
    assert.equal(tu.key, null);
    assert.equal(ou.keyTuple, null);

    const od = narrow(ours[5]!, 'delete');
    const td = theirs[5]!;
    if (td.tag !== 'delete') return assert.fail('delete');
    assert.deepEqual({ ...td.key }, { id: Number(od.keyTuple?.[0]) });

    const om = narrow(ours[6]!, 'message');
    const tm = theirs[6]!;
    if (tm.tag !== 'message') return assert.fail('message');
    assert.equal(tm.transactional, om.transactional);
    assert.equal(tm.prefix, om.prefix);
    assert.equal(tm.messageLsn, theirLsn(om.lsn));
    assert.deepEqual(Buffer.from(tm.content), om.content);

    const oc = narrow(ours[7]!, 'commit');
    const tc = theirs[7]!;
    if (tc.tag !== 'commit') return assert.fail('commit');
    assert.equal(tc.flags, oc.flags);
    assert.equal(tc.commitLsn, theirLsn(oc.commitLsn));
    assert.equal(tc.commitEndLsn, theirLsn(oc.endLsn));
    assert.equal(tc.commitTime, oc.commitTime + PG_EPOCH_US);
  });

  it('agrees on a 15-column insert with utf8 text', () => {
    const rel = new Enc().byte('R').u32(99).str('public').str('wide').byte('i').i16(15);
    const values: (string | null)[] = [];
    for (let i = 0; i < 15; i++) {
      rel
        .byte(i === 0 ? 1 : 0)
        .str(`c${i}`)
        .u32(OID_TEXT)
        .i32(-1);
      values.push(i % 5 === 4 ? null : `v${i} ✓ ${'x'.repeat(i * 7)}`);
    }
    const bufs = [rel.done(), new Enc().byte('I').u32(99).byte('N').tuple(values).done()];
    const ours = decodeAll(bufs);
    const parser = new PgoutputParser();
    const theirs = bufs.map((b) => parser.parse(b));
    const t = theirs[1]!;
    if (t.tag !== 'insert') return assert.fail('insert');
    assert.deepEqual(narrow(ours[1]!, 'insert').newTuple, values);
    assert.deepEqual(Object.values(t.new), values);
  });
});

// ---- lsn.ts -----------------------------------------------------------------------------

describe('lsn', () => {
  it('parses and formats like PostgreSQL', () => {
    assert.equal(parseLsn('16/B374D848'), 0x16_b374_d848n);
    assert.equal(parseLsn('0/16B3748'), 0x16b_3748n);
    assert.equal(parseLsn('0/0'), 0n);
    assert.equal(parseLsn('ff/a'), 0xff_0000_000an);
    assert.equal(formatLsn(0x16b_3748n), '0/16B3748');
    assert.equal(formatLsn(0x16_b374_d848n), '16/B374D848');
    assert.equal(formatLsn(0n), '0/0');
    assert.equal(formatLsn(0x1_0000_0000n), '1/0');
    assert.equal(parseLsn('FFFFFFFF/FFFFFFFF'), MAX_LSN);
    assert.equal(MAX_LSN, 2n ** 64n - 1n);
    assert.equal(formatLsn(MAX_LSN), 'FFFFFFFF/FFFFFFFF');
  });

  it('round-trips, including values above 2^32', () => {
    for (const v of [0n, 1n, 0xffff_ffffn, 0x1_0000_0000n, 0x1_0000_0001n, 0x1234_5678_9abc_def0n, 2n ** 63n, MAX_LSN - 1n, MAX_LSN]) {
      assert.equal(parseLsn(formatLsn(v)), v);
    }
    for (const s of ['0/0', '1/0', '16/B374D848', 'FFFFFFFF/FFFFFFFF', 'ABCDEF01/10']) {
      assert.equal(formatLsn(parseLsn(s)), s);
    }
    assert.equal(formatLsn(parseLsn('00000001/0000000A')), '1/A');
  });

  it('rejects garbage', () => {
    for (const s of [
      '',
      '/',
      '0/',
      '/0',
      '0',
      '0/0/0',
      'G/0',
      '0/-1',
      '-1/0',
      ' 0/0',
      '0/0 ',
      '100000000/0',
      '0/100000000',
      '0x1/0',
      '1.5/0',
    ]) {
      assert.throws(() => parseLsn(s), RangeError, JSON.stringify(s));
    }
    assert.throws(() => formatLsn(-1n), RangeError);
    assert.throws(() => formatLsn(MAX_LSN + 1n), RangeError);
  });

  it('converts PostgreSQL timestamps', () => {
    assert.equal(PG_EPOCH_OFFSET_MS, Date.UTC(2000, 0, 1));
    assert.equal(pgMicrosToIso(0n), '2000-01-01T00:00:00+00:00');
    assert.equal(pgMicrosToIso(1n), '2000-01-01T00:00:00.000001+00:00');
    assert.equal(pgMicrosToIso(-1n), '1999-12-31T23:59:59.999999+00:00');
    const micros = BigInt(Date.UTC(2024, 4, 1, 12, 34, 56) - PG_EPOCH_OFFSET_MS) * 1000n + 789_012n;
    assert.equal(pgMicrosToIso(micros), '2024-05-01T12:34:56.789012+00:00');
    assert.equal(pgTimeToDate(micros).toISOString(), '2024-05-01T12:34:56.789Z');
    assert.equal(pgTimeToDate(-1n).getTime(), PG_EPOCH_OFFSET_MS - 1);
    assert.equal(unixMsToPgMicros(PG_EPOCH_OFFSET_MS + 1.5), 1500n);
    assert.throws(() => pgMicrosToIso(2n ** 63n - 1n), RangeError); // 'infinity'
  });
});

// ---- frames.ts --------------------------------------------------------------------------

describe('frames', () => {
  it("parses 'w' XLogData without copying the payload", () => {
    const payload = insert();
    const frame = new Enc().byte('w').u64(0x1_0000_0010n).u64(0x1_0000_0020n).i64(COMMIT_TIME).raw(payload).done();
    const f = parseFrame(frame);
    assert.equal(f.kind, 'xlog');
    if (f.kind !== 'xlog') return;
    assert.equal(f.start, 0x1_0000_0010n);
    assert.equal(f.walEnd, 0x1_0000_0020n);
    assert.equal(f.sendTime, COMMIT_TIME);
    assert.deepEqual(f.data, payload);
    assert.equal(f.data.buffer, frame.buffer);
    assert.equal(f.data.byteOffset, frame.byteOffset + 25);
    assert.equal(narrow(new PgoutputDecoder().decode(f.data), 'insert').newTuple[1], 'orders.created');
  });

  it("parses 'k' keepalive", () => {
    const k = (reply: number) => new Enc().byte('k').u64(MAX_LSN).i64(123n).byte(reply).done();
    assert.deepEqual(parseFrame(k(0)), { kind: 'keepalive', walEnd: MAX_LSN, sendTime: 123n, replyRequested: false });
    assert.deepEqual(parseFrame(k(1)), { kind: 'keepalive', walEnd: MAX_LSN, sendTime: 123n, replyRequested: true });
  });

  it('reports unknown frames and rejects truncated ones', () => {
    assert.deepEqual(parseFrame(Buffer.from([0x45, 1, 2])), { kind: 'unknown', byte: 0x45 });
    assert.throws(() => parseFrame(Buffer.alloc(0)), FrameDecodeError);
    assert.throws(() => parseFrame(Buffer.alloc(24, 0x77)), FrameDecodeError);
    assert.throws(() => parseFrame(Buffer.from([0x6b, 0, 0])), FrameDecodeError);
    const empty = parseFrame(Buffer.concat([Buffer.from([0x77]), Buffer.alloc(24)]));
    assert.equal(empty.kind === 'xlog' && empty.data.length, 0);
  });

  it('builds the 34-byte Standby Status Update with the exact LSN', () => {
    const lsn = parseLsn('0/152B968');
    const now = Date.UTC(2024, 4, 1, 0, 0, 0, 250);
    const b = standbyStatus(lsn, true, now);
    assert.equal(b.length, 34);
    assert.equal(b[0], 0x72);
    assert.equal(b.readBigUInt64BE(1), lsn, 'write');
    assert.equal(b.readBigUInt64BE(9), lsn, 'flush: exactly the LSN, never +1');
    assert.equal(b.readBigUInt64BE(17), lsn, 'apply');
    assert.equal(b.readBigInt64BE(25), BigInt(now - PG_EPOCH_OFFSET_MS) * 1000n);
    assert.equal(b[33], 1);
    assert.equal(standbyStatus(lsn)[33], 0);
    const t = standbyStatus(MAX_LSN).readBigInt64BE(25);
    const expected = BigInt(Date.now() - PG_EPOCH_OFFSET_MS) * 1000n;
    assert.ok(t <= expected && expected - t < 5_000_000n, 'default clock is now');
    assert.equal(standbyStatus(MAX_LSN).readBigUInt64BE(9), MAX_LSN);
    assert.throws(() => standbyStatus(-1n), RangeError);
  });
});

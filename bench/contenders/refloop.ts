/**
 * The reference minimal loop: pgoutput → JetStream publish on the core
 * connection (Nats-Msg-Id header, reply `<inbox>.<n>` under one shared wildcard subscription,
 * PubAcks parsed from the replies) → standby status with a transaction's commit end LSN once all
 * of its acks and those of every earlier transaction are in. Window of `window` publishes.
 * Runs until SIGTERM, then confirms and exits.
 *   BENCH_ARGS='{"dbUrl":…,"natsUrl":…,"slot":…,"publication":…,"window":1024}'
 */
import { connect } from '@nats-io/transport-node';
import { ReplicationConnection } from '../../src/source/replication.js';
import { PgoutputDecoder } from '../../src/source/pgoutput.js';
import { parseFrame } from '../../src/source/frames.js';
import { createLogger } from '../../src/util/log.js';
import { CorePublisher } from '../lib/corepub.js';
import { args, minimalBody, ready, runMain, say, stopRequested } from './common.js';

interface Args {
  dbUrl: string;
  natsUrl: string;
  slot: string;
  publication: string;
  window?: number;
}

interface Txn {
  remaining: number;
  committed: boolean;
  endLsn: bigint;
}

interface Columns {
  id: number;
  subject: number;
  entity: number;
  created: number;
}

runMain(async () => {
  const a = args<Args>();
  const window = a.window ?? 1024;
  const nc = await connect({ servers: a.natsUrl });
  const pub = new CorePublisher(nc);
  const conn = await ReplicationConnection.open({ url: a.dbUrl, slot: a.slot, publications: [a.publication], log: createLogger('silent') });
  const dec = new PgoutputDecoder();
  const columns = new Map<number, Columns>();
  const txns: Txn[] = [];
  let head = 0;
  let cur: Txn | null = null;
  let paused = false;
  const fault: { error: Error | null } = { error: null };
  const stream = conn.stream;

  const advance = (): void => {
    let lsn = 0n;
    while (head < txns.length) {
      const t = txns[head]!;
      if (!t.committed || t.remaining > 0) break;
      lsn = t.endLsn;
      head++;
    }
    if (head > 4096) {
      txns.splice(0, head);
      head = 0;
    }
    if (lsn > 0n) conn.confirm(lsn);
  };

  const onAck = (t: Txn, err: Error | null): void => {
    if (err) {
      fault.error ??= err;
      return;
    }
    t.remaining--;
    if (t.remaining === 0 && t.committed) advance();
    if (paused && pub.inFlight <= window >> 1) {
      paused = false;
      stream.resume();
    }
  };

  stream.on('data', (buf: Buffer) => {
    if (fault.error) return;
    const f = parseFrame(buf);
    if (f.kind === 'keepalive') {
      if (f.replyRequested) conn.sendStatus(false);
      return;
    }
    if (f.kind !== 'xlog') return;
    const m = dec.decode(f.data);
    switch (m.tag) {
      case 'begin':
        cur = { remaining: 0, committed: false, endLsn: 0n };
        txns.push(cur);
        break;
      case 'insert': {
        let c = columns.get(m.relationId);
        if (!c) {
          const rel = dec.relation(m.relationId);
          const names = rel?.columns.map((col) => col.name) ?? [];
          c = {
            id: names.indexOf('id'),
            subject: names.indexOf('subject'),
            entity: names.indexOf('entity'),
            created: names.indexOf('created_at'),
          };
          columns.set(m.relationId, c);
        }
        const t = m.newTuple;
        const id = t[c.id]!;
        const subject = t[c.subject]!;
        const txn = cur!;
        txn.remaining++;
        pub.publish(subject, minimalBody(id, subject, t[c.entity] ?? 'null', t[c.created] ?? ''), id, (err) => onAck(txn, err));
        if (!paused && pub.inFlight >= window) {
          paused = true;
          stream.pause();
        }
        break;
      }
      case 'commit': {
        const txn = cur!;
        txn.committed = true;
        txn.endLsn = m.endLsn;
        cur = null;
        if (txn.remaining === 0) advance();
        break;
      }
      default:
        break;
    }
  });
  ready();
  const ended = conn.ended.then((e) => e ?? new Error('replication ended'));
  const r = await Promise.race([stopRequested.then(() => null), ended]);
  if (r) throw r;
  if (fault.error) throw fault.error;
  await conn.close();
  await nc.drain();
  say('STOPPED');
});

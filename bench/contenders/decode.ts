/**
 * Ceiling: raw pgoutput decoding without publishing. ReplicationConnection + PgoutputDecoder
 * drain the slot until `n` inserts were decoded, then confirm the last commit end LSN and exit.
 *   BENCH_ARGS='{"dbUrl":…,"slot":…,"publication":…,"n":200000}'
 */
import { ReplicationConnection } from '../../src/source/replication.js';
import { PgoutputDecoder } from '../../src/source/pgoutput.js';
import { parseFrame } from '../../src/source/frames.js';
import { createLogger } from '../../src/util/log.js';
import { nowMs } from '../lib/util.js';
import { args, done, ready, runMain, stopRequested } from './common.js';

interface Args {
  dbUrl: string;
  slot: string;
  publication: string;
  n: number;
}

runMain(async () => {
  const a = args<Args>();
  const conn = await ReplicationConnection.open({ url: a.dbUrl, slot: a.slot, publications: [a.publication], log: createLogger('silent') });
  const dec = new PgoutputDecoder();
  let inserts = 0;
  let messages = 0;
  let bytes = 0;
  let lastEnd = 0n;
  let firstAt = 0;
  let finished = false;
  const result = new Promise<void>((resolve, reject) => {
    conn.stream.on('data', (buf: Buffer) => {
      if (finished) return;
      const f = parseFrame(buf);
      if (f.kind === 'keepalive') {
        if (f.replyRequested) conn.sendStatus(false);
        return;
      }
      if (f.kind !== 'xlog') return;
      if (firstAt === 0) firstAt = nowMs();
      messages++;
      bytes += buf.length;
      const m = dec.decode(f.data);
      if (m.tag === 'insert') {
        inserts++;
      } else if (m.tag === 'commit') {
        lastEnd = m.endLsn;
        if (inserts >= a.n) {
          finished = true;
          resolve();
        }
      }
    });
    void conn.ended.then((e) => reject(e ?? new Error('replication ended')));
  });
  ready();
  await result;
  const lastAt = nowMs();
  conn.confirm(lastEnd);
  done({ inserts, messages, bytes, firstAt, lastAt });
  // stay connected until told to stop, so the benchmark can read the walsender's CPU time
  await stopRequested;
  await conn.close();
});

/**
 * Ceiling: JetStream publishing without PostgreSQL. `n` messages of the given payload and
 * headers, each with its own Nats-Msg-Id, `window` publishes in flight, either through
 * `js.publish()` of @nats-io/jetstream ("js") or on the core connection with one shared reply
 * subscription ("core", the reference publisher).
 *   BENCH_ARGS='{"natsUrl":…,"n":…,"subject":…,"payloadB64":…,"headers":{…},"mode":"js","window":1024}'
 */
import { connect, headers as natsHeaders } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { nowMs } from '../lib/util.js';
import { CorePublisher } from '../lib/corepub.js';
import { args, done, ready, runMain, stopRequested } from './common.js';

interface Args {
  natsUrl: string;
  n: number;
  subject: string;
  payloadB64: string;
  headers: Record<string, string>;
  mode: 'js' | 'core';
  window?: number;
}

runMain(async () => {
  const a = args<Args>();
  const window = a.window ?? 1024;
  const payload = new Uint8Array(Buffer.from(a.payloadB64, 'base64'));
  const nc = await connect({ servers: a.natsUrl });
  ready();
  const startAt = nowMs();
  let sent = 0;
  let acked = 0;
  let inFlight = 0;
  await new Promise<void>((resolve, reject) => {
    let failed = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    const onAck = (): void => {
      inFlight--;
      acked++;
      if (acked === a.n) resolve();
      else pump();
    };
    let pump: () => void;
    if (a.mode === 'js') {
      const js = jetstream(nc, { timeout: 10_000 });
      pump = () => {
        while (!failed && inFlight < window && sent < a.n) {
          const i = sent++;
          inFlight++;
          const h = natsHeaders();
          for (const k in a.headers) h.set(k, a.headers[k]!);
          js.publish(a.subject, payload, { msgID: `p-${i}`, headers: h }).then(onAck, fail);
        }
      };
    } else {
      const pub = new CorePublisher(nc);
      const hs = Object.entries(a.headers);
      pump = () => {
        while (!failed && inFlight < window && sent < a.n) {
          const i = sent++;
          inFlight++;
          pub.publishWith(a.subject, payload, `p-${i}`, hs, (err) => (err ? fail(err) : onAck()));
        }
      };
    }
    pump();
  });
  const lastAt = nowMs();
  done({ n: acked, startAt, lastAt });
  await stopRequested;
  await nc.drain();
});

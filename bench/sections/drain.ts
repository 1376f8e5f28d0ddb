/**
 * (a) Backlog drain: N events committed while nothing runs, then the consumer started; for each
 * transaction shape, the relay, the reference minimal loop and the pgoutput decode ceiling of (e)
 * each drain the same backlog through their own replication slot. The relay's peak RSS here is (d).
 */
import { PUBLICATION, STREAM, SUBJECT, relayToml, type BenchEnv } from '../lib/env.js';
import { errMsg, fmtInt, nowMs } from '../lib/util.js';
import { Series } from '../lib/series.js';
import { BACKLOG_CONNS, N, REPS, WINDOW, log } from '../lib/settings.js';
import { attempt, doneRun, spawnContender, spawnRelay, splitN, streamRun } from '../lib/runs.js';

export type Shape = 'single' | 'tx10' | 'one';
export const SHAPES: { key: Shape; label: string; perTx: (n: number) => number }[] = [
  { key: 'single', label: 'single-row transactions', perTx: () => 1 },
  { key: 'tx10', label: '10-row transactions', perTx: () => 10 },
  { key: 'one', label: `one transaction of N rows`, perTx: (n) => n },
];

export interface DrainResult {
  backlogSecs: number;
  relay: Series;
  ref: Series;
  decode: Series;
}

export function newDrainResult(): DrainResult {
  return { backlogSecs: 0, relay: new Series(), ref: new Series(), decode: new Series() };
}

/**
 * The message the publish ceilings of (e) send: the first one the relay stored (body size, headers
 * but Nats-Msg-Id, body in base64), or a synthetic one when none was captured.
 */
export interface Template {
  bytes: number;
  headers: Record<string, string>;
  source: string;
}

export interface DrainResults {
  drain: Map<Shape, DrainResult>;
  template: Template;
}

export async function sectionDrain(env: BenchEnv, res: DrainResults): Promise<void> {
  for (const shape of SHAPES) {
    const r = newDrainResult();
    res.drain.set(shape.key, r);
    try {
      log(`(a) ${shape.label}: preparing the backlog of ${fmtInt(N)} events`);
      await env.sql(`TRUNCATE fraiseql_relay.outbox`);
      await env.sql('CHECKPOINT');
      // one slot per consumer and repetition, all created before the backlog: every one of
      // them streams exactly the same N events
      const slots: string[] = [];
      for (let rep = 1; rep <= REPS; rep++) for (const who of ['relay', 'ref', 'dec']) slots.push(`b_${shape.key}_${who}_${rep}`);
      for (const s of slots) await env.createSlot(s);
      const t = nowMs();
      const perTx = shape.perTx(N);
      // committed by BACKLOG_CONNS connections at once, except the single transaction
      const parts = perTx >= N ? [N] : splitN(N, BACKLOG_CONNS, perTx);
      let first = 1;
      await Promise.all(
        parts.map((n) => {
          const from = first;
          first += n;
          return env.sqlOwn(`CALL bench.backlog($1, $2, $3, $4)`, [n, perTx, SUBJECT, from]);
        }),
      );
      r.backlogSecs = (nowMs() - t) / 1000;
      log(`  backlog committed in ${r.backlogSecs.toFixed(1)} s (${fmtInt(N / r.backlogSecs)} rows/s)`);
      for (let rep = 1; rep <= REPS; rep++) {
        const relaySlot = `b_${shape.key}_relay_${rep}`;
        await attempt(r.relay, `relay rep ${rep}`, async () => {
          const cfgFile = await env.writeConfig(`relay-${shape.key}-${rep}`, relayToml({ slot: relaySlot }));
          await streamRun(env, r.relay, N, () => spawnRelay(env, cfgFile), { slot: relaySlot });
          if (!res.template.source) await captureTemplate(env, res);
        });
        await env.dropSlot(relaySlot).catch(() => {});
        const refSlot = `b_${shape.key}_ref_${rep}`;
        await attempt(r.ref, `reference loop rep ${rep}`, () =>
          streamRun(
            env,
            r.ref,
            N,
            () =>
              spawnContender('refloop', {
                dbUrl: env.dbUrl,
                natsUrl: env.nats.url,
                slot: refSlot,
                publication: PUBLICATION,
                window: WINDOW,
              }),
            { slot: refSlot },
          ),
        );
        await env.dropSlot(refSlot).catch(() => {});
        const decSlot = `b_${shape.key}_dec_${rep}`;
        await attempt(r.decode, `decode only rep ${rep}`, async () => {
          await doneRun(
            env,
            r.decode,
            N,
            () => spawnContender('decode', { dbUrl: env.dbUrl, slot: decSlot, publication: PUBLICATION, n: N }),
            (d) => d['inserts']!,
            {
              slot: decSlot,
            },
          );
        });
        await env.dropSlot(decSlot).catch(() => {});
      }
    } catch (err) {
      const e = errMsg(err);
      log(`  failed: ${e}`);
      for (const s of [r.relay, r.ref, r.decode]) if (s.values.length === 0 && s.errors.length === 0) s.errors.push(e);
    } finally {
      await env.dropSlotsLike(`b_${shape.key}_`).catch(() => {});
      await env.deleteStream(STREAM).catch(() => {});
    }
  }
}

/** The first message the relay stored: payload and headers for the publish ceilings. */
async function captureTemplate(env: BenchEnv, res: DrainResults): Promise<void> {
  try {
    const m = await env.jsm.streams.getMessage(STREAM, { seq: 1 });
    if (!m) return;
    const headers: Record<string, string> = {};
    if (m.header) for (const [k] of m.header) if (k !== 'Nats-Msg-Id') headers[k] = m.header.get(k);
    res.template = { bytes: m.data.length, headers, source: Buffer.from(m.data).toString('base64') };
  } catch {
    // the ceilings fall back to a synthetic payload
  }
}

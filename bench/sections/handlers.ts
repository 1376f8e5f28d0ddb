/**
 * (c) Inbound handler throughput: HANDLER_N events already stored in a stream, then the relay
 * (subscriber only) starts and runs a trivial SQL handler (one INSERT) for each, at each
 * concurrency.
 */
import { relayToml, type BenchEnv } from '../lib/env.js';
import { errMsg, nowMs, sleep } from '../lib/util.js';
import { Series } from '../lib/series.js';
import { HANDLER_N, REPS, RUN_TIMEOUT_S, WINDOW, log } from '../lib/settings.js';
import { CorePublisher } from '../lib/corepub.js';
import { attempt, spawnRelay } from '../lib/runs.js';

/** the subscription's `concurrency` settings measured */
export const CONCURRENCIES = [1, 8];

export interface HandlerResults {
  handlers: Map<number, Series>;
  handlersError: string;
}

export async function sectionHandlers(env: BenchEnv, res: HandlerResults): Promise<void> {
  const stream = 'BENCH_IN';
  const body = (i: number) => JSON.stringify({ n: i, entity: { id: i, name: 'x'.repeat(100) } });
  for (const c of CONCURRENCIES) res.handlers.set(c, new Series());
  try {
    for (let rep = 1; rep <= REPS; rep++) {
      for (const c of CONCURRENCIES) {
        const s = res.handlers.get(c)!;
        await attempt(s, `(c) handlers concurrency ${c} rep ${rep}`, async () => {
          const subject = `bench_in.c${c}`;
          await env.freshStream(stream, ['bench_in.>']);
          await env.sql(`TRUNCATE bench.seen, fraiseql_relay.inbox`);
          const pub = new CorePublisher(env.nc);
          await new Promise<void>((resolve, reject) => {
            let sent = 0;
            let acked = 0;
            const pump = (): void => {
              while (pub.inFlight < WINDOW && sent < HANDLER_N) {
                const i = sent++;
                pub.publishWith(subject, body(i), `h-${c}-${rep}-${i}`, [['Fraiseql-Event-Id', `h-${c}-${rep}-${i}`]], (err) => {
                  if (err) return reject(err);
                  if (++acked === HANDLER_N) resolve();
                  else pump();
                });
              }
            };
            pump();
          });
          const toml = relayToml({
            stream,
            subjects: ['bench_in.>'],
            extra: `
[[observers.subscribe]]
subject = "${subject}"
handler = "bench.fn_trivial"
consumer = "bench-c${c}"
concurrency = ${c}
`,
          });
          const cfgFile = await env.writeConfig(`relay-handlers-${c}-${rep}`, toml);
          const child = spawnRelay(env, cfgFile);
          try {
            const deadline = nowMs() + RUN_TIMEOUT_S * 1000;
            let first = 0;
            let firstCount = 0;
            let last = 0;
            let done = 0;
            while (done < HANDLER_N) {
              if (!child.alive) throw new Error(`relay exited: ${child.tail()}`);
              if (nowMs() > deadline) throw new Error(`only ${done} of ${HANDLER_N} handled within ${RUN_TIMEOUT_S} s`);
              await sleep(20);
              const n = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM bench.seen`))[0]!.n);
              const t = nowMs();
              if (n > 0 && first === 0) {
                first = t;
                firstCount = n;
              }
              if (n > done) last = t;
              done = n;
            }
            const rss = await child.stop();
            s.values.push(HANDLER_N / ((last - child.spawnedAt) / 1000));
            if (last > first) s.excl.push((HANDLER_N - firstCount) / ((last - first) / 1000));
            s.startup.push((first - child.spawnedAt) / 1000);
            s.rss.push(rss);
          } finally {
            child.kill();
            await child.exited;
          }
        });
      }
    }
  } catch (err) {
    res.handlersError = errMsg(err);
    log(`  failed: ${res.handlersError}`);
  } finally {
    await env.deleteStream(stream).catch(() => {});
  }
}

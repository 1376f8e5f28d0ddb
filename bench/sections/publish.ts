/**
 * (e) Raw JetStream publishing ceilings: N copies of the relay's message published by
 * `js.publish()` and by the core-connection publisher, no PostgreSQL.
 */
import { STREAM, SUBJECT, type BenchEnv } from '../lib/env.js';
import type { Series } from '../lib/series.js';
import { N, REPS, WINDOW } from '../lib/settings.js';
import { attempt, doneRun, spawnContender } from '../lib/runs.js';
import type { Template } from './drain.js';

export interface PublishResults {
  jsJs: Series;
  jsCore: Series;
}

export async function sectionPublish(env: BenchEnv, res: PublishResults & { template: Template }): Promise<void> {
  let payloadB64 = res.template.source;
  let headers = res.template.headers;
  if (!payloadB64) {
    const body = JSON.stringify({ event_id: '00000000-0000-0000-0000-000000000000', data: { note: 'x'.repeat(560) } });
    payloadB64 = Buffer.from(body).toString('base64');
    headers = { 'Fraiseql-Event-Id': '00000000-0000-0000-0000-000000000000' };
    res.template = { bytes: Buffer.byteLength(body), headers, source: payloadB64 };
  }
  for (let rep = 1; rep <= REPS; rep++) {
    for (const [mode, s] of [
      ['js', res.jsJs],
      ['core', res.jsCore],
    ] as const) {
      await attempt(s, `(e) JetStream publish (${mode}) rep ${rep}`, async () => {
        await env.freshStream();
        await doneRun(
          env,
          s,
          N,
          () => spawnContender('jspub', { natsUrl: env.nats.url, n: N, subject: SUBJECT, payloadB64, headers, mode, window: WINDOW }),
          (d) => d['n']!,
        );
        const st = await env.streamState();
        if (st && st.messages < N) throw new Error(`stream holds ${st.messages} of ${N}`);
      });
    }
  }
  await env.deleteStream(STREAM).catch(() => {});
}

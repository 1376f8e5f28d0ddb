/**
 * Inbound handler throughput: N events stored in JetStream, then a relay whose subscription
 * calls a trivial SQL handler; prints events/s for concurrency 1 and 8.
 *   node --import tsx bench/handlers.ts [N]
 */
import { headers as natsHeaders } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, sleep } from '../test/fixture.js';

const n = Number(process.argv[2] ?? 20_000);
const toml = (concurrency: number) => `
[project]
name = "bench"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.subscribe]]
subject = "bench.c${concurrency}"
handler = "fn_trivial"
concurrency = ${concurrency}
[relay]
listen = "127.0.0.1:0"
`;

const env = await TestEnv.create({ toml: toml(1) });
try {
  await env.migrate();
  await env.sql(
    `CREATE TABLE seen (id int); CREATE FUNCTION fn_trivial(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO seen VALUES ((p->>'n')::int) $$`,
  );
  const nc = await env.natsClient();
  await (await jetstreamManager(nc)).streams.add({ name: 'FRAISEQL', subjects: ['bench.>'] });
  const js = jetstream(nc);
  for (const c of [1, 8]) {
    let window: Promise<unknown>[] = [];
    for (let i = 0; i < n; i++) {
      const h = natsHeaders();
      h.set('Fraiseql-Event-Id', `c${c}-${i}`);
      window.push(js.publish(`bench.c${c}`, JSON.stringify({ n: i, entity: { id: i, name: 'x'.repeat(100) } }), { headers: h }));
      if (window.length >= 512) {
        await Promise.all(window);
        window = [];
      }
    }
    await Promise.all(window);
    await env.sql(`TRUNCATE seen`);
    await env.writeConfig(toml(c));
    const start = performance.now();
    const relay = await env.startRelay();
    let done = 0;
    while (done < n) {
      await sleep(50);
      done = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM seen`))[0]!.n);
    }
    const secs = (performance.now() - start) / 1000;
    process.stdout.write(
      `concurrency ${c}: ${n} events through a trivial SQL handler in ${secs.toFixed(2)} s = ${Math.round(n / secs)} events/s\n`,
    );
    await relay.stop();
  }
  await nc.close();
} finally {
  await env.destroy();
}

/**
 * Backlog drain: N single-row transactions committed while the relay is stopped, then the
 * relay started; prints events/s from start to the last PubAck (stream count reached).
 *   node --import tsx bench/drain.ts [N]
 */
import { TestEnv, sleep } from '../test/fixture.js';

const n = Number(process.argv[2] ?? 100_000);
const env = await TestEnv.create();
try {
  await env.migrate();
  await env.sql(`CREATE PROCEDURE backlog(n int) LANGUAGE plpgsql AS $$
    BEGIN FOR i IN 1..n LOOP
      PERFORM fraiseql_relay.emit('fraiseql.order.bench', jsonb_build_object('n', i, 'customer', 'customer-' || i, 'items', jsonb_build_array('SKU-1','SKU-2')));
      COMMIT;
    END LOOP; END $$`);
  const t0 = Date.now();
  await env.sql(`CALL backlog($1)`, [n]);
  process.stdout.write(`committed ${n} single-row transactions in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  const start = performance.now();
  const cpu0 = process.cpuUsage();
  const relay = await env.startRelay();
  while ((await env.streamCount()) < n) await sleep(20);
  const secs = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(`drained ${n} events in ${secs.toFixed(2)} s: ${Math.round(n / secs)} events/s (relay start included)\n`);
  process.stdout.write(
    `relay CPU: ${((cpu.user + cpu.system) / n).toFixed(2)} µs/event (user ${(cpu.user / n).toFixed(2)}, system ${(cpu.system / n).toFixed(2)})\n`,
  );
  await relay.stop();
} finally {
  await env.destroy();
}

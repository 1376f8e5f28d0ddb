/**
 * `fraiseql-relay demo`: its throwaway servers, both services and the broker outage, end to end,
 * with each broker. The demo exits 0 only when every order arrived once and reserved its items once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runCli } from './fixture.js';

for (const backend of ['nats', 'redis'] as const) {
  test(`demo --backend ${backend}: every order through the outage exactly once, exit 0`, async () => {
    const r = await runCli(['demo', '--backend', backend, '--orders', '5', '--outage', '1']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const store = backend === 'redis' ? 'Redis' : 'JetStream';
    const name = backend === 'redis' ? 'Redis' : 'NATS';
    assert.match(r.stdout, new RegExp(`${name} stopped: the relays wait and retry`));
    assert.match(
      r.stdout,
      new RegExp(`✔ every committed order arrived in ${store} exactly once, including the 5 committed while ${name} was down`),
    );
    assert.match(r.stdout, /✔ every order reserved its items exactly once in the inventory service \(15 orders/);
  });
}

test('demo --backend kafka: a usage error (exit 2) naming the choices', async () => {
  const r = await runCli(['demo', '--backend', 'kafka']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /nats, redis/);
});

/**
 * The examples run as their READMEs say, by one command, and report success: throwaway PostgreSQL
 * and NATS, the relay started as `run --migrate` starts it, mutations, a subscription, a table rule
 * and a webhook, all arriving as expected.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT } from './fixture.js';

test('examples/order-service: `node examples/order-service/run.mjs` exits 0 with everything delivered', async () => {
  const readme = await readFile(join(ROOT, 'examples', 'order-service', 'README.md'), 'utf8');
  assert.ok(readme.includes('node examples/order-service/run.mjs'), 'the README gives the command this test runs');
  const child = spawn(process.execPath, [join('examples', 'order-service', 'run.mjs')], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn', NO_PRETTY: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (b: Buffer) => (output += b.toString()));
  child.stderr.on('data', (b: Buffer) => (output += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  clearTimeout(timer);
  assert.equal(code, 0, output);
  assert.match(output, /relay running: slot fraiseql_relay_order_service_orders, publication fraiseql_relay_order_service_orders/);
  assert.match(output, /3 messages, 2 events in the inbox, 2 payments applied/);
  assert.equal((output.match(/signature valid/g) ?? []).length, 3, output);
  assert.match(output, /✔ 3 orders published, 2 payments applied once each, 3 order updates published and delivered to the webhook/);
});

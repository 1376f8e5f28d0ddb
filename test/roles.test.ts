import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestEnv, BASE_TOML, RelayProcess, runCli, ROOT, sleep } from './fixture.js';

test('the relay runs as the documented least-privilege role (LOGIN REPLICATION, no ownership)', async () => {
  const env = await TestEnv.create({
    toml: BASE_TOML.replace('retention = "24h"', 'retention = "1s"\nheartbeat = "1s"').replace(
      '[relay]\n',
      '[[observers.subscribe]]\nsubject = "fraiseql.order.created"\nhandler = "app.fn_count"\nmax_deliver = 1\n\n[relay]\n',
    ),
  });
  try {
    await env.migrate(); // as the owner (postgres)
    await env.sql(`CREATE SCHEMA app; CREATE TABLE app.seen (id text);
      CREATE FUNCTION app.fn_count(p jsonb) RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ INSERT INTO app.seen VALUES (p->>'id') $$;`);
    await env.sql(await readFile(join(ROOT, 'deploy', 'sql', 'relay-role.sql'), 'utf8'));
    await env.sql(`GRANT USAGE ON SCHEMA app TO fraiseql_relay_app`);
    const [role] = await env.sql<{ rolsuper: boolean; rolreplication: boolean; rolbypassrls: boolean }>(
      `SELECT rolsuper, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = 'fraiseql_relay_app'`,
    );
    assert.deepEqual(role, { rolsuper: false, rolreplication: true, rolbypassrls: false });
    const appEnv = { ...env.env, DATABASE_URL: env.dbUrl.replace('postgres@', 'fraiseql_relay_app@') };
    const relay = new RelayProcess(join(env.dir, 'role.log'), ['run', '-c', env.configFile], appEnv);
    await relay.waitForLog('relay running');
    await env.sql(
      `SELECT fraiseql_relay.emit('fraiseql.order.created', jsonb_build_object('id', 'o-' || g)) FROM generate_series(1, 50) g`,
    );
    await env.waitForStreamCount(50);
    // the handler ran as the role (exactly once each), and retention deleted the published rows
    let seen = 0;
    let left = -1;
    for (const until = Date.now() + 20_000; Date.now() < until && (seen < 50 || left !== 0); await sleep(200)) {
      seen = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM app.seen`))[0]!.n);
      left = Number((await env.sql<{ n: string }>(`SELECT count(*)::text AS n FROM fraiseql_relay.outbox`))[0]!.n);
    }
    assert.equal(seen, 50);
    assert.equal(left, 0, 'retention deleted published rows as the role');
    const st = await runCli(['status', '--json', '-c', env.configFile], appEnv);
    assert.equal(st.code, 0, st.stderr);
    assert.equal((JSON.parse(st.stdout) as { role: string }).role, 'active');
    assert.doesNotMatch(relay.output(), /permission denied/);
    relay.child.kill('SIGTERM');
    assert.equal(await relay.exited, 0);
  } finally {
    await env.destroy();
  }
});

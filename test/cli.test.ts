/**
 * The command line as a user meets it: `fraiseql-relay …` as a child process against a real
 * PostgreSQL and nats-server (exit codes 0/1/2, configuration errors with file, line and key).
 *
 * Every command runs with a database URL holding the password `s3cr3t-pw` (trust
 * authentication ignores it), and no output of any command may contain it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import pg from 'pg';
import { jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, BASE_TOML, CLI, ROOT, RelayProcess, waitForRows } from './fixture.js';
import { LocalPostgres } from '../src/local/postgres.js';
import { getFreePort } from '../src/local/ports.js';
import type { StatusReport } from '../src/commands/status.js';

const SECRET = 's3cr3t-pw';

let env: TestEnv;
let replicaPg: LocalPostgres;
/** every output of every command, checked for the secret at the end as well */
const outputs: { args: string[]; stdout: string; stderr: string }[] = [];

before(async () => {
  [env, replicaPg] = await Promise.all([
    TestEnv.create(),
    LocalPostgres.start({ settings: { wal_level: 'replica', max_wal_senders: '10' } }),
  ]);
});

after(async () => {
  await Promise.all([env?.destroy(), replicaPg?.destroy()]);
});

/** A URL for a database of `server`, with a password the server never asks for. */
function secretUrl(server: LocalPostgres, db: string): string {
  return `postgres://postgres:${SECRET}@127.0.0.1:${server.port}/${db}`;
}

function cliEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, NATS_URL: env.nats.url, LOG_LEVEL: 'info', ...extra };
  delete e['FRAISEQL_RELAY_CONFIG'];
  for (const [k, v] of Object.entries(extra)) if (v === undefined) delete e[k];
  return e;
}

/**
 * Like the fixture's runCli (same command line, cwd and NO_PRETTY), but a command that does not
 * exit within `timeoutMs` is SIGKILLed and fails the test instead of hanging the whole file.
 * Checks that neither stream shows the password.
 */
async function cli(
  args: string[],
  e: NodeJS.ProcessEnv,
  timeoutMs = 30_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
    cwd: ROOT,
    env: { ...e, NO_PRETTY: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  clearTimeout(timer);
  outputs.push({ args, stdout, stderr });
  assert.ok(!timedOut, `fraiseql-relay ${args.join(' ')} did not exit within ${timeoutMs} ms:\n${stdout}\n${stderr}`);
  assert.ok(!stdout.includes(SECRET), `stdout of ${args.join(' ')} shows the password:\n${stdout}`);
  assert.ok(!stderr.includes(SECRET), `stderr of ${args.join(' ')} shows the password:\n${stderr}`);
  return { code, stdout, stderr };
}

async function writeToml(name: string, text: string): Promise<string> {
  const file = join(env.dir, name);
  await writeFile(file, text);
  return file;
}

async function query<R extends pg.QueryResultRow>(url: string, text: string, params: unknown[] = []): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<R>(text, params)).rows;
  } finally {
    await c.end();
  }
}

async function schemaExists(url: string, schema = 'fraiseql_relay'): Promise<boolean> {
  const rows = await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = $1`, [schema]);
  return rows[0]!.n === 1;
}

const HEAD = `[project]
name = "cli-test"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"
`;

// ---------------------------------------------------------------------------------------------
// configuration errors: exit 2, file:line, nothing leaked

test('malformed TOML: exit 2, file:line:column and the offending line, no secret', async () => {
  // the syntax error sits right after the placeholder whose value is the secret URL
  const file = await writeToml('malformed.toml', `${HEAD.replace('url = "${DATABASE_URL}"', 'url = "${DATABASE_URL}" oops')}`);
  const r = await cli(['check', '-c', file], cliEnv({ DATABASE_URL: secretUrl(env.pg, 'app') }));
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`${reEscape(file)}:6:\\d+: invalid TOML`));
  assert.ok(r.stderr.includes('url = "${DATABASE_URL}" oops'), `the offending line is shown:\n${r.stderr}`);
  assert.match(r.stderr, /^\s+\|\s+\^$/m, 'a caret marks the column');
  assert.equal(r.stdout, '');
});

test('an unknown key: exit 2, names relay.max_in_flihgt and suggests max_in_flight', async () => {
  const file = await writeToml('unknown-key.toml', `${HEAD}\n[relay]\nmax_in_flihgt = 10\n`);
  const r = await cli(['migrate', '-c', file], cliEnv({ DATABASE_URL: secretUrl(env.pg, 'app') }));
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`${reEscape(file)}:9: `));
  assert.match(r.stderr, /relay\.max_in_flihgt/);
  assert.match(r.stderr, /did you mean "max_in_flight"/);
  assert.equal(await schemaExists(env.dbUrl), false, 'nothing was migrated');
});

test('an unset variable: exit 2, names the variable and its line', async () => {
  const file = await writeToml(
    'unset.toml',
    `${HEAD}\n[observers]\nbackend = "nats"\nnats_url = "\${NATS_URL}"\n\n[[observers.publish]]\nmutation = "create_order"\nsubject = "fraiseql.order.created"\n`,
  );
  // the secret is in the variable that is set; the database URL is missing
  const r = await cli(['check', '-c', file], cliEnv({ DATABASE_URL: undefined, NATS_URL: `nats://relay:${SECRET}@127.0.0.1:4222` }));
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`${reEscape(file)}:6: environment variable DATABASE_URL is not set`));
  assert.doesNotMatch(r.stderr, /NATS_URL is not set/);
  assert.doesNotMatch(r.stdout, /^ok/m, 'check probed nothing');
});

test('[observers] with [[observers]]: exit 2, explains [[observers.rules]]', async () => {
  const file = await writeToml(
    'mix.toml',
    `${HEAD}
[observers]
backend = "nats"
nats_url = "\${NATS_URL}"

[[observers]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.created"

[[observers.actions]]
type = "webhook"
url_env = "ORDER_WEBHOOK_URL"
`,
  );
  const r = await cli(['migrate', '-c', file], cliEnv({ DATABASE_URL: secretUrl(env.pg, 'app') }));
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`${reEscape(file)}:12: `), 'points at the first [[observers]]');
  assert.match(r.stderr, /both an \[observers\] table \(\[observers\] at line 8\) and a top-level \[\[observers\]\] array/);
  assert.match(r.stderr, /line 12: \[\[observers\]\]\s+->\s+\[\[observers\.rules\]\]/);
  assert.match(r.stderr, /line 17: \[\[observers\.actions\]\]\s+->\s+\[\[observers\.rules\.actions\]\]/);
  assert.equal(await schemaExists(env.dbUrl), false, 'nothing was migrated');
});

test('--help: exit 0, lists the commands', async () => {
  const r = await cli(['--help'], cliEnv());
  assert.equal(r.code, 0, r.stderr);
  for (const c of ['migrate', 'run', 'check', 'teardown', 'demo']) {
    assert.match(r.stdout, new RegExp(`^\\s+${c}\\b`, 'm'), `--help lists ${c}:\n${r.stdout}`);
  }
});

test('an unknown command or option: exit 2', async () => {
  const a = await cli(['frobnicate'], cliEnv());
  assert.equal(a.code, 2, a.stderr);
  const b = await cli(['migrate', '--no-such-flag'], cliEnv());
  assert.equal(b.code, 2, b.stderr);
  assert.match(b.stderr, /--no-such-flag/);
});

// ---------------------------------------------------------------------------------------------
// migrate, check, teardown against real servers

test('migrate on a server without wal_level=logical: exit 2, explains it, creates nothing', async () => {
  const url = await replicaPg.createDatabase('app');
  const wal = await query<{ wal_level: string }>(url, 'SHOW wal_level');
  assert.equal(wal[0]!.wal_level, 'replica', 'the server under test really runs with wal_level=replica');
  const file = await writeToml('replica.toml', BASE_TOML);
  const r = await cli(['migrate', '-c', file], cliEnv({ DATABASE_URL: secretUrl(replicaPg, 'app') }));
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /wal_level/);
  assert.match(r.stderr, /logical/);
  assert.match(r.stderr, /Nothing was changed/);
  assert.equal(await schemaExists(url), false, 'schema fraiseql_relay was not created');
  const slots = await query(url, 'SELECT slot_name FROM pg_replication_slots');
  assert.deepEqual(slots, []);
  const pubs = await query(url, 'SELECT pubname FROM pg_publication');
  assert.deepEqual(pubs, []);

  // check says the same, without changing anything
  const c = await cli(['check', '-c', file], cliEnv({ DATABASE_URL: secretUrl(replicaPg, 'app') }));
  assert.equal(c.code, 1, c.stdout);
  assert.match(c.stdout, /^FAIL\s+wal_level\s+replica: set wal_level = logical/m);
  assert.equal(await schemaExists(url), false);
});

test('migrate --dry-run prints the SQL, exits 0 and changes nothing', async () => {
  const r = await cli(['migrate', '--dry-run', '-c', env.configFile], cliEnv({ DATABASE_URL: secretUrl(env.pg, 'app') }));
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.includes('CREATE TABLE IF NOT EXISTS "fraiseql_relay".outbox'), r.stdout);
  // the default names, derived from [project] name "test-service" and the database "app"
  assert.match(
    r.stdout,
    /CREATE PUBLICATION "fraiseql_relay_test_service_app_outbox" FOR TABLE "fraiseql_relay"\.outbox WITH \(publish = 'insert'\)/,
  );
  assert.match(r.stdout, /pg_create_logical_replication_slot\('fraiseql_relay_test_service_app', 'pgoutput'\)/);
  assert.equal(await schemaExists(env.dbUrl), false, 'schema fraiseql_relay does not exist after a dry run');
  assert.deepEqual(await env.sql(`SELECT slot_name FROM pg_replication_slots`), []);
  assert.deepEqual(await env.sql(`SELECT pubname FROM pg_publication`), []);
});

test('check before migrate exits 1 and says to run migrate; after migrate it exits 0', async () => {
  const e = cliEnv({ DATABASE_URL: secretUrl(env.pg, 'app') });
  const before = await cli(['check', '-c', env.configFile], e);
  assert.equal(before.code, 1, before.stdout + before.stderr);
  assert.match(before.stdout, /^FAIL\s+schema\s+.*run fraiseql-relay migrate/m);
  assert.match(before.stdout, /^FAIL\s+slot\s+.*run fraiseql-relay migrate/m);
  assert.equal(await schemaExists(env.dbUrl), false, 'check changes nothing');

  const m = await cli(['migrate', '-c', env.configFile], e);
  assert.equal(m.code, 0, m.stdout + m.stderr);
  assert.equal(await schemaExists(env.dbUrl), true);
  // for a person: what was applied and created, no JSON (the log lines are on stderr)
  assert.match(m.stdout, /^migrated schema fraiseql_relay in database 127\.0\.0\.1:\d+\/app:$/m);
  assert.match(m.stdout, /^ {2}applied migrations +001_core\.sql, 002_consume\.sql/m);
  assert.match(m.stdout, /^ {2}created publication +\S+_outbox$/m);
  assert.match(m.stdout, /^ {2}created slot +\S+ \(plugin pgoutput\)$/m);
  assert.doesNotMatch(m.stdout, /[{}]/);
  assert.match(m.stderr, /"msg":"applied migration"/);

  const after = await cli(['check', '-c', env.configFile], e);
  assert.equal(after.code, 0, after.stdout + after.stderr);
  for (const what of ['wal_level', 'schema', 'publication', 'slot', 'nats']) {
    assert.match(after.stdout, new RegExp(`^ok\\s+${what}\\s`, 'm'), `check reports ${what} ok:\n${after.stdout}`);
  }
  assert.doesNotMatch(after.stdout, /^FAIL/m);

  // migrate again is a no-op
  const again = await cli(['migrate', '-c', env.configFile], e);
  assert.equal(again.code, 0, again.stdout + again.stderr);
  assert.match(again.stdout, /^schema fraiseql_relay in database 127\.0\.0\.1:\d+\/app is already up to date/);
});

test('teardown needs --yes; with it, it drops the slot and the outbox publication', async () => {
  const url = await env.pg.createDatabase('td');
  const file = await writeToml('teardown.toml', `${BASE_TOML}`.replace('[relay]\n', '[relay]\nslot = "td_slot"\npublication = "td_pub"\n'));
  const e = cliEnv({ DATABASE_URL: secretUrl(env.pg, 'td') });
  const m = await cli(['migrate', '-c', file], e);
  assert.equal(m.code, 0, m.stdout + m.stderr);
  const state = async () => ({
    slots: (await query<{ slot_name: string }>(url, `SELECT slot_name FROM pg_replication_slots WHERE slot_name = 'td_slot'`)).length,
    pubs: (await query<{ pubname: string }>(url, `SELECT pubname FROM pg_publication WHERE pubname = 'td_pub_outbox'`)).length,
  });
  assert.deepEqual(await state(), { slots: 1, pubs: 1 });

  const no = await cli(['teardown', '-c', file], e);
  assert.equal(no.code, 2, no.stderr);
  assert.match(no.stderr, /--yes/);
  assert.match(no.stderr, /td_slot/);
  assert.deepEqual(await state(), { slots: 1, pubs: 1 }, 'nothing was dropped without --yes');

  const yes = await cli(['teardown', '--yes', '-c', file], e);
  assert.equal(yes.code, 0, yes.stdout + yes.stderr);
  assert.deepEqual(await state(), { slots: 0, pubs: 0 });
  assert.equal(await schemaExists(url), true, 'tables and data stay');
});

test('unreachable servers: check and migrate exit 1, say what failed, show no password', async () => {
  const port = await getFreePort();
  const e = cliEnv({
    DATABASE_URL: `postgres://postgres:${SECRET}@127.0.0.1:${port}/app`,
    NATS_URL: `nats://relay:${SECRET}@127.0.0.1:${port}`,
  });
  const c = await cli(['check', '-c', env.configFile], e);
  assert.equal(c.code, 1, c.stdout + c.stderr);
  assert.match(c.stdout, /^FAIL\s+postgres\s+cannot connect/m);
  assert.match(c.stdout, /^FAIL\s+nats\s+cannot connect/m);
  const m = await cli(['migrate', '-c', env.configFile], e);
  assert.equal(m.code, 1, m.stdout + m.stderr);
  assert.match(m.stderr, /^fraiseql-relay: /m);
});

// ---------------------------------------------------------------------------------------------
// run

test('run with [relay.stream] create = false and no stream for the subject: exit 2, names the subject', async () => {
  const nc = await env.natsClient();
  try {
    const jsm = await jetstreamManager(nc);
    // a stream exists, but none captures the subject
    await jsm.streams.add({ name: 'OTHER', subjects: ['other.>'] });
    await assert.rejects(jsm.streams.find('fraiseql.order.created'), /no stream matches subject/);
  } finally {
    await nc.close();
  }
  const file = await writeToml('nostream.toml', BASE_TOML.replace('subjects = ["fraiseql.>"]', 'create = false'));
  assert.match(await readFile(file, 'utf8'), /create = false/);
  const e = cliEnv({ DATABASE_URL: secretUrl(env.pg, 'app') });
  const m = await cli(['migrate', '-c', file], e);
  assert.equal(m.code, 0, m.stdout + m.stderr);
  const r = await cli(['run', '-c', file], e);
  assert.equal(r.code, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /create = false/);
  assert.match(r.stderr, /fraiseql\.order\.created/);
  assert.equal(r.stdout, '', 'run writes nothing on stdout: its logs go to stderr');
  const nc2 = await env.natsClient();
  try {
    const jsm = await jetstreamManager(nc2);
    const names: string[] = [];
    for await (const n of jsm.streams.names()) names.push(n);
    assert.deepEqual(names, ['OTHER'], 'the relay created no stream');
  } finally {
    await nc2.close();
  }
});

test('run stops cleanly on SIGTERM: exit 0 within the shutdown bound', async () => {
  await env.writeConfig(BASE_TOML.replace('retention = "24h"', 'retention = "24h"\nshutdown_timeout = "5s"'));
  const e = cliEnv({ DATABASE_URL: secretUrl(env.pg, 'app') });
  const m = await cli(['migrate', '-c', env.configFile], e);
  assert.equal(m.code, 0, m.stdout + m.stderr);
  const relay = new RelayProcess(join(env.dir, 'sigterm.log'), ['run', '-c', env.configFile], e);
  try {
    await relay.waitForLog('relay running');
    // it works before it is stopped: an event goes through
    const before = await env.streamCount();
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.cli.sigterm', '{"n":1}')`);
    await env.waitForStreamCount(before + 1, 20_000);
    const t0 = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([
      relay.kill('SIGTERM'),
      new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 15_000))),
    ]).finally(() => clearTimeout(timer));
    const elapsed = Date.now() - t0;
    assert.notEqual(code, 'hung', `the relay did not exit within 15 s of SIGTERM:\n${relay.output()}`);
    assert.equal(code, 0, relay.output());
    assert.ok(elapsed < 5_000 + 2_000, `stopped in ${elapsed} ms (shutdown_timeout 5s)`);
    assert.match(relay.output(), /relay stopped/);
    // the slot is released (the server's walsender may take a moment to notice the disconnect)
    const released = await waitForRows(
      () =>
        env.sql<{ active: boolean }>(
          `SELECT active FROM pg_replication_slots WHERE slot_name = '${env.config().relay.slot}' AND NOT active`,
        ),
      5_000,
    );
    assert.equal(released.length, 1, 'the slot exists and is inactive after the relay exited');
  } finally {
    if (relay.child.exitCode === null && relay.child.signalCode === null) await relay.kill('SIGKILL');
  }
  assert.ok(!relay.output().includes(SECRET));
});

// ---------------------------------------------------------------------------------------------
// CLI conventions: --version, data on stdout and logs on stderr, --json in one key style, --yes

/** Every key of a JSON value, at any depth, with its path. */
function jsonKeys(v: unknown, path = '$'): string[] {
  if (Array.isArray(v)) return v.flatMap((x, i) => jsonKeys(x, `${path}[${i}]`));
  if (v !== null && typeof v === 'object') {
    return Object.entries(v).flatMap(([k, x]) => [`${path}.${k}`, ...jsonKeys(x, `${path}.${k}`)]);
  }
  return [];
}

/** stdout is exactly one JSON document (nothing else: no log line), every key snake_case. */
function parseJsonOutput<T>(what: string, r: { stdout: string; stderr: string }): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(r.stdout);
  } catch (err) {
    assert.fail(`${what}: stdout is not one JSON document (${(err as Error).message}):\n${r.stdout}\n--- stderr:\n${r.stderr}`);
  }
  const bad = jsonKeys(parsed).filter((p) => !/^[a-z][a-z0-9]*(_[a-z0-9]+)*$/.test(p.slice(p.lastIndexOf('.') + 1)));
  assert.deepEqual(bad, [], `${what}: keys that are not snake_case`);
  return parsed as T;
}

test('--version (and -V): the package version on stdout, exit 0', async () => {
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = await cli([flag], cliEnv());
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${pkg.version}\n`);
    assert.equal(r.stderr, '');
  }
});

test('--json of migrate --dry-run, migrate, check, status and dlq list: one JSON document on stdout, snake_case keys, the warning on stderr', async () => {
  const url = await env.pg.createDatabase('jsonout');
  // FraiseQL [observers] keys the relay ignores: every command logs a warning about them
  const toml = BASE_TOML.replace('backend = "nats"\n', 'backend = "nats"\nenabled = true\nmax_concurrency = 4\n').replace(
    '[relay]\n',
    '[[observers.subscribe]]\nsubject = "fraiseql.order.created"\nhandler = "fn_noop"\n\n[relay]\n',
  );
  const file = await writeToml('json.toml', toml);
  const e = cliEnv({ DATABASE_URL: secretUrl(env.pg, 'jsonout') });
  const warned = (what: string, r: { stderr: string }) => {
    assert.match(r.stderr, /"level":40.*keys the relay does not use are ignored/, `${what}: the warning is logged on stderr`);
    for (const line of r.stderr.split('\n').filter((l) => l.trim() !== '')) {
      assert.doesNotThrow(() => JSON.parse(line), `${what}: each stderr line is a pino JSON line: ${line}`);
    }
  };

  const dry = await cli(['migrate', '--dry-run', '--json', '-c', file], e);
  assert.equal(dry.code, 0, dry.stderr);
  warned('migrate --dry-run --json', dry);
  const plan = parseJsonOutput<{
    dry_run: boolean;
    database: string;
    assumption: string | null;
    steps: { kind: string; name: string | null; statements: string[] }[];
  }>('migrate --dry-run --json', dry);
  assert.equal(plan.dry_run, true);
  assert.equal(plan.assumption, null, 'read from the database');
  assert.match(plan.database, /^127\.0\.0\.1:\d+\/jsonout$/);
  assert.deepEqual([...new Set(plan.steps.map((s) => s.kind))], ['schema', 'migration', 'publication', 'slot']);
  assert.ok(plan.steps.some((s) => s.kind === 'migration' && s.name === '001_core.sql'));
  assert.equal(await schemaExists(url), false, 'a dry run changes nothing');

  const m = await cli(['migrate', '--json', '-c', file], e);
  assert.equal(m.code, 0, m.stderr);
  warned('migrate --json', m);
  const res = parseJsonOutput<{
    up_to_date: boolean;
    applied_migrations: string[];
    created_publications: string[];
    created_slot: { name: string; plugin: string } | null;
  }>('migrate --json', m);
  const slot = plan.steps.find((s) => s.kind === 'slot')!.name;
  assert.equal(res.up_to_date, false);
  assert.deepEqual(
    res.applied_migrations,
    plan.steps.filter((s) => s.kind === 'migration').map((s) => s.name),
  );
  assert.deepEqual(res.created_publications, [plan.steps.find((s) => s.kind === 'publication')!.name]);
  assert.deepEqual(res.created_slot, { name: slot, plugin: 'pgoutput' });
  const again = await cli(['migrate', '--json', '-c', file], e);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(parseJsonOutput<{ up_to_date: boolean }>('migrate --json (again)', again).up_to_date, true);

  await query(url, `CREATE FUNCTION fn_noop(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$`);
  await query(
    url,
    `INSERT INTO fraiseql_relay.dead_letter (direction, event_id, subject, consumer, handler, headers, body, error)
     VALUES ('inbound', 'e-1', 'fraiseql.order.created', 'c', 'fn_noop', '{"Fraiseql-Event-Id": "e-1", "Nats-Msg-Id": "e-1"}', '{}', 'boom')`,
  );

  const c = await cli(['check', '--json', '-c', file], e);
  warned('check --json', c);
  const chk = parseJsonOutput<{ ok: boolean; probes: { what: string; status: string; detail: string }[] }>('check --json', c);
  assert.equal(c.code, chk.ok ? 0 : 1, 'the exit code follows ok');
  assert.equal(chk.ok, true, JSON.stringify(chk.probes.filter((p) => p.status === 'fail')));
  for (const what of ['config', 'postgres', 'wal_level', 'schema', 'slot', 'nats']) {
    assert.equal(chk.probes.find((p) => p.what === what)?.status, 'ok', `check --json: ${what}`);
  }

  const s = await cli(['status', '--json', '-c', file], e);
  assert.equal(s.code, 0, s.stderr);
  warned('status --json', s);
  const st = parseJsonOutput<StatusReport>('status --json', s);
  assert.equal(st.role, 'none');
  assert.equal(st.leader, null);
  assert.deepEqual(st.standbys, []);
  assert.equal(st.slot?.name, slot);
  assert.equal(st.slot?.exists, true);
  assert.equal(typeof st.slot?.lag_bytes, 'number');
  assert.deepEqual(st.dead_letters, { outbound: 0, inbound: 1, webhook: 0 });
  assert.equal(st.consumers[0]?.consumer, 'test-service-fraiseql_order_created');
  assert.equal(typeof st.consumers[0]?.error, 'string', 'no stream yet: the consumer says why');

  const l = await cli(['dlq', 'list', '--json', '-c', file], e);
  assert.equal(l.code, 0, l.stderr);
  warned('dlq list --json', l);
  const dl = parseJsonOutput<{ count: number; dead_letters: { id: number; headers: { name: string; value: string }[] }[] }>(
    'dlq list --json',
    l,
  );
  assert.equal(dl.count, 1);
  assert.deepEqual(
    dl.dead_letters[0]!.headers.sort((a, b) => a.name.localeCompare(b.name)),
    [
      { name: 'Fraiseql-Event-Id', value: 'e-1' },
      { name: 'Nats-Msg-Id', value: 'e-1' },
    ],
    'header names are values, not keys',
  );

  // the tables for people carry no log line either
  const table = await cli(['status', '-c', file], e);
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /^relay\s+no relay is active/m);
  assert.match(table.stdout, /^dead letters\s+1 inbound$/m);
  assert.doesNotMatch(table.stdout, /"level"/);
});

test('dlq purge deletes everything only with --yes; ids and --older-than are filters', async () => {
  const url = await env.pg.createDatabase('purge');
  const file = await writeToml('purge.toml', BASE_TOML);
  const e = cliEnv({ DATABASE_URL: secretUrl(env.pg, 'purge') });
  const m = await cli(['migrate', '-c', file], e);
  assert.equal(m.code, 0, m.stderr);
  const ids = (
    await query<{ id: string }>(
      url,
      `INSERT INTO fraiseql_relay.dead_letter (direction, event_id, subject, body, error)
       SELECT 'outbound', 'e-' || g, 'fraiseql.x', '{}', 'boom' FROM generate_series(1, 3) g RETURNING id::text`,
    )
  ).map((r) => r.id);
  const count = async () => (await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM fraiseql_relay.dead_letter`))[0]!.n;

  const no = await cli(['dlq', 'purge', '-c', file], e);
  assert.equal(no.code, 2, no.stderr);
  assert.match(no.stderr, /--yes/);
  assert.match(no.stderr, /Nothing was deleted/);
  assert.equal(no.stdout, '');
  assert.equal(await count(), 3, 'nothing was deleted without --yes');

  const bad = await cli(['dlq', 'purge', 'abc', '-c', file], e);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /"abc" is not a dead-letter id/);

  const one = await cli(['dlq', 'purge', ids[0]!, '-c', file], e);
  assert.equal(one.code, 0, one.stderr);
  assert.equal(one.stdout, 'purged 1 dead letter\n');
  const old = await cli(['dlq', 'purge', '--older-than', '1d', '-c', file], e);
  assert.equal(old.code, 0, old.stderr);
  assert.equal(old.stdout, 'purged 0 dead letters\n', 'none is a day old');
  assert.equal(await count(), 2);

  const all = await cli(['dlq', 'purge', '--yes', '-c', file], e);
  assert.equal(all.code, 0, all.stderr);
  assert.equal(all.stdout, 'purged 2 dead letters\n');
  assert.equal(await count(), 0);
});

test('PostgreSQL down: status and check name the host and what to do, exit 1, print no data', async () => {
  const port = await getFreePort();
  const e = cliEnv({ DATABASE_URL: `postgres://postgres:${SECRET}@127.0.0.1:${port}/app` });
  for (const args of [['status'], ['status', '--json'], ['dlq', 'list', '--json']]) {
    const r = await cli([...args, '-c', env.configFile], e);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '', `${args.join(' ')}: no half output`);
    assert.match(
      r.stderr,
      new RegExp(
        `^fraiseql-relay: ${args.slice(0, args[0] === 'dlq' ? 2 : 1).join(' ')} failed: PostgreSQL at 127\\.0\\.0\\.1:${port}/app: .*ECONNREFUSED.*\\(nothing accepts connections there: is PostgreSQL running`,
        'm',
      ),
      `${args.join(' ')} names the operation, the host and what to do`,
    );
  }
  const c = await cli(['check', '--json', '-c', env.configFile], e);
  assert.equal(c.code, 1, c.stderr);
  const chk = parseJsonOutput<{ ok: boolean; probes: { what: string; status: string; detail: string }[] }>('check --json', c);
  assert.equal(chk.ok, false);
  const pgProbe = chk.probes.find((p) => p.what === 'postgres');
  assert.equal(pgProbe?.status, 'fail');
  assert.match(pgProbe?.detail ?? '', new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${port}/app: .*is PostgreSQL running`));
});

test('no command printed the password', () => {
  assert.ok(outputs.length >= 15, `commands run: ${outputs.length}`);
  for (const o of outputs) {
    assert.ok(!`${o.stdout}\n${o.stderr}`.includes(SECRET), `fraiseql-relay ${o.args.join(' ')} printed the password`);
  }
});

function reEscape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

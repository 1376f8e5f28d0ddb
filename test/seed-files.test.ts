/**
 * FraiseQL's own service files, verbatim: every complete per-service fraiseql.toml of the
 * Federation + NATS guide (test/fixtures/seed/, listed in its manifest.tsv) passes `check`,
 * `migrate` and `run` to `/readyz` 200. The files have no `[project]` (and one no `[database]`):
 * the service name is derived from the database URL, and the durable consumers are named after it.
 *
 * Each file gets its own database on one PostgreSQL, named after its service and file, and runs
 * against one nats-server, one file after another (the default slot name is per cluster, so each
 * file's slot is dropped after its run). `check` and `migrate` read the fixture itself; `run` reads
 * a copy with only `[relay] listen` appended (a free port).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { connect as natsConnect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { CLI, ROOT, RelayProcess, sleep } from './fixture.js';
import { LocalPostgres } from '../src/local/postgres.js';
import { LocalNats } from '../src/local/nats.js';
import { defaultConsumerName } from '../src/config/load.js';

const SEED_DIR = join(import.meta.dirname, 'fixtures', 'seed');

interface SeedFile {
  file: string;
  /** e.g. `inventory-service/fraiseql.toml` */
  service: string;
  /** lines of the guide it came from */
  lines: string;
}

async function manifest(): Promise<SeedFile[]> {
  const text = await readFile(join(SEED_DIR, 'manifest.tsv'), 'utf8');
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const [file, service, lines] = l.split('\t');
      assert.ok(file && service && lines, `manifest line "${l}" has a file, a service and lines`);
      return { file, service, lines };
    });
}

const SEEDS = await manifest();

let pgs: LocalPostgres;
let nats: LocalNats;
let dir: string;

before(async () => {
  [pgs, nats] = await Promise.all([LocalPostgres.start(), LocalNats.start()]);
  dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-seed-files-'));
});

after(async () => {
  await Promise.all([pgs?.destroy(), nats?.destroy()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The CLI as a child process, SIGKILLed (and failing the test) when it does not exit in time. */
async function cli(
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs = 30_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
    cwd: ROOT,
    env: { ...env, NO_PRETTY: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

async function waitReady(relay: RelayProcess, timeoutMs = 20_000): Promise<void> {
  await relay.waitForLog('relay running', timeoutMs);
  const m = /"http":(\d+)/.exec(relay.output());
  assert.ok(m, 'the relay logs its HTTP port');
  let last = '';
  for (const until = Date.now() + timeoutMs; Date.now() < until; await sleep(100)) {
    const r = await fetch(`http://127.0.0.1:${m[1]}/readyz`).catch(() => null);
    if (r?.status === 200) return;
    last = r ? `${r.status} ${await r.text()}` : 'no answer';
  }
  assert.fail(`/readyz stayed ${last}\n${relay.output().slice(-4000)}`);
}

test('the fixtures are the manifest: every seed file is listed, every listed file exists', async () => {
  const files = (await readdir(SEED_DIR)).filter((f) => f.endsWith('.toml')).sort();
  assert.deepEqual(SEEDS.map((s) => s.file).sort(), files);
  assert.ok(SEEDS.length >= 8, 'the order, inventory, notification and analytics services');
});

for (const seed of SEEDS) {
  test(`${seed.file} (${seed.service}, guide lines ${seed.lines}) as it stands: check, migrate, run to /readyz 200`, async () => {
    const fixture = join(SEED_DIR, seed.file);
    const text = await readFile(fixture, 'utf8');
    assert.doesNotMatch(text, /^\[project\]/m, 'a FraiseQL service file has no [project]');
    const toml = parse(text) as { database?: unknown; observers?: { subscribe?: { subject: string; handler: string }[] } };
    const subscribe = toml.observers?.subscribe ?? [];

    // its own database, named after the service and the file; the service name is derived from it
    const database = `${seed.service.split('/')[0]}-${seed.file.replace(/\.toml$/, '')}`;
    const url = await pgs.createDatabase(database);
    for (const handler of new Set(subscribe.map((s) => s.handler))) {
      await pgs.query(`CREATE FUNCTION ${handler}(p_event jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$`, [], database);
    }
    const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: url, NATS_URL: nats.url, LOG_LEVEL: 'info' };
    for (const k of ['FRAISEQL_RELAY_CONFIG', 'PGDATABASE', 'PGUSER']) delete env[k];

    const migrated = await cli(['migrate', '-c', fixture], env);
    assert.equal(migrated.code, 0, `migrate:\n${migrated.stdout}\n${migrated.stderr}`);

    const checked = await cli(['check', '-c', fixture], env);
    assert.equal(checked.code, 0, `check:\n${checked.stdout}\n${checked.stderr}`);
    const where = toml.database === undefined ? 'DATABASE_URL' : '[database] url';
    assert.match(checked.stdout, new RegExp(`^ok\\s+service\\s+${database} \\(derived from the database name in ${reEscape(where)};`, 'm'));
    const consumers = subscribe.map((s) => defaultConsumerName(database, s.subject));
    for (const [i, s] of subscribe.entries()) {
      assert.equal(consumers[i], `${database}-${s.subject.replaceAll('.', '_')}`);
      assert.match(
        checked.stdout,
        new RegExp(`^ok\\s+consumer ${consumers[i]}\\s+${reEscape(s.subject)} → ${s.handler} \\(default: <service>-<subject>\\)$`, 'm'),
      );
    }

    const runFile = join(dir, `${seed.file}`);
    await writeFile(runFile, `${text}${text.endsWith('\n') ? '' : '\n'}[relay]\nlisten = "127.0.0.1:0"\n`);
    const relay = new RelayProcess(join(dir, `${seed.file}.log`), ['run', '-c', runFile], env);
    try {
      await waitReady(relay);
      if (consumers.length > 0) {
        const nc = await natsConnect({ servers: nats.url });
        try {
          const jsm = await jetstreamManager(nc);
          for (const [i, s] of subscribe.entries()) {
            const stream = await jsm.streams.find(s.subject);
            const info = await jsm.consumers.info(stream, consumers[i]!);
            assert.equal(info.config.durable_name, consumers[i]);
          }
        } finally {
          await nc.close();
        }
      }
      relay.child.kill('SIGTERM');
      assert.equal(await relay.exited, 0, relay.output().slice(-2000));
    } finally {
      if (relay.child.exitCode === null) await relay.kill();
      // the default slot name is per cluster: free it for the next file's database
      await pgs.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, [database]);
    }
  });
}

function reEscape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

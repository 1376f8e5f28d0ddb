/**
 * The package as a service installs it: `npm pack`, installed into an empty project, imported by
 * its name with its type declarations, running a relay in-process that receives an event.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ROOT, TestEnv } from './fixture.js';

const run = promisify(execFile);

const MAIN = `
import { migrate, parseConfig, Relay, type OutboundMessage, type RelayEvents } from 'fraiseql-relay';

const config = parseConfig(process.env['RELAY_TOML']!, 'fraiseql.toml');
await migrate(config);
const relay = new Relay(config);
const first = new Promise<OutboundMessage>((resolve) => relay.once('published', resolve));
const active: RelayEvents['active'] = [false];
relay.on('active', (a) => (active[0] = a));
await relay.start();
process.stdout.write('started\\n');
const msg = await first;
process.stdout.write(JSON.stringify({ subject: msg.subject, eventId: msg.eventId, active: active[0], body: JSON.parse(msg.body.toString()) }) + '\\n');
await relay.stop();
`;

test(
  'the packed tarball installs in an empty project, imports by name with types, and relays an event in-process',
  { timeout: 240_000 },
  async (t) => {
    const env = await TestEnv.create();
    const dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-consumer-'));
    t.after(async () => {
      await env.destroy();
      await rm(dir, { recursive: true, force: true });
    });

    // the tarball npm would publish (prepare builds dist/ with its declarations)
    await run('npm', ['pack', '--pack-destination', dir, '--silent'], { cwd: ROOT, maxBuffer: 1 << 24 });
    const tarball = (await readdir(dir)).find((f) => f.endsWith('.tgz'));
    assert.ok(tarball, 'npm pack wrote a tarball');

    await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(dir, tarball), '@types/node@20'], {
      cwd: dir,
      maxBuffer: 1 << 24,
    });
    await writeFile(join(dir, 'main.ts'), MAIN);
    await writeFile(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          skipLibCheck: false,
          types: ['node'],
          outDir: 'out',
        },
        files: ['main.ts'],
      }),
    );
    // the declarations are complete and strict-clean: the consumer's own compiler checks them (skipLibCheck off)
    const tsc = join(ROOT, 'node_modules', '.bin', 'tsc');
    await run(tsc, ['-p', dir], { cwd: dir }).catch((err: { stdout?: string }) =>
      assert.fail(`tsc in the consumer project failed:\n${err.stdout ?? ''}`),
    );

    const toml = `
[project]
name = "consumer"
[database]
url = "${env.dbUrl}"
[observers]
nats_url = "${env.nats.url}"
[relay]
listen = "127.0.0.1:0"
[relay.stream]
subjects = ["consumer.>"]
`;
    const child = spawn(process.execPath, [join(dir, 'out', 'main.js')], {
      cwd: dir,
      env: { ...process.env, RELAY_TOML: toml },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const started = new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('started\n')) resolve();
      });
      void exited.then((code) => reject(new Error(`the consumer exited (${code}) before starting:\n${out}\n${err}`)));
    });
    await started;
    const [row] = await env.sql<{ id: string }>(`SELECT fraiseql_relay.emit('consumer.hello', '{"n": 1}'::jsonb)::text AS id`);
    const code = await exited;
    assert.equal(code, 0, `the consumer exits cleanly:\n${out}\n${err}`);
    const line = out.split('\n').find((l) => l.startsWith('{'));
    assert.ok(line, `the consumer printed the event it received:\n${out}`);
    const got = JSON.parse(line) as { subject: string; eventId: string; active: boolean; body: { event_id: string; entity: unknown } };
    assert.equal(got.subject, 'consumer.hello');
    assert.equal(got.eventId, row!.id, 'the event the database emitted');
    assert.equal(got.body.event_id, row!.id);
    assert.equal(got.active, true, 'the relay told it took over before it published');
  },
);

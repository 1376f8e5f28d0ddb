/**
 * `[relay.stream]` settings are applied or refused, never accepted and ignored: storage and
 * replicas are passed through when the stream is created; a stream whose storage differs, or
 * replicas > 1 on a server without a cluster, or a duplicate window over the stream's max_age,
 * makes `run` exit 2 and `check` FAIL with what differs and how to fix it; replicas change in
 * place in a JetStream cluster; subjects another stream captures name that stream.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as natsConnect, nanos, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { TestEnv, runCli, sleep } from './fixture.js';
import { Cluster } from './cluster.js';
import { parseConfig, type Config } from '../src/config/load.js';
import { ensureStream, subjectsOverlap } from '../src/sink/stream.js';
import { requiredSubjects } from '../src/route/targets.js';
import { createLogger } from '../src/util/log.js';

const log = createLogger('silent');
let env: TestEnv;
let nc: NatsConnection;
let jsm: JetStreamManager;

before(async () => {
  env = await TestEnv.create();
  await env.migrate();
  nc = await env.natsClient();
  jsm = await jetstreamManager(nc);
});

after(async () => {
  await nc?.close();
  await env?.destroy();
});

/** A configuration whose stream is `name`, capturing `<prefix>.>`; `stream` goes into [relay.stream]. */
function toml(name: string, prefix: string, stream = '', subjects = [`${prefix}.>`]): string {
  return `[project]
name = "test-service"  # the fixture migrated the database for this service's slot

[database]
url = "\${DATABASE_URL}"

[observers]
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "create_order"
subject = "${prefix}.order.created"

[relay]
listen = "127.0.0.1:0"

[relay.stream]
name = "${name}"
subjects = ${JSON.stringify(subjects)}
${stream}
`;
}

function configOf(text: string, natsUrl = env.nats.url): Config {
  return parseConfig(text, 'stream.toml', { DATABASE_URL: env.dbUrl, NATS_URL: natsUrl });
}

async function ensure(text: string, conn = nc, natsUrl = env.nats.url): Promise<string[]> {
  const config = configOf(text, natsUrl);
  return ensureStream(conn, config, requiredSubjects(config), log);
}

async function writeToml(file: string, text: string): Promise<string> {
  const path = join(env.dir, file);
  await writeFile(path, text);
  return path;
}

test('subjectsOverlap: some subject matches both filters', () => {
  for (const [a, b] of [
    ['a.b', 'a.b'],
    ['a.*', 'a.b'],
    ['a.>', 'a.b.c'],
    ['a.*.c', 'a.b.*'],
    ['>', 'x'],
    ['a.*', '*.b'],
  ]) {
    assert.ok(subjectsOverlap(a!, b!), `${a} / ${b}`);
    assert.ok(subjectsOverlap(b!, a!), `${b} / ${a}`);
  }
  for (const [a, b] of [
    ['a.b', 'a.c'],
    ['a.*', 'a.b.c'],
    ['a.>', 'a'],
    ['a.*.c', 'a.b.d'],
    ['b.>', 'a.>'],
  ]) {
    assert.ok(!subjectsOverlap(a!, b!), `${a} / ${b}`);
    assert.ok(!subjectsOverlap(b!, a!), `${b} / ${a}`);
  }
});

test('storage = "memory" creates a memory stream; a later storage = "file" is refused by run and check, saying how to recreate it', async () => {
  await ensure(toml('MEM', 'mem', 'storage = "memory"'));
  const info = await jsm.streams.info('MEM');
  assert.equal(info.config.storage, 'memory');
  assert.equal(info.config.num_replicas, 1);

  const file = toml('MEM', 'mem', 'storage = "file"');
  await assert.rejects(ensure(file), (err: Error & { exitCode?: number }) => {
    assert.equal(err.exitCode, 2);
    assert.match(err.message, /stream MEM keeps its messages in memory storage, but \[relay\.stream\] storage = "file"/);
    assert.match(err.message, /cannot change a stream's storage in place/);
    assert.match(err.message, /set storage = "memory", or recreate the stream/);
    assert.match(err.message, /nats stream rm MEM: this deletes its 0 messages and its durable consumers/);
    assert.match(err.message, /replay --since/);
    return true;
  });
  assert.equal((await jsm.streams.info('MEM')).config.storage, 'memory', 'unchanged');

  const path = await writeToml('mem-file.toml', file);
  const check = await runCli(['check', '-c', path], env.env);
  assert.equal(check.code, 1, check.stdout + check.stderr);
  assert.match(
    check.stdout,
    /^FAIL\s+stream MEM\s+stream MEM keeps its messages in memory storage, but \[relay\.stream\] storage = "file"/m,
  );
  const run = await runCli(['run', '-c', path], env.env);
  assert.equal(run.code, 2, run.stdout + run.stderr);
  assert.match(run.stderr, /storage = "file"/);
  assert.doesNotMatch(run.stdout, /relay running/);
  assert.equal((await jsm.streams.info('MEM')).config.storage, 'memory', 'run changed nothing');
});

test('replicas = 3 on a single server is refused with the server explained, whether the stream exists or not', async () => {
  const three = toml('R3', 'r3', 'replicas = 3');
  await assert.rejects(ensure(three), (err: Error & { exitCode?: number }) => {
    assert.equal(err.exitCode, 2);
    assert.match(
      err.message,
      /\[relay\.stream\] replicas = 3, but nats-server 2\.\d+\.\d+ \(.*\) runs JetStream on its own, not in a cluster/,
    );
    assert.match(err.message, /replicas > 1 not supported in non-clustered mode/);
    assert.match(err.message, /Set replicas = 1, or run a JetStream cluster of at least 3 servers/);
    return true;
  });
  await assert.rejects(jsm.streams.info('R3'), /stream not found/, 'nothing was created');

  // the stream exists with one replica: nats-server 2.9 would accept the update and keep one copy
  await ensure(toml('R3', 'r3'));
  await assert.rejects(ensure(three), /runs JetStream on its own, not in a cluster/);
  assert.equal((await jsm.streams.info('R3')).config.num_replicas, 1, 'not updated');

  const path = await writeToml('r3.toml', three);
  const check = await runCli(['check', '-c', path], env.env);
  assert.equal(check.code, 1, check.stdout);
  assert.match(check.stdout, /^FAIL\s+stream R3\s+\[relay\.stream\] replicas = 3, but nats-server/m);
  const run = await runCli(['run', '-c', path], env.env);
  assert.equal(run.code, 2, run.stdout + run.stderr);
  assert.match(run.stderr, /not in a cluster/);
});

test('subjects another stream captures: the error names that stream, its subjects and what to do', async () => {
  await jsm.streams.add({ name: 'ORDERS', subjects: ['ovl.order.*', 'orders.>'] });
  const file = toml('OVL', 'ovl');
  await assert.rejects(ensure(file), (err: Error & { exitCode?: number }) => {
    assert.equal(err.exitCode, 2);
    assert.match(err.message, /stream OVL cannot capture ovl\.>: JetStream lets a subject belong to one stream only/);
    assert.match(err.message, /stream ORDERS captures ovl\.order\.\* \(its subjects: ovl\.order\.\*, orders\.>\), which overlaps ovl\.>/);
    assert.match(err.message, /set \[relay\.stream\] name = "ORDERS"/);
    assert.match(err.message, /create = false/);
    assert.match(err.message, /nats stream edit ORDERS/);
    return true;
  });
  const path = await writeToml('ovl.toml', file);
  const check = await runCli(['check', '-c', path], env.env);
  assert.equal(check.code, 1, check.stdout);
  assert.match(check.stdout, /^FAIL\s+stream OVL\s+stream OVL cannot capture ovl\.>/m);

  // the update of an existing stream: adding an overlapping subject names ORDERS as well
  await ensure(toml('OVL2', 'ovl2'));
  await assert.rejects(ensure(toml('OVL2', 'ovl2', '', ['ovl2.>', 'orders.new'])), /stream ORDERS captures orders\.>/);
});

test('a duplicate window longer than the existing stream max_age is refused, naming both', async () => {
  await jsm.streams.add({ name: 'AGED', subjects: ['aged.>'], max_age: nanos(60_000), duplicate_window: nanos(60_000) });
  await assert.rejects(ensure(toml('AGED', 'aged', 'duplicate_window = "10m"')), (err: Error & { exitCode?: number }) => {
    assert.equal(err.exitCode, 2);
    assert.match(err.message, /duplicate_window = "10m" is longer than stream AGED's max_age \(1m\)/);
    assert.match(err.message, /Lower duplicate_window to at most "1m", or raise the stream's max_age/);
    return true;
  });
  // within max_age it is applied
  await ensure(toml('AGED', 'aged', 'duplicate_window = "30s"'));
  assert.equal((await jsm.streams.info('AGED')).config.duplicate_window, nanos(30_000));
});

test('in a JetStream cluster, replicas change in place; more replicas than servers is explained', async () => {
  const cluster = await Cluster.start(3);
  const c = await natsConnect({ servers: cluster.urls[0] });
  try {
    const m = await jetstreamManager(c);
    await ensure(toml('CL', 'cl', 'storage = "memory"'), c, cluster.urls[0]);
    const one = await m.streams.info('CL');
    assert.equal(one.config.num_replicas, 1);
    assert.equal(one.config.storage, 'memory');

    await ensure(toml('CL', 'cl', 'storage = "memory"\nreplicas = 3'), c, cluster.urls[0]);
    const peers = (i: StreamInfo) => new Set([i.cluster?.leader, ...(i.cluster?.replicas ?? []).map((r) => r.name)].filter(Boolean)).size;
    let three = await m.streams.info('CL');
    for (const until = Date.now() + 10_000; peers(three) < 3 && Date.now() < until; await sleep(200)) three = await m.streams.info('CL');
    assert.equal(three.config.num_replicas, 3, 'updated in place');
    assert.equal(peers(three), 3, 'a copy on each of the three servers');

    await assert.rejects(
      ensure(toml('CL', 'cl', 'storage = "memory"\nreplicas = 5'), c, cluster.urls[0]),
      (err: Error & { exitCode?: number }) => {
        assert.equal(err.exitCode, 2);
        assert.match(err.message, /JetStream could not place stream CL with replicas = 5 and memory storage/);
        assert.match(err.message, /no suitable peers for placement/);
        assert.match(err.message, /Lower \[relay\.stream\] replicas, or add JetStream servers/);
        return true;
      },
    );
    assert.equal((await m.streams.info('CL')).config.num_replicas, 3, 'left as it was');

    // created with replicas and storage as configured
    await ensure(toml('CL3', 'cl3', 'replicas = 3'), c, cluster.urls[0]);
    const created = await m.streams.info('CL3');
    assert.equal(created.config.num_replicas, 3);
    assert.equal(created.config.storage, 'file');
  } finally {
    await c.close();
    await cluster.destroy();
  }
});

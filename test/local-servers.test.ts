// Throwaway PostgreSQL / nats-server harness: node --import tsx --test test/local-servers.test.ts
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';

import { findNatsServer, findPostgresBin, isProcessAlive, MissingBinaryError } from '../src/local/binaries.js';
import { LocalNats } from '../src/local/nats.js';
import { LocalPostgres } from '../src/local/postgres.js';
import { isPortOpen } from '../src/local/ports.js';

const here = path.dirname(fileURLToPath(import.meta.url));

function withEnv<T>(name: string, value: string, fn: () => T): T {
  const old = process.env[name];
  process.env[name] = value;
  try {
    return fn();
  } finally {
    if (old === undefined) delete process.env[name];
    else process.env[name] = old;
  }
}

async function retry<T>(fn: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Resolves on the connection's next 'reconnect' status (call before the server goes away). */
async function nextReconnect(nc: NatsConnection): Promise<void> {
  for await (const s of nc.status()) if (s.type === 'reconnect') return;
}

describe('binaries', () => {
  it('finds the PostgreSQL bin dir and nats-server', () => {
    const bin = findPostgresBin();
    for (const tool of ['initdb', 'pg_ctl', 'postgres']) assert.ok(fs.existsSync(path.join(bin, tool)), tool);
    assert.ok(fs.existsSync(findNatsServer()));
  });

  it('MissingBinaryError names the missing nats-server and how to install it', async () => {
    const err = withEnv('NATS_SERVER_BIN', '/nonexistent/nats-server', () => {
      try {
        findNatsServer();
      } catch (e) {
        return e;
      }
      return undefined;
    });
    assert.ok(err instanceof MissingBinaryError);
    assert.equal(err.binary, 'nats-server');
    assert.match(err.message, /nats-server/);
    assert.match(err.message, /apt-get install -y nats-server/);
    assert.match(err.message, /NATS_SERVER_BIN/);

    const old = process.env['NATS_SERVER_BIN'];
    process.env['NATS_SERVER_BIN'] = '/nonexistent/nats-server';
    try {
      await assert.rejects(LocalNats.start(), MissingBinaryError);
    } finally {
      if (old === undefined) delete process.env['NATS_SERVER_BIN'];
      else process.env['NATS_SERVER_BIN'] = old;
    }
  });

  it('MissingBinaryError names the missing PostgreSQL binary', () => {
    assert.throws(
      () => withEnv('PG_BIN', '/nonexistent', () => findPostgresBin()),
      (e: unknown) =>
        e instanceof MissingBinaryError &&
        e.binary === 'initdb' &&
        /initdb/.test(e.message) &&
        /apt-get install -y postgresql/.test(e.message) &&
        /PG_BIN/.test(e.message),
    );
  });
});

describe('LocalPostgres', () => {
  let pg: LocalPostgres;

  before(async () => {
    const t0 = Date.now();
    pg = await LocalPostgres.start({ walSenderTimeout: '7s', settings: { max_connections: '50' } });
    console.log(`# LocalPostgres.start() took ${Date.now() - t0} ms (port ${pg.port})`);
  });
  after(async () => {
    await pg.destroy();
  });

  it('runs with wal_level=logical and the given settings on 127.0.0.1 only', async () => {
    assert.ok(pg.port > 0 && pg.port !== 5432);
    assert.equal(pg.url(), `postgres://postgres@127.0.0.1:${pg.port}/postgres`);
    assert.equal(pg.url('app', 'bob'), `postgres://bob@127.0.0.1:${pg.port}/app`);
    assert.equal((await pg.query<{ wal_level: string }>('SHOW wal_level')).rows[0]?.wal_level, 'logical');
    assert.equal((await pg.query<{ wal_sender_timeout: string }>('SHOW wal_sender_timeout')).rows[0]?.wal_sender_timeout, '7s');
    assert.equal((await pg.query<{ max_connections: string }>('SHOW max_connections')).rows[0]?.max_connections, '50');
    assert.equal((await pg.query<{ listen_addresses: string }>('SHOW listen_addresses')).rows[0]?.listen_addresses, '127.0.0.1');
    assert.equal((await pg.query<{ n: number }>('SELECT $1::int + 1 AS n', [41])).rows[0]?.n, 42);
  });

  it('keeps data across stop/start (same port)', async () => {
    await pg.query('CREATE TABLE kept (id int PRIMARY KEY, v text)');
    await pg.query(`INSERT INTO kept VALUES (1, 'before stop')`);
    const port = pg.port;
    await pg.stop();
    assert.equal(pg.isRunning, false);
    assert.equal(await isPortOpen(port), false);
    await pg.start();
    assert.equal(pg.port, port);
    assert.deepEqual((await pg.query('SELECT id, v FROM kept ORDER BY id')).rows, [{ id: 1, v: 'before stop' }]);
    await pg.restart();
    assert.equal((await pg.query('SELECT count(*)::int AS n FROM kept')).rows[0]?.n, 1);
  });

  it('keeps committed data across kill/start (crash recovery)', async () => {
    await pg.query(`INSERT INTO kept VALUES (2, 'before kill')`);
    const pid = pg.postmasterPid();
    assert.ok(pid !== undefined);
    await pg.kill();
    assert.equal(isProcessAlive(pid), false);
    assert.equal(await isPortOpen(pg.port), false);
    await pg.start();
    assert.deepEqual((await pg.query('SELECT id FROM kept ORDER BY id')).rows, [{ id: 1 }, { id: 2 }]);
    assert.notEqual(pg.postmasterPid(), pid);
    // and an immediate stop is crash-like too
    await pg.stop('immediate');
    await pg.start();
    assert.equal((await pg.query('SELECT count(*)::int AS n FROM kept')).rows[0]?.n, 2);
  });

  it('creates databases', async () => {
    const url = await pg.createDatabase('relay_test');
    assert.equal(url, pg.url('relay_test'));
    assert.equal((await pg.query<{ d: string }>('SELECT current_database() AS d', [], 'relay_test')).rows[0]?.d, 'relay_test');
  });

  it('destroy() stops the server and removes its directory; safe twice', async () => {
    const other = await LocalPostgres.start();
    const pid = other.postmasterPid();
    assert.ok(pid !== undefined && isProcessAlive(pid));
    await Promise.all([other.destroy(), other.destroy()]);
    await other.destroy();
    assert.equal(fs.existsSync(other.dir), false);
    assert.equal(isProcessAlive(pid), false);
    assert.equal(await isPortOpen(other.port), false);
  });
});

describe('LocalNats', () => {
  let nats: LocalNats;

  before(async () => {
    nats = await LocalNats.start({ maxPayload: 2 * 1024 * 1024 });
  });
  after(async () => {
    await nats.destroy();
  });

  it('runs JetStream on a random port; data survives stop/start and kill/start on the same URL', async () => {
    assert.ok(nats.port > 0 && nats.port !== 4222);
    assert.equal(nats.url, `nats://127.0.0.1:${nats.port}`);
    const nc = await connect({ servers: nats.url, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
    try {
      assert.equal(nc.info?.max_payload, 2 * 1024 * 1024);
      const jsm: JetStreamManager = await jetstreamManager(nc);
      await jsm.streams.add({ name: 'T', subjects: ['t.>'] });
      const js = jetstream(nc);
      const ack = await js.publish('t.one', 'hello');
      assert.equal(ack.stream, 'T');
      assert.equal(ack.seq, 1);

      const url = nats.url;
      let reconnected = nextReconnect(nc);
      await nats.stop();
      assert.equal(nats.isRunning, false);
      assert.equal(await isPortOpen(nats.port), false);
      await nats.start();
      assert.equal(nats.url, url);

      // the same connection reconnects to the same URL
      await reconnected;
      const info = await retry(() => jsm.streams.info('T'));
      assert.equal(info.state.messages, 1);
      const msg = await jsm.streams.getMessage('T', { seq: 1 });
      assert.equal(msg?.string(), 'hello');
      assert.equal(msg?.subject, 't.one');

      const ack2 = await retry(() => js.publish('t.two', 'world'));
      assert.equal(ack2.seq, 2);
      reconnected = nextReconnect(nc);
      await nats.kill();
      assert.equal(nats.isRunning, false);
      await nats.start();
      await reconnected;
      const info2 = await retry(() => jsm.streams.info('T'));
      assert.equal(info2.state.messages, 2);
      assert.equal((await jsm.streams.getMessage('T', { seq: 2 }))?.string(), 'world');
    } finally {
      await nc.close();
    }
  });

  it('destroy() kills the server and removes its directory; safe twice', async () => {
    const other = await LocalNats.start();
    const pid = other.pid;
    assert.ok(pid !== undefined);
    await Promise.all([other.destroy(), other.destroy()]);
    await other.destroy();
    assert.equal(fs.existsSync(other.dir), false);
    assert.equal(isProcessAlive(pid), false);
    assert.equal(await isPortOpen(other.port), false);
  });
});

describe('exit cleanup', () => {
  interface Started {
    pgPid: number;
    pgDir: string;
    natsPid: number;
    natsDir: string;
  }

  /** Runs a child that starts both servers and never destroys them. */
  async function runChild(mode: 'exit' | 'sigterm'): Promise<Started> {
    const pgModule = path.join(here, '../src/local/postgres.ts');
    const natsModule = path.join(here, '../src/local/nats.ts');
    const code = `
      import { LocalPostgres } from ${JSON.stringify(pgModule)};
      import { LocalNats } from ${JSON.stringify(natsModule)};
      const pg = await LocalPostgres.start();
      const nats = await LocalNats.start();
      console.log(JSON.stringify({ pgPid: pg.postmasterPid(), pgDir: pg.dir, natsPid: nats.pid, natsDir: nats.dir }));
      if (${JSON.stringify(mode)} === 'sigterm') setInterval(() => undefined, 1000); // wait to be killed
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      stdio: ['ignore', 'pipe', 'inherit'],
      cwd: path.join(here, '..'),
    });
    let out = '';
    const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    const started = await new Promise<Started>((resolve, reject) => {
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (chunk: string) => {
        out += chunk;
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (line !== undefined) resolve(JSON.parse(line) as Started);
      });
      void exited.then(() => reject(new Error(`child exited before starting the servers: ${out}`)));
    });
    if (mode === 'sigterm') child.kill('SIGTERM');
    await exited;
    return started;
  }

  for (const mode of ['exit', 'sigterm'] as const) {
    it(`leaves no servers or directories behind when the process ends (${mode})`, async () => {
      const s = await runChild(mode);
      assert.ok(s.pgPid > 0 && s.natsPid > 0);
      const deadline = Date.now() + 5000;
      while ((isProcessAlive(s.pgPid) || isProcessAlive(s.natsPid)) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(isProcessAlive(s.pgPid), false, 'postmaster still running');
      assert.equal(isProcessAlive(s.natsPid), false, 'nats-server still running');
      assert.equal(fs.existsSync(s.pgDir), false);
      assert.equal(fs.existsSync(s.natsDir), false);
    });
  }
});

/**
 * Database URLs with several hosts, as libpq reads them (`host1:port1,host2:port2` and
 * `target_session_attrs`): the parsing, and against real servers that every kind of connection
 * the relay opens (a single client, a pool, the replication connection) reaches the server asked for.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import pg from 'pg';
import { parsePgUrl, PgUrlError } from '../src/util/pgurl.js';
import { connect, connectionConfig, DbClient } from '../src/util/db.js';
import { pgWhere, UsageError } from '../src/util/errors.js';
import { LocalPostgres } from '../src/local/postgres.js';
import { getFreePort } from '../src/local/ports.js';
import { ROOT } from './fixture.js';

describe('parsePgUrl', () => {
  test('every host of the list, in order, each with its port (or the default)', () => {
    const p = parsePgUrl('postgresql://relay:s3cr%40t@db-a:5432,db-b,[::1]:6543/orders?sslmode=require&target_session_attrs=read-write')!;
    assert.deepEqual(
      p.hosts.map((h) => [h.host, h.port, h.label]),
      [
        ['db-a', 5432, 'db-a:5432'],
        ['db-b', undefined, 'db-b:5432'],
        ['::1', 6543, '[::1]:6543'],
      ],
    );
    assert.equal(p.targetSessionAttrs, 'read-write');
    assert.equal(p.path, '/orders');
    // one URL per host for node-postgres: the credentials and every other parameter kept, target_session_attrs gone
    assert.equal(p.forHost(p.hosts[1]!), 'postgresql://relay:s3cr%40t@db-b/orders?sslmode=require');
    assert.equal(p.forHost(p.hosts[2]!), 'postgresql://relay:s3cr%40t@[::1]:6543/orders?sslmode=require');
  });

  test("libpq's query-parameter hosts: ?host=a,b with one port or one each, socket directories, and they win over the authority's", () => {
    const p = parsePgUrl(
      'postgresql://relay:s3cr%40t@/orders?host=db-a,%2Frun%2Fpg&port=5433,5434&sslmode=require&target_session_attrs=read-write',
    )!;
    assert.deepEqual(
      p.hosts.map((h) => [h.host, h.port, h.label]),
      [
        ['db-a', 5433, 'db-a:5433'],
        ['/run/pg', 5434, '/run/pg:5434'],
      ],
    );
    assert.equal(p.targetSessionAttrs, 'read-write');
    assert.equal(p.forHost(p.hosts[1]!), 'postgresql://relay:s3cr%40t@/orders?sslmode=require&host=%2Frun%2Fpg&port=5434');
    const one = parsePgUrl('postgres://u@ignored:1/app?host=/var/run/postgresql')!;
    assert.deepEqual(
      one.hosts.map((h) => [h.host, h.port]),
      [['/var/run/postgresql', undefined]],
    );
    assert.deepEqual(
      parsePgUrl('postgres://u@db-a:5432,db-b/app?port=6000')!.hosts.map((h) => h.label),
      ['db-a:6000', 'db-b:6000'],
      'a port parameter alone applies to every host of the authority',
    );
    assert.throws(() => parsePgUrl('postgres://u@/app?host=a,b,c&port=1,2'), /3 host\(s\) but 2 ports/);
    assert.throws(() => parsePgUrl('postgres://u@/app?host=a&port=http'), /port "http" is invalid/);
  });

  test('one host and no target_session_attrs: any server, the URL unchanged', () => {
    const p = parsePgUrl('postgres://u@localhost:5433/app')!;
    assert.equal(p.targetSessionAttrs, 'any');
    assert.deepEqual(
      p.hosts.map((h) => h.label),
      ['localhost:5433'],
    );
    assert.equal(p.forHost(p.hosts[0]!), 'postgres://u@localhost:5433/app');
    assert.deepEqual(parsePgUrl('postgres:///app?target_session_attrs=primary')!.hosts, []);
    assert.equal(parsePgUrl('postgres:///app?target_session_attrs=primary')!.withoutHostChoice, 'postgres:///app');
  });

  test("libpq's values of target_session_attrs; anything else is refused, naming them", () => {
    for (const v of ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby']) {
      assert.equal(parsePgUrl(`postgres://a,b/db?target_session_attrs=${v}`)!.targetSessionAttrs, v);
    }
    assert.throws(
      () => parsePgUrl('postgres://a,b/db?target_session_attrs=master'),
      (e: Error) => {
        assert.ok(e instanceof PgUrlError);
        assert.match(e.message, /invalid target_session_attrs value "master".*read-write/);
        return true;
      },
    );
    assert.throws(() => parsePgUrl('postgres://a,,b/db'), PgUrlError);
    assert.throws(() => parsePgUrl('postgres://a:99999/db'), PgUrlError);
    assert.throws(() => connectionConfig('postgres://a,b/db?target_session_attrs=rw'), UsageError);
  });

  test('a key=value connection string is not a URL: left to node-postgres as it is', () => {
    assert.equal(parsePgUrl('host=db-a port=5432 dbname=app'), null);
  });

  test('messages name every server, never the password', () => {
    assert.equal(pgWhere('postgres://u:hunter2@db-a:5432,db-b:5433/app?target_session_attrs=read-write'), 'db-a:5432,db-b:5433/app');
    assert.equal(pgWhere('postgres://u:hunter2@db-a:5432/app'), 'db-a:5432/app');
  });

  test('connectionConfig: one target per host, each with the URL tweaks; pools get DbClient', () => {
    const c = connectionConfig('postgres://u:pw@a:1,b:2/app?dbname=orders&target_session_attrs=primary', { application_name: 'x' });
    assert.equal(c.Client, DbClient);
    assert.equal(c.targetSessionAttrs, 'primary');
    assert.deepEqual(
      c.dbTargets.map((t) => [t.label, t.connectionString]),
      [
        ['a:1', 'postgres://u:pw@a:1/orders'],
        ['b:2', 'postgres://u:pw@b:2/orders'],
      ],
    );
    assert.equal(c.connectionString, 'postgres://u:pw@a:1/orders');
    assert.equal(c.application_name, 'x');
  });
});

test('every PostgreSQL connection of src/ goes through connectionConfig with DbClient (a plain pg.Client reaches only the first host)', () => {
  const files = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
    );
  const bad: string[] = [];
  for (const f of files(join(ROOT, 'src'))) {
    const name = relative(ROOT, f);
    // the throwaway local servers connect to themselves; db.ts asks each server with a plain client
    if (name.startsWith('src/local/') || name === 'src/util/db.ts') continue;
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(/new pg\.(Client|Pool)\(([^;]*)/g)) {
      const line = text.slice(0, m.index).split('\n').length;
      if (m[1] === 'Client' || !m[2]!.includes('connectionConfig(')) bad.push(`${name}:${line}: new pg.${m[1]}(${m[2]!.slice(0, 60)}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('multi-host URLs against real servers: read-write skips a down server and a read-only one, for clients, pools and replication', async () => {
  // a read-only server (default_transaction_read_only = on) is what libpq's read-write refuses, like a standby
  const [ro, rw] = await Promise.all([LocalPostgres.start({ settings: { default_transaction_read_only: 'on' } }), LocalPostgres.start()]);
  const down = await getFreePort();
  try {
    const hosts = `127.0.0.1:${down},127.0.0.1:${ro.port},127.0.0.1:${rw.port}`;
    const url = (attrs: string) => `postgres://postgres:not-shown@${hosts}/postgres?target_session_attrs=${attrs}`;
    const portOf = async (c: pg.ClientBase) => Number((await c.query<{ p: string }>(`SELECT current_setting('port') AS p`)).rows[0]!.p);

    for (const [attrs, port] of [
      ['read-write', rw.port],
      ['any', ro.port],
      ['read-only', ro.port],
      ['primary', ro.port], // not in recovery: primary does not look at read-only sessions
    ] as const) {
      const c = await connect(url(attrs));
      try {
        assert.equal(await portOf(c), port, attrs);
      } finally {
        await c.end();
      }
    }

    // a pool built from connectionConfig connects each client the same way
    const pool = new pg.Pool({ ...connectionConfig(url('read-write')), max: 2 });
    try {
      assert.equal(await portOf(pool as unknown as pg.ClientBase), rw.port, 'pool');
    } finally {
      await pool.end();
    }

    // the replication connection too (a walsender answers SQL on replication=database)
    const repl = new DbClient(connectionConfig(url('read-write'), { replication: 'database' } as pg.ClientConfig));
    await repl.connect();
    try {
      assert.equal(repl.server, `127.0.0.1:${rw.port}`);
      assert.equal((await repl.query('IDENTIFY_SYSTEM')).rows.length, 1);
    } finally {
      await repl.end();
    }

    // ended while the servers are being asked (a relay stopping during an outage): nothing is opened after all
    const early = new DbClient(connectionConfig(url('read-write')));
    const connecting = early.connect();
    await early.end();
    await assert.rejects(connecting, /Connection terminated/);

    // none fits: every server and why, never the password
    await assert.rejects(
      connect(`postgres://postgres:not-shown@127.0.0.1:${down},127.0.0.1:${ro.port}/postgres?target_session_attrs=read-write`),
      (e: Error) => {
        assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${down}: .*ECONNREFUSED`));
        assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${ro.port}: its sessions are read-only`));
        assert.doesNotMatch(e.message, /not-shown/);
        return true;
      },
    );
    // one host is checked on the connection itself
    await assert.rejects(
      connect(`postgres://postgres@127.0.0.1:${ro.port}/postgres?target_session_attrs=read-write`),
      /does not accept target_session_attrs=read-write sessions: its sessions are read-only/,
    );
  } finally {
    await Promise.all([ro.destroy(), rw.destroy()]);
  }
});

test('a pool client the server ends while it is checked out and idle: no crash, its next query rejects, the pool replaces it', async () => {
  // what a PostgreSQL restart did to a relay in CI: FATAL 57P01 on a checked-out connection between
  // statements was an 'error' event without a listener, and the process died
  const pgs = await LocalPostgres.start();
  const pool = new pg.Pool({ ...connectionConfig(pgs.url()), max: 1 });
  pool.on('error', () => {});
  const uncaught: Error[] = [];
  const onUncaught = (err: Error) => uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  try {
    const held = await pool.connect();
    const pid = (await held.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    // no 'error' listener of the test's own: only DbClient's stands between the event and a crash
    const ended = new Promise<void>((resolve) => held.once('end', resolve));
    await pgs.query(`SELECT pg_terminate_backend(${pid})`);
    await ended;
    await assert.rejects(held.query('SELECT 1'), /not queryable|terminat|Connection terminated/);
    held.release();
    const r = await pool.query<{ one: number }>('SELECT 1 AS one');
    assert.equal(r.rows[0]!.one, 1, 'the pool connects a new client');
    assert.deepEqual(uncaught, []);
  } finally {
    process.off('uncaughtException', onUncaught);
    await pool.end();
    await pgs.destroy();
  }
});

test('?host= lists against real servers: a down TCP host skipped for a socket directory, and read-write chosen among query hosts', async () => {
  const [ro, rw] = await Promise.all([LocalPostgres.start({ settings: { default_transaction_read_only: 'on' } }), LocalPostgres.start()]);
  const down = await getFreePort();
  try {
    const portOf = async (c: pg.ClientBase) => Number((await c.query<{ p: string }>(`SELECT current_setting('port') AS p`)).rows[0]!.p);
    const viaSocket = await connect(
      `postgres://postgres@/postgres?host=127.0.0.1,${encodeURIComponent(rw.dir)}&port=${down},${rw.port}&target_session_attrs=any`,
    );
    try {
      assert.equal(await portOf(viaSocket), rw.port);
      const [row] = (await viaSocket.query<{ addr: string | null }>('SELECT inet_client_addr()::text AS addr')).rows;
      assert.equal(row!.addr, null, 'connected through the unix socket (no client address)');
    } finally {
      await viaSocket.end();
    }
    const url = `postgres://postgres@/postgres?host=127.0.0.1,127.0.0.1,127.0.0.1&port=${down},${ro.port},${rw.port}&target_session_attrs=read-write`;
    const c = await connect(url);
    try {
      assert.equal(await portOf(c), rw.port);
    } finally {
      await c.end();
    }
    const pool = new pg.Pool({ ...connectionConfig(url), max: 1 });
    try {
      assert.equal(await portOf(pool as unknown as pg.ClientBase), rw.port, 'pool');
    } finally {
      await pool.end();
    }
  } finally {
    await Promise.all([ro.destroy(), rw.destroy()]);
  }
});

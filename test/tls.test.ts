// TLS against real servers: PostgreSQL with ssl=on and nats-server with --tls/--tlsverify, both
// presenting a certificate for 127.0.0.1 signed by a CA made here with openssl.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect as natsConnect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { TestEnv, BASE_TOML, RelayProcess, runCli, sleep } from './fixture.js';

const execFileP = promisify(execFile);
const OPENSSL = '/usr/bin/openssl';

interface Certs {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate, both signed by it. */
async function makeCerts(): Promise<Certs> {
  const dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-tls-'));
  const f = (name: string) => join(dir, name);
  const ssl = (args: string[]) => execFileP(OPENSSL, args, { cwd: dir });
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await ssl([
    'req',
    '-x509',
    ...newKey,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-days',
    '2',
    '-subj',
    '/CN=fraiseql-relay test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const leaf = async (name: string, cn: string, ext: string, serial: string) => {
    await writeFile(f(`${name}.ext`), `basicConstraints=CA:FALSE\n${ext}\n`);
    await ssl(['req', '-new', ...newKey, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${cn}`]);
    await ssl([
      'x509',
      '-req',
      '-in',
      f(`${name}.csr`),
      '-CA',
      f('ca.pem'),
      '-CAkey',
      f('ca.key'),
      '-set_serial',
      serial,
      '-days',
      '2',
      '-extfile',
      f(`${name}.ext`),
      '-out',
      f(`${name}.pem`),
    ]);
  };
  await leaf('server', 'localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth', '2');
  await leaf('client', 'fraiseql-relay', 'extendedKeyUsage=clientAuth', '3');
  return {
    dir,
    ca: f('ca.pem'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
  };
}

/** A TOML string (JSON escapes are valid in TOML basic strings). */
const q = (s: string) => JSON.stringify(s);

let certs: Certs;
let env: TestEnv;
/** The relay's environment: the database URL demands TLS with full verification. */
let tlsEnv: NodeJS.ProcessEnv;
let tlsConfig: string;
let relay: RelayProcess | undefined;

before(async () => {
  certs = await makeCerts();
  env = await TestEnv.create({
    pg: { ssl: { certFile: certs.serverCert, keyFile: certs.serverKey } },
    nats: { tls: { certFile: certs.serverCert, keyFile: certs.serverKey, clientCaFile: certs.ca } },
  });
  tlsEnv = { ...env.env, DATABASE_URL: `${env.dbUrl}?sslmode=verify-full` };
  tlsConfig = join(env.dir, 'tls.toml');
  await writeFile(
    tlsConfig,
    BASE_TOML.replace('retention = "24h"', `retention = "24h"\ndatabase_ca_file = ${q(certs.ca)}`) +
      `\n[relay.nats]\ntls = true\nca_file = ${q(certs.ca)}\ncert_file = ${q(certs.clientCert)}\nkey_file = ${q(certs.clientKey)}\n`,
  );
});

after(async () => {
  if (relay && relay.child.exitCode === null) await relay.kill();
  await env?.destroy();
  if (certs) await rm(certs.dir, { recursive: true, force: true });
});

/** A client of the test's own, with the CA and the client certificate the server demands. */
function natsTls(): Promise<NatsConnection> {
  return natsConnect({ servers: env.nats.url, tls: { caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey } });
}

test('migrate, check and run over TLS: an emitted event reaches JetStream and the walsender connection is encrypted', async () => {
  const m = await runCli(['migrate', '-c', tlsConfig], tlsEnv);
  assert.equal(m.code, 0, `migrate over TLS failed:\n${m.stdout}${m.stderr}`);

  const c = await runCli(['check', '-c', tlsConfig], tlsEnv);
  assert.equal(c.code, 0, `check over TLS failed:\n${c.stdout}${c.stderr}`);
  assert.match(c.stdout, /^ok\s+postgres\s+connected/m, c.stdout);
  assert.match(c.stdout, /^ok\s+nats\s+connected/m, c.stdout);

  relay = new RelayProcess(join(env.dir, 'tls-relay.log'), ['run', '-c', tlsConfig], tlsEnv);
  await relay.waitForLog('relay running');
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.tls', '{"a":1}')`);

  const nc = await natsTls();
  try {
    const jsm = await jetstreamManager(nc);
    let messages = 0;
    for (const deadline = Date.now() + 20_000; messages < 1 && Date.now() < deadline;) {
      messages = await jsm.streams.info('FRAISEQL').then(
        (i) => i.state.messages,
        () => 0,
      );
      if (messages < 1) await sleep(50);
    }
    assert.equal(messages, 1, `the event did not reach the stream:\n${relay.output().slice(-4000)}`);
    const msg = await jsm.streams.getMessage('FRAISEQL', { last_by_subj: 'fraiseql.order.tls' });
    assert.ok(msg, 'no message on fraiseql.order.tls');
    assert.deepEqual(msg.json<{ entity: unknown }>().entity, { a: 1 });
  } finally {
    await nc.close();
  }

  // Every connection the relay holds, the replication (walsender) one included, uses TLS; the
  // test's own connection (no sslmode) does not, so the column can tell them apart.
  const rows = await env.sql<{ backend_type: string; application_name: string; ssl: boolean; me: boolean }>(
    `SELECT a.backend_type, a.application_name, s.ssl, a.pid = pg_backend_pid() AS me
       FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
      WHERE a.application_name LIKE 'fraiseql-relay%' OR a.pid = pg_backend_pid()`,
  );
  const walsenders = rows.filter((r) => r.backend_type === 'walsender');
  assert.equal(walsenders.length, 1, JSON.stringify(rows));
  assert.equal(walsenders[0]!.ssl, true, 'the replication connection is not encrypted');
  const relayRows = rows.filter((r) => !r.me);
  assert.ok(
    relayRows.every((r) => r.ssl),
    `a relay connection without TLS: ${JSON.stringify(relayRows)}`,
  );
  assert.equal(rows.find((r) => r.me)?.ssl, false, 'the plain test connection reports ssl');

  relay.child.kill('SIGTERM');
  assert.equal(await relay.exited, 0, relay.output().slice(-4000));
});

test('without the CA file, check refuses both servers with a certificate error and exits 1', async () => {
  const noCa = join(env.dir, 'no-ca.toml');
  await writeFile(noCa, BASE_TOML + `\n[relay.nats]\ntls = true\ncert_file = ${q(certs.clientCert)}\nkey_file = ${q(certs.clientKey)}\n`);
  const r = await runCli(['check', '-c', noCa], tlsEnv);
  assert.equal(r.code, 1, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /^FAIL\s+postgres\s+cannot connect \(\[database\] url\): .*certificate/m, r.stdout);
  assert.match(r.stdout, /^FAIL\s+nats\s+cannot connect \(\[observers\] nats_url\): .*certificate/m, r.stdout);
  // and says what to set
  assert.match(r.stdout, /postgres .*set \[relay\] database_ca_file to the CA bundle that signed it/, r.stdout);
  assert.match(r.stdout, /nats .*set \[relay\.nats\] ca_file to the CA bundle that signed it/, r.stdout);
  assert.doesNotMatch(r.stdout, /^ok\s+(postgres|nats)\b/m);
});

test('a relay embedded as a library verifies PostgreSQL against database_ca_file as the CLI does', async () => {
  const { loadConfig } = await import('../src/config/load.js');
  const { createLogger } = await import('../src/util/log.js');
  const { Relay } = await import('../src/relay/relay.js');
  // this process never ran the CLI: only Relay itself can apply [relay] database_ca_file
  const embedded = new Relay(loadConfig(tlsConfig, tlsEnv), createLogger('silent'), { publishTimeoutMs: 2000 });
  await embedded.start();
  try {
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.tls', '{"a":2}')`);
    const nc = await natsTls();
    try {
      const jsm = await jetstreamManager(nc);
      let entity: unknown = null;
      for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(50)) {
        const m = await jsm.streams.getMessage('FRAISEQL', { last_by_subj: 'fraiseql.order.tls' }).catch(() => null);
        entity = m?.json<{ entity: unknown }>().entity ?? null;
        if ((entity as { a?: number } | null)?.a === 2) break;
      }
      assert.deepEqual(entity, { a: 2 });
    } finally {
      await nc.close();
    }
  } finally {
    await embedded.stop();
  }
});

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import {
  ConfigError,
  defaultConsumerName,
  loadConfig,
  parseByteSize,
  parseConfig,
  parseDuration,
  type ServiceNameSource,
} from '../src/config/load.js';
import { defaultRelayName, LEGACY_RELAY_NAME } from '../src/config/service.js';

const ENV = {
  DATABASE_URL: 'postgres://app:s3cr3t-pw@db.internal:5432/orders',
  NATS_URL: 'nats://relay:n4ts-t0ken@nats.internal:4222',
};

/** The README's complete example configuration, lines numbered for the assertions below. */
const FULL = `[project]
name = "inventory-service"          # the service name
version = "1.2.0"

[database]
type = "postgresql"
url = "\${DATABASE_URL}"

[observers]
backend = "nats"
nats_url = "\${NATS_URL}"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
subscription_topic = "order_created"

[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_reserve_inventory"

[[observers.rules]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.created"
[[observers.rules.actions]]
type = "webhook"
url_env = "ORDER_WEBHOOK_URL"

[relay]
schema = "fraiseql_relay"
listen = "0.0.0.0:9464"
max_in_flight = 1024
retention = "24h"

[relay.stream]
name = "FRAISEQL"
create = true
duplicate_window = "10m"
`;

/** Runs fn, expects a ConfigError, returns it. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  assert.fail('expected a ConfigError');
}

const minimal = (rest = ''): string => `[project]\nname = "svc"\n[database]\nurl = "\${DATABASE_URL}"\n${rest}`;

describe('parseConfig: a valid file', () => {
  it('reads the design example and fills every default', () => {
    const c = parseConfig(FULL, 'fraiseql.toml', ENV);
    assert.equal(c.file, resolve('fraiseql.toml'));
    assert.deepEqual(c.project, { name: 'inventory-service', source: 'project', from: '[project] name' });
    assert.deepEqual(c.database, { type: 'postgresql', url: ENV.DATABASE_URL });
    assert.equal(c.observers.backend, 'nats');
    assert.equal(c.observers.nats_url, ENV.NATS_URL);
    assert.deepEqual(c.observers.publish, [
      { mutation: 'create_order', subject: 'fraiseql.order.created', subscription_topic: 'order_created', actions: [] },
    ]);
    assert.deepEqual(c.observers.subscribe, [
      {
        subject: 'fraiseql.order.created',
        handler: 'fn_reserve_inventory',
        consumer: 'inventory-service-fraiseql_order_created',
        max_deliver: 5,
        ack_wait: 30_000,
        backoff: [],
        concurrency: 1,
        batch: 100,
        max_wait: 0,
        order_by: null,
      },
    ]);
    assert.deepEqual(c.observers.rules, [
      {
        table: 'tb_order',
        event: 'INSERT',
        subject: 'fraiseql.order.created',
        before_image: false,
        actions: [{ type: 'webhook', url_env: 'ORDER_WEBHOOK_URL', method: 'POST', headers: {}, timeout: 30_000, max_attempts: 8 }],
      },
    ]);
    assert.deepEqual(c.relay, {
      schema: 'fraiseql_relay',
      // derived from [project] name and the database of DATABASE_URL (".../orders")
      slot: 'fraiseql_relay_inventory_service_orders',
      publication: 'fraiseql_relay_inventory_service_orders',
      derivedNames: {
        slot: true,
        publication: true,
        from: 'the service name "inventory-service" ([project] name) and the database name "orders"',
      },
      listen: '0.0.0.0:9464',
      max_in_flight: 1024,
      max_in_flight_bytes: 64 * 1024 * 1024,
      retention: 24 * 3_600_000,
      shutdown_timeout: 10_000,
      plugin: 'pgoutput',
      subscription_prefix: 'fraiseql.subscription',
      heartbeat: 10_000,
      heartbeat_timeout: 60_000,
      max_lag: 1024 ** 3,
      stream: { name: 'FRAISEQL', create: true, duplicate_window: 600_000, subjects: [], storage: 'file', replicas: 1 },
      nats: { tls: false },
      redis: { stream_prefix: '', duplicate_window: 600_000 },
    });
    // optional keys without a default stay absent (change_log absent: the relay auto-detects the table)
    for (const k of ['change_log', 'schema_file', 'database_ca_file']) assert.ok(!(k in c.relay), k);
    assert.deepEqual(c.ignoredKeys, []);
  });

  it('fills defaults when [observers] and [relay] are absent', () => {
    const c = parseConfig(minimal(), 'f.toml', ENV);
    assert.deepEqual(c.observers, { backend: 'nats', publish: [], subscribe: [], rules: [] });
    assert.equal(c.relay.stream.name, 'FRAISEQL');
    assert.equal(c.relay.max_in_flight_bytes, 67_108_864);
    assert.equal(c.relay.plugin, 'pgoutput');
    assert.equal(c.relay.change_log, undefined);
    assert.equal(c.relay.schema_file, undefined);
    assert.equal(c.relay.database_ca_file, undefined);
    assert.equal(c.relay.subscription_prefix, 'fraiseql.subscription');
    assert.equal(c.relay.heartbeat, 10_000);
    assert.equal(c.relay.heartbeat_timeout, 60_000);
    assert.equal(c.relay.max_lag, 1_073_741_824);
    assert.equal(c.relay.stream.storage, 'file');
    assert.equal(c.relay.stream.replicas, 1);
    assert.deepEqual(c.relay.nats, { tls: false });
  });

  it('an empty [relay.nats] table gets its defaults too', () => {
    const c = parseConfig(minimal('[relay.nats]\n'), 'f.toml', ENV);
    assert.deepEqual(c.relay.nats, { tls: false });
  });

  it('takes explicit values for the change-log, heartbeat, lag, stream and NATS settings', () => {
    const c = parseConfig(
      minimal(`[relay]
plugin = "wal2json"
change_log = 'audit."Change Log"'
subscription_prefix = "app.subs"
heartbeat = "2s"
heartbeat_timeout = "5s"
max_lag = "256MiB"
[relay.stream]
storage = "memory"
replicas = 3
[relay.nats]
tls = true
token_env = "NATS_TOKEN"
user_env = "NATS_USER"
password_env = "NATS_PASSWORD"
`),
      'f.toml',
      ENV,
    );
    assert.equal(c.relay.plugin, 'wal2json');
    assert.equal(c.relay.change_log, 'audit."Change Log"');
    assert.equal(c.relay.subscription_prefix, 'app.subs');
    assert.equal(c.relay.heartbeat, 2_000);
    assert.equal(c.relay.heartbeat_timeout, 5_000);
    assert.equal(c.relay.max_lag, 256 * 1024 * 1024);
    assert.equal(c.relay.stream.storage, 'memory');
    assert.equal(c.relay.stream.replicas, 3);
    assert.deepEqual(c.relay.nats, { tls: true, token_env: 'NATS_TOKEN', user_env: 'NATS_USER', password_env: 'NATS_PASSWORD' });
    assert.equal(parseConfig(minimal('[relay]\nchange_log = false\n'), 'f.toml', ENV).relay.change_log, false);
  });

  it('publishes by entity (and optional operation) without a mutation', () => {
    const c = parseConfig(
      minimal(`[observers]
nats_url = "nats://h:4222"
[[observers.publish]]
entity = "Order"
operation = "update"
subject = "fraiseql.order.updated"
[[observers.publish]]
entity = "Order"
operation = "CREATE"
subject = "fraiseql.order.created"
[[observers.publish]]
entity = "Order_Line"
subject = "fraiseql.order_line.changed"
[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
`),
      'f.toml',
      ENV,
    );
    assert.deepEqual(c.observers.publish, [
      { entity: 'Order', operation: 'UPDATE', subject: 'fraiseql.order.updated', actions: [] },
      { entity: 'Order', operation: 'INSERT', subject: 'fraiseql.order.created', actions: [] }, // CREATE is INSERT's alias
      { entity: 'Order_Line', subject: 'fraiseql.order_line.changed', actions: [] },
      { mutation: 'create_order', subject: 'fraiseql.order.created', actions: [] },
    ]);
  });

  it('takes explicit values: durations, sizes, lower-case events, actions, consumer overrides', () => {
    const c = parseConfig(
      minimal(`
[observers]
backend = "nats"
nats_url = "nats://localhost:4222"
[[observers.subscribe]]
subject = "fraiseql.order.*"
handler = 'inventory."Reserve Fn"'
consumer = "inventory"
max_deliver = 4
ack_wait = "1m30s"
backoff = ["1s", "10s", "1m"]
concurrency = 8
[[observers.rules]]
table = "public.tb_item"
event = "update"
before_image = true
[[observers.rules.actions]]
type = "webhook"
url = "https://hooks.example.com/item"
method = "put"
headers = { "X-Source" = "relay" }
timeout = "5s"
max_attempts = 3
signing_secret_env = "HOOK_SECRET"
[relay]
max_in_flight_bytes = "16MB"
shutdown_timeout = "500ms"
[relay.stream]
subjects = ["fraiseql.>"]
create = false
`),
      'f.toml',
      ENV,
    );
    const s = c.observers.subscribe[0];
    assert.equal(s?.consumer, 'inventory');
    assert.equal(s?.handler, 'inventory."Reserve Fn"');
    assert.equal(s?.ack_wait, 90_000);
    assert.deepEqual(s?.backoff, [1_000, 10_000, 60_000]);
    assert.equal(s?.concurrency, 8);
    const r = c.observers.rules[0];
    assert.equal(r?.event, 'UPDATE');
    assert.equal(r?.subject, undefined);
    assert.equal(r?.before_image, true);
    assert.deepEqual(r?.actions[0], {
      type: 'webhook',
      url: 'https://hooks.example.com/item',
      method: 'PUT',
      headers: { 'X-Source': 'relay' },
      timeout: 5_000,
      max_attempts: 3,
      signing_secret_env: 'HOOK_SECRET',
    });
    assert.equal(c.relay.max_in_flight_bytes, 16_000_000);
    assert.equal(c.relay.shutdown_timeout, 500);
    assert.deepEqual(c.relay.stream.subjects, ['fraiseql.>']);
    assert.equal(c.relay.stream.create, false);
  });

  it("accepts FraiseQL's own sections and keys, and reports the ignored observers keys", () => {
    const c = parseConfig(
      minimal(`pool_size = \${POOL_SIZE}
password = "\${DB_PASSWORD}"
[fraiseql]
schema_file = "schema.json"
[server]
port = \${PORT}
[auth]
jwt_secret = "\${JWT_SECRET}"
[observers]
enabled = true
redis_url = "redis://localhost"
max_concurrency = 4
nats_url = "nats://localhost:4222"
[[observers.rules]]
table = "tb_order"
event = "DELETE"
subject = "fraiseql.order.deleted"
[observers.rules.retry]
max_attempts = 3
`),
      'f.toml',
      ENV, // POOL_SIZE, DB_PASSWORD, PORT, JWT_SECRET unset: settings the relay ignores are not interpolated
    );
    assert.deepEqual(c.ignoredKeys, ['observers.enabled', 'observers.redis_url', 'observers.max_concurrency', 'observers.rules[0].retry']);
    assert.equal(c.observers.rules[0]?.event, 'DELETE');
  });
});

describe('${VAR} interpolation', () => {
  it('replaces variables inside values, leaves comments and keys alone', () => {
    const c = parseConfig(
      `[project]
name = "\${SERVICE}-svc"   # \${UNSET_IN_COMMENT}
# whole-line comment: \${ALSO_UNSET}
[database]
url = "\${DATABASE_URL}"
[relay]
max_in_flight = \${IN_FLIGHT}
listen = '\${HOST}:9464'
[relay.stream]
name = "A#\${STREAM}" # a '#' inside a string is not a comment
`,
      'f.toml',
      { ...ENV, SERVICE: 'orders', IN_FLIGHT: '64', HOST: '127.0.0.1', STREAM: 'B' },
    );
    assert.equal(c.project.name, 'orders-svc');
    assert.equal(c.database.url, ENV.DATABASE_URL);
    assert.equal(c.relay.max_in_flight, 64);
    assert.equal(c.relay.listen, '127.0.0.1:9464');
    assert.equal(c.relay.stream.name, 'A#B');
  });

  it('an unset variable names the variable, the file and the line, with a hint', () => {
    const text = FULL; // url = "${DATABASE_URL}" is on line 7
    const err = configError(() => parseConfig(text, 'fraiseql.toml', { NATS_URL: ENV.NATS_URL }));
    assert.match(err.message, /^fraiseql\.toml:7: environment variable DATABASE_URL is not set \(used in \$\{DATABASE_URL\}\)/);
    assert.ok(err.message.includes('export DATABASE_URL='), err.message);
    assert.equal(err.line, 7);
    assert.equal(err.key, 'database.url');
    assert.equal(err.file, 'fraiseql.toml');
  });

  it('reports every unset variable, one per line', () => {
    const err = configError(() => parseConfig(FULL, 'fraiseql.toml', {}));
    const lines = err.message.split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0] ?? '', /^fraiseql\.toml:7: environment variable DATABASE_URL is not set/);
    assert.match(lines[1] ?? '', /^fraiseql\.toml:11: environment variable NATS_URL is not set/);
  });

  it('refuses a value that would break out of its string (TOML injection), without echoing it', () => {
    const evil = 'x"\n[relay]\nslot = "pwned';
    const err = configError(() => parseConfig(minimal(), 'f.toml', { DATABASE_URL: evil }));
    assert.match(err.message, /^f\.toml:4: environment variable DATABASE_URL .*contains a line break/);
    assert.ok(!err.message.includes('pwned'), err.message);

    const quote = configError(() => parseConfig(minimal(), 'f.toml', { DATABASE_URL: 'postgres://a:b"c@h/d' }));
    assert.match(quote.message, /DATABASE_URL .*contains a double quote/);
    assert.ok(!quote.message.includes('b"c'), quote.message);

    const bare = configError(() => parseConfig(minimal('[relay]\nmax_in_flight = ${N}\n'), 'f.toml', { ...ENV, N: '1\nslot = "x"' }));
    assert.match(bare.message, /^f\.toml:6: environment variable N /);
  });

  it('rejects ${NAME:-default} instead of keeping it literally', () => {
    const err = configError(() => parseConfig(minimal('[relay]\nlisten = "${LISTEN:-0.0.0.0:9464}"\n'), 'f.toml', ENV));
    assert.match(err.message, /^f\.toml:6: \$\{LISTEN:-0\.0\.0\.0:9464\} in relay\.listen: defaults .* not supported/);
  });
});

describe('TOML syntax errors', () => {
  it('give file:line:column, the reason and the line with a caret', () => {
    const text = minimal('[relay]\nmax_in_flight = = 3\n');
    const err = configError(() => parseConfig(text, 'fraiseql.toml', ENV));
    const [first, ...rest] = err.message.split('\n');
    assert.match(first ?? '', /^fraiseql\.toml:6:17: invalid TOML: invalid value/);
    assert.equal(err.line, 6);
    assert.equal(err.column, 17);
    const offending = rest.find((l) => l.includes('max_in_flight = = 3'));
    assert.ok(offending, err.message);
    const caret = rest[rest.indexOf(offending) + 1] ?? '';
    assert.equal(caret.indexOf('^'), offending.indexOf('= 3'), err.message);
  });

  it('points at the original text, not the interpolated value, and never shows a secret', () => {
    const text = `[project]\nname = "svc"\n[database]\nurl = "\${DATABASE_URL}" oops\n`;
    const err = configError(() => parseConfig(text, 'f.toml', ENV));
    assert.match(err.message, /^f\.toml:4:25: invalid TOML/);
    assert.ok(err.message.includes('url = "${DATABASE_URL}" oops'), err.message);
    assert.ok(!err.message.includes('s3cr3t-pw'), err.message);
  });
});

describe('validation errors', () => {
  it('an unknown key names the full path and suggests the closest known key', () => {
    const err = configError(() => parseConfig(minimal('[relay]\nmax_in_flihgt = 10\n'), 'fraiseql.toml', ENV));
    assert.equal(err.message, 'fraiseql.toml:6: relay.max_in_flihgt: unknown key in [relay]; did you mean "max_in_flight"?');
    assert.equal(err.key, 'relay.max_in_flihgt');
    assert.equal(err.line, 6);
  });

  it('unknown keys in nested tables and at the top level', () => {
    const err = configError(() =>
      parseConfig(
        minimal(`[observers]
nats_url = "nats://localhost:4222"
[[observers.subscribe]]
subject = "a.b"
handlr = "fn_x"
[relay.stream]
duplicate_windw = "1m"
[realy]
x = 1
`),
        'f.toml',
        ENV,
      ),
    );
    const lines = err.message.split('\n');
    assert.equal(lines.length, 4, err.message);
    assert.ok(
      lines.includes(
        'f.toml:9: observers.subscribe[0].handlr: unknown key in the [[observers.subscribe]] entry observers.subscribe[0]; did you mean "handler"?',
      ),
      err.message,
    );
    assert.ok(
      lines.some((l) => l.startsWith('f.toml:7: observers.subscribe[0].handler: is required')),
      err.message,
    );
    assert.ok(
      lines.includes('f.toml:11: relay.stream.duplicate_windw: unknown key in [relay.stream]; did you mean "duplicate_window"?'),
      err.message,
    );
    assert.ok(
      lines.some((l) => l.startsWith('f.toml:12: realy: unknown top-level key; did you mean "relay"?')),
      err.message,
    );
  });

  it('an invalid backend lists the allowed values', () => {
    const err = configError(() => parseConfig(minimal('[observers]\nbackend = "kafka"\n'), 'f.toml', ENV));
    assert.equal(
      err.message,
      'f.toml:6: observers.backend: "kafka" is not a supported backend; allowed values: "nats", "webhook", "redis", "postgres"',
    );
  });

  it('an invalid handler identifier is rejected, a schema-qualified one accepted', () => {
    const sub = (handler: string): string =>
      minimal(`[observers]\nnats_url = "nats://h:4222"\n[[observers.subscribe]]\nsubject = "a.b"\nhandler = ${JSON.stringify(handler)}\n`);
    for (const good of ['fn_reserve', 'inventory.fn_reserve', '"My Fn"', 'app."weird.name"', '_f$1']) {
      assert.equal(parseConfig(sub(good), 'f.toml', ENV).observers.subscribe[0]?.handler, good);
    }
    for (const bad of ['fn reserve', '1fn', 'a.b.c', 'fn;drop table x', '']) {
      const err = configError(() => parseConfig(sub(bad), 'f.toml', ENV));
      assert.match(err.message, /^f\.toml:9: observers\.subscribe\[0\]\.handler: .* is not a valid SQL function name/, bad);
    }
  });

  it('checks NATS subjects: wildcards only where they can be used', () => {
    const err = configError(() =>
      parseConfig(
        minimal(`[observers]
nats_url = "nats://h:4222"
[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.*"
[[observers.subscribe]]
subject = "fraiseql..order"
handler = "fn"
[[observers.subscribe]]
subject = "fraiseql.>.x"
handler = "fn2"
`),
        'f.toml',
        ENV,
      ),
    );
    assert.match(err.message, /f\.toml:9: observers\.publish\[0\]\.subject: .*wildcard/);
    assert.match(err.message, /f\.toml:11: observers\.subscribe\[0\]\.subject: .*empty token/);
    assert.match(err.message, /f\.toml:14: observers\.subscribe\[1\]\.subject: .*">" may only be the last token/);
    const ok = parseConfig(
      minimal('[observers]\nnats_url = "nats://h:4222"\n[[observers.subscribe]]\nsubject = "fraiseql.*.created.>"\nhandler = "fn"\n'),
      'f.toml',
      ENV,
    );
    assert.equal(ok.observers.subscribe[0]?.consumer, 'svc-fraiseql___created__');
  });

  it('rule and action consistency, relay names and numbers', () => {
    const err = configError(() =>
      parseConfig(
        minimal(`[observers]
backend = "webhook"
[[observers.rules]]
table = "tb_order"
event = "UPSERT"
[[observers.rules]]
table = "tb_order"
event = "INSERT"
[[observers.rules.actions]]
type = "webhook"
url = "https://x.example"
url_env = "X_URL"
[relay]
slot = "Bad-Slot"
max_in_flight = 0
max_in_flight_bytes = "12 parsecs"
retention = "forever"
`),
        'f.toml',
        ENV,
      ),
    );
    assert.match(err.message, /f\.toml:9: observers\.rules\[0\]\.event: "UPSERT" is not a row event/);
    assert.match(err.message, /f\.toml:15: observers\.rules\[1\]\.actions\[0\]\.url: is set together with url_env/);
    assert.match(err.message, /f\.toml:18: relay\.slot: "Bad-Slot" must start with a lower-case letter/);
    assert.match(err.message, /f\.toml:19: relay\.max_in_flight: must be a whole number of at least 1, not the number 0/);
    assert.match(err.message, /f\.toml:20: relay\.max_in_flight_bytes: "12 parsecs" is not a valid size/);
    assert.match(err.message, /f\.toml:21: relay\.retention: "forever" is not a valid duration/);

    const nothing = configError(() =>
      parseConfig(minimal('[observers]\nbackend = "webhook"\n[[observers.rules]]\ntable = "t"\nevent = "INSERT"\n'), 'f.toml', ENV),
    );
    assert.match(nothing.message, /^f\.toml:7: observers\.rules\[0\]: this rule has neither a subject nor actions/);
  });

  it('a publish entry needs a mutation or an entity, not both; operation needs an entity', () => {
    const publish = (body: string): string =>
      minimal(`[observers]\nnats_url = "nats://h:4222"\n[[observers.publish]]\n${body}subject = "a.b"\n`);
    const neither = configError(() => parseConfig(publish(''), 'f.toml', ENV));
    assert.match(
      neither.message,
      /^f\.toml:7: observers\.publish\[0\]: this publish entry has neither a mutation nor an entity, so nothing would trigger it; add mutation = "create_order" .* or entity = "Order"/,
    );
    assert.equal(neither.problems.length, 1, neither.message);

    const both = configError(() => parseConfig(publish('mutation = "create_order"\nentity = "Order"\n'), 'f.toml', ENV));
    assert.match(both.message, /^f\.toml:9: observers\.publish\[0\]\.entity: is set together with mutation; keep exactly one/);

    const orphan = configError(() => parseConfig(publish('mutation = "create_order"\noperation = "INSERT"\n'), 'f.toml', ENV));
    assert.match(orphan.message, /^f\.toml:9: observers\.publish\[0\]\.operation: only applies to an entity entry/);

    const op = configError(() => parseConfig(publish('entity = "Order"\noperation = "UPSERT"\n'), 'f.toml', ENV));
    assert.equal(
      op.message,
      'f.toml:9: observers.publish[0].operation: "UPSERT" is not a change-log operation; allowed values: "INSERT", "UPDATE", "DELETE", "CREATE", "CUSTOM"',
    );

    const entity = configError(() => parseConfig(publish('entity = "order-line"\n'), 'f.toml', ENV));
    assert.match(entity.message, /^f\.toml:8: observers\.publish\[0\]\.entity: "order-line" is not a GraphQL type name/);
  });

  it('an invalid plugin or stream storage lists the allowed values', () => {
    const err = configError(() =>
      parseConfig(minimal('[relay]\nplugin = "test_decoding"\n[relay.stream]\nstorage = "disk"\nreplicas = 7\n'), 'f.toml', ENV),
    );
    assert.equal(
      err.message,
      'f.toml:6: relay.plugin: "test_decoding" is not a supported logical decoding plugin; allowed values: "pgoutput", "wal2json"\n' +
        'f.toml:8: relay.stream.storage: "disk" is not a supported stream storage; allowed values: "file", "memory"\n' +
        'f.toml:9: relay.stream.replicas: must be a whole number from 1 to 5, not the number 7',
    );
  });

  it('heartbeat_timeout must be greater than heartbeat', () => {
    for (const relay of ['heartbeat = "30s"\nheartbeat_timeout = "30s"\n', 'heartbeat = "1m"\nheartbeat_timeout = "30s"\n']) {
      const err = configError(() => parseConfig(minimal(`[relay]\n${relay}`), 'f.toml', ENV));
      assert.match(err.message, /^f\.toml:7: relay\.heartbeat_timeout: \(30s\) must be greater than heartbeat \((30s|1m)\)/, relay);
    }
    // against the default heartbeat (10s)
    const low = configError(() => parseConfig(minimal('[relay]\nheartbeat_timeout = "5s"\n'), 'f.toml', ENV));
    assert.match(low.message, /relay\.heartbeat_timeout: \(5s\) must be greater than heartbeat \(10s\)/);
    const zero = configError(() => parseConfig(minimal('[relay]\nheartbeat = "0s"\n'), 'f.toml', ENV));
    assert.match(zero.message, /^f\.toml:6: relay\.heartbeat: must be longer than zero/);
  });

  it('change_log is a schema-qualified table name or false', () => {
    const err = configError(() => parseConfig(minimal('[relay]\nchange_log = "tb_entity_change_log"\n'), 'f.toml', ENV));
    assert.match(err.message, /^f\.toml:6: relay\.change_log: "tb_entity_change_log" is not a schema-qualified table name/);
    const yes = configError(() => parseConfig(minimal('[relay]\nchange_log = true\n'), 'f.toml', ENV));
    assert.match(yes.message, /^f\.toml:6: relay\.change_log: cannot be true: leave it out to detect "core\.tb_entity_change_log"/);
  });

  it('[relay.nats]: typos get a suggestion; paired keys and env names are checked', () => {
    const typo = configError(() => parseConfig(minimal('[relay.nats]\ncreds_fiel = "nats.creds"\n'), 'f.toml', ENV));
    assert.equal(typo.message, 'f.toml:6: relay.nats.creds_fiel: unknown key in [relay.nats]; did you mean "creds_file"?');
    assert.equal(typo.key, 'relay.nats.creds_fiel');

    const err = configError(() =>
      parseConfig(
        minimal('[relay.nats]\ncert_file = "client.pem"\npassword_env = "NATS_PASSWORD"\ntoken_env = "NATS-TOKEN"\n'),
        'f.toml',
        ENV,
      ),
    );
    assert.match(err.message, /f\.toml:6: relay\.nats\.cert_file: is set without key_file/);
    assert.match(err.message, /f\.toml:7: relay\.nats\.password_env: is set without user_env/);
    assert.match(err.message, /f\.toml:8: relay\.nats\.token_env: "NATS-TOKEN" is not an environment variable name/);
  });

  it('missing required keys point at their table and say what to add', () => {
    const err = configError(() => parseConfig('[project]\nversion = "1"\n[database]\ntype = "postgresql"\n', 'f.toml', ENV));
    assert.equal(
      err.message,
      'f.toml:1: project.name: is required; add name = "<service name>" under [project] (it names the durable consumers)\n' +
        'f.toml:3: database.url: is required; add url = "${DATABASE_URL}" under [database]',
    );
  });

  it('nats_url is required when anything goes through NATS', () => {
    const text = minimal('[observers]\n[[observers.publish]]\nmutation = "m"\nsubject = "a.b"\n');
    const err = configError(() => parseConfig(text, 'f.toml', ENV));
    assert.match(err.message, /^f\.toml:5: observers\.nats_url is required when backend = "nats"/);
    assert.doesNotThrow(() => parseConfig(minimal('[observers]\nbackend = "nats"\n'), 'f.toml', ENV));
  });

  it('two subscriptions cannot share a durable consumer', () => {
    const text = minimal(`[observers]
nats_url = "nats://h:4222"
[[observers.subscribe]]
subject = "a.b"
handler = "fn_one"
[[observers.subscribe]]
subject = "a.b"
handler = "fn_two"
`);
    const err = configError(() => parseConfig(text, 'f.toml', ENV));
    assert.match(
      err.message,
      /^f\.toml:11: observers\.subscribe\[1\]: durable consumer "svc-a_b" is also used by observers\.subscribe\[0\]/,
    );
  });

  it('backoff needs max_deliver greater than its length', () => {
    const text = minimal(
      '[observers]\nnats_url = "nats://h:4222"\n[[observers.subscribe]]\nsubject = "a.b"\nhandler = "fn"\nmax_deliver = 2\nbackoff = ["1s", "2s"]\n',
    );
    assert.match(
      configError(() => parseConfig(text, 'f.toml', ENV)).message,
      /^f\.toml:10: observers\.subscribe\[0\]\.max_deliver: \(2\) must be greater/,
    );
  });
});

describe('[observers] versus [[observers]]', () => {
  it('explains the invalid mix and shows the [[observers.rules]] spelling', () => {
    const text = minimal(`
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
`);
    const err = configError(() => parseConfig(text, 'fraiseql.toml', ENV));
    const first = err.message.split('\n')[0] ?? '';
    assert.match(first, /^fraiseql\.toml:10: TOML cannot have both an \[observers\] table .*line 6.* top-level \[\[observers\]\] array/);
    assert.ok(err.message.includes('[[observers.rules]]'), err.message);
    assert.ok(err.message.includes('[[observers.rules.actions]]'), err.message);
    assert.match(err.message, /line 10: \[\[observers\]\] +-> {2}\[\[observers\.rules\]\]/);
    assert.match(err.message, /line 15: \[\[observers\.actions\]\] +-> {2}\[\[observers\.rules\.actions\]\]/);
    assert.equal(err.line, 10);
  });

  it('accepts a top-level [[observers]] array of rules when there is no [observers] table', () => {
    const text = minimal(`
[[observers]]
table = "tb_order"
event = "INSERT"
subject = "fraiseql.order.created"

[[observers.actions]]
type = "webhook"
url_env = "ORDER_WEBHOOK_URL"

[observers.retry]
max_attempts = 5

[[observers]]
table = "tb_item"
event = "update"
subject = "fraiseql.item.updated"
`);
    const c = parseConfig(text, 'f.toml', { DATABASE_URL: ENV.DATABASE_URL, FRAISEQL_NATS_URL: 'nats://h:4222' });
    assert.equal(c.observers.backend, 'nats');
    assert.equal(c.observers.nats_url, 'nats://h:4222');
    assert.deepEqual(c.observers.publish, []);
    assert.deepEqual(
      c.observers.rules.map((r) => [r.table, r.event, r.subject, r.actions.map((a) => a.url_env)]),
      [
        ['tb_order', 'INSERT', 'fraiseql.order.created', ['ORDER_WEBHOOK_URL']],
        ['tb_item', 'UPDATE', 'fraiseql.item.updated', []],
      ],
    );
    assert.deepEqual(c.ignoredKeys, ['observers[0].retry']);

    const noUrl = configError(() => parseConfig(text, 'f.toml', { DATABASE_URL: ENV.DATABASE_URL }));
    assert.match(noUrl.message, /^f\.toml:6: observers: .*export NATS_URL \(or FRAISEQL_NATS_URL\)/);
  });

  it('explains [[observers.publish]] swallowed by a top-level rule', () => {
    const text = minimal(`[[observers]]
table = "tb_order"
event = "INSERT"
subject = "a.b"
[[observers.publish]]
mutation = "m"
subject = "c.d"
`);
    const err = configError(() => parseConfig(text, 'f.toml', { ...ENV }));
    assert.match(
      err.message,
      /^f\.toml:9: observers\[0\]\.publish: unknown key in a table rule\. With a top-level \[\[observers\]\] array/,
    );
  });
});

describe('secrets', () => {
  it('never appear in validation errors', () => {
    const text = `[project]
name = "svc"
[database]
url = "\${DATABASE_URL}"
pool = 3
[observers]
nats_url = "\${NATS_URL}"
backend = "postgers"
[relay]
max_in_flihgt = 1
`;
    const err = configError(() => parseConfig(text, 'f.toml', ENV));
    assert.match(err.message, /observers\.backend/);
    assert.match(err.message, /"postgers" is not a supported backend; allowed values: "nats", "webhook", "redis", "postgres"/);
    for (const secret of ['s3cr3t-pw', 'n4ts-t0ken', ENV.DATABASE_URL, ENV.NATS_URL]) {
      assert.ok(!err.message.includes(secret), `${secret} in ${err.message}`);
    }
  });

  it('a wrongly typed url is named, not shown', () => {
    const err = configError(() =>
      parseConfig('[project]\nname = "svc"\n[database]\nurl = ["postgres://app:hunter2@h/db"]\n[observers]\nnats_url = ""\n', 'f.toml', {}),
    );
    assert.match(err.message, /f\.toml:4: database\.url: must be a PostgreSQL connection URL/);
    assert.match(err.message, /f\.toml:6: observers\.nats_url: must not be empty/);
    assert.ok(!err.message.includes('hunter2'), err.message);
  });

  it('are masked in a syntax error next to a literal URL', () => {
    const text = '[project]\nname = "svc"\n[database]\nurl = "postgres://app:hunter2@h/db"\nbroken = \n';
    const err = configError(() => parseConfig(text, 'f.toml', {}));
    assert.match(err.message, /^f\.toml:5:\d+: invalid TOML/);
    assert.ok(!err.message.includes('hunter2'), err.message);
  });
});

describe('loadConfig', () => {
  it('reads a file and resolves its path; a missing file is a ConfigError', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fraiseql-relay-config-'));
    try {
      const file = join(dir, 'fraiseql.toml');
      writeFileSync(file, FULL);
      const c = loadConfig(file, ENV);
      assert.equal(c.file, file);
      assert.equal(c.project.name, 'inventory-service');

      const missing = configError(() => loadConfig(join(dir, 'nope.toml'), ENV));
      assert.match(missing.message, /nope\.toml: cannot read the configuration file: the file does not exist/);
      assert.equal(missing.exitCode, 2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('file paths', () => {
  it('are resolved relative to the directory of the configuration file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fraiseql-relay-config-'));
    try {
      const file = join(dir, 'conf', 'fraiseql.toml');
      mkdirSync(join(dir, 'conf'));
      writeFileSync(
        file,
        minimal(`[relay]
schema_file = "schema.compiled.json"
database_ca_file = "../certs/pg-ca.pem"
[relay.nats]
ca_file = "certs/nats-ca.pem"
cert_file = "./certs/client.pem"
key_file = "/etc/nats/client.key"
creds_file = "nats.creds"
nkey_seed_file = "seed.nk"
`),
      );
      const c = loadConfig(file, ENV);
      assert.equal(c.relay.schema_file, join(dir, 'conf', 'schema.compiled.json'));
      assert.equal(c.relay.database_ca_file, join(dir, 'certs', 'pg-ca.pem'));
      assert.deepEqual(c.relay.nats, {
        tls: false,
        ca_file: join(dir, 'conf', 'certs', 'nats-ca.pem'),
        cert_file: join(dir, 'conf', 'certs', 'client.pem'),
        key_file: '/etc/nats/client.key',
        creds_file: join(dir, 'conf', 'nats.creds'),
        nkey_seed_file: join(dir, 'conf', 'seed.nk'),
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // a relative configuration path: relative to its directory, not to the working directory
    const c = parseConfig(minimal('[relay]\nschema_file = "schema.json"\n'), 'deploy/fraiseql.toml', ENV);
    assert.equal(c.relay.schema_file, resolve('deploy', 'schema.json'));
    const empty = configError(() => parseConfig(minimal('[relay]\nschema_file = ""\n'), 'f.toml', ENV));
    assert.match(empty.message, /^f\.toml:6: relay\.schema_file: must not be empty; expected a file path/);
  });
});

describe('parseDuration', () => {
  it('parses units and combinations into milliseconds', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('10s'), 10_000);
    assert.equal(parseDuration('10m'), 600_000);
    assert.equal(parseDuration('24h'), 86_400_000);
    assert.equal(parseDuration('7d'), 604_800_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('1m30s250ms'), 90_250);
    assert.equal(parseDuration('1.5s'), 1_500);
    assert.equal(parseDuration('0s'), 0);
  });

  it('throws on garbage', () => {
    for (const bad of ['', '10', 'ten seconds', '10 s', '5w', 's', '1h-30m', '1.s']) {
      assert.throws(() => parseDuration(bad), Error, bad);
    }
    assert.throws(() => parseDuration('30'), /no unit/);
  });

  it('byte sizes', () => {
    assert.equal(parseByteSize(1024), 1024);
    assert.equal(parseByteSize('64MiB'), 67_108_864);
    assert.equal(parseByteSize('16MB'), 16_000_000);
    assert.equal(parseByteSize('512KiB'), 524_288);
    assert.throws(() => parseByteSize('12 parsecs'));
    assert.throws(() => parseByteSize(-1));
  });
});

describe('durations and sizes within what the runtime can do', () => {
  const TIMER_MAX = 2 ** 31 - 1;
  const NATS_MAX = Math.floor((2 ** 63 - 1) / 1e6);
  const sub = (keys: string) =>
    minimal(`[observers]\nnats_url = "nats://h:4222"\n[[observers.subscribe]]\nsubject = "a.b"\nhandler = "fn"\n${keys}\n`);
  const hook = (keys: string) =>
    minimal(
      `[observers]\nnats_url = "nats://h:4222"\n[[observers.publish]]\nmutation = "m"\nsubject = "a.b"\n` +
        `[[observers.publish.actions]]\ntype = "webhook"\nurl = "https://h/x"\n${keys}\n`,
    );

  it('accepts the largest value of each key', () => {
    const c = parseConfig(
      minimal(
        `[relay]\nheartbeat = "24d20h31m23s647ms"\nheartbeat_timeout = "1000000d"\nshutdown_timeout = "24d20h31m23s647ms"\n` +
          `retention = "36500d"\nmax_lag = ${2 ** 53 - 1}\nmax_in_flight_bytes = ${2 ** 53 - 1}\n` +
          `[relay.stream]\nduplicate_window = "106751d23h47m16s854ms"\n`,
      ),
      'f.toml',
      ENV,
    );
    assert.equal(c.relay.heartbeat, TIMER_MAX);
    assert.equal(c.relay.shutdown_timeout, TIMER_MAX);
    assert.equal(c.relay.heartbeat_timeout, 1_000_000 * 86_400_000, 'never a timer: compared with elapsed time');
    assert.equal(c.relay.retention, 36_500 * 86_400_000);
    assert.equal(c.relay.stream.duplicate_window, NATS_MAX);
    assert.equal(c.relay.max_lag, 2 ** 53 - 1);
    const s = parseConfig(sub('ack_wait = "24d20h31m23s647ms"\nbackoff = ["106751d23h47m16s854ms"]\nmax_deliver = 2'), 'f.toml', ENV);
    assert.equal(s.observers.subscribe[0]?.ack_wait, TIMER_MAX);
    assert.deepEqual(s.observers.subscribe[0]?.backoff, [NATS_MAX]);
    const w = parseConfig(hook('timeout = "24d20h31m23s647ms"'), 'f.toml', ENV);
    assert.equal(w.observers.publish[0]?.actions[0]?.timeout, TIMER_MAX);
  });

  it('refuses a timer longer than 2^31-1 ms, naming the key, its line and the limit', () => {
    const timer =
      /is longer than 24d20h31m23s647ms, the longest wait a Node\.js timer can honour \(2\^31-1 ms; Node\.js would fire a longer one after 1 ms\); use at most "24d20h31m23s647ms"$/;
    for (const [key, relay] of [
      ['heartbeat', 'heartbeat = "30d"\nheartbeat_timeout = "31d"\n'],
      ['heartbeat', 'heartbeat = "24d20h31m23s648ms"\nheartbeat_timeout = "31d"\n'],
      ['shutdown_timeout', 'shutdown_timeout = "25d"\n'],
    ] as const) {
      const err = configError(() => parseConfig(minimal(`[relay]\n${relay}`), 'f.toml', ENV));
      assert.equal(err.key, `relay.${key}`, err.message);
      assert.equal(err.line, 6, err.message);
      assert.match(err.message, new RegExp(`^f\\.toml:6: relay\\.${key}: "[^"]+" `), err.message);
      assert.match(err.message, timer, err.message);
    }
    const ack = configError(() => parseConfig(sub('ack_wait = "30d"'), 'f.toml', ENV));
    assert.match(ack.message, /^f\.toml:10: observers\.subscribe\[0\]\.ack_wait: "30d" is longer than 24d20h31m23s647ms/);
    const t = configError(() => parseConfig(hook('timeout = "30d"'), 'f.toml', ENV));
    assert.match(t.message, /^f\.toml:13: observers\.publish\[0\]\.actions\[0\]\.timeout: "30d" is longer than 24d20h31m23s647ms/);
  });

  it('refuses what NATS cannot hold (2^63-1 ns), a retention over 100 years, and zero where NATS would use its default', () => {
    const dw = configError(() => parseConfig(minimal('[relay.stream]\nduplicate_window = "106752d"\n'), 'f.toml', ENV));
    assert.equal(
      dw.message,
      'f.toml:6: relay.stream.duplicate_window: "106752d" is longer than 106751d23h47m16s854ms, the longest duration NATS can hold (2^63-1 nanoseconds); use at most "106751d23h47m16s854ms"',
    );
    const bo = configError(() => parseConfig(sub('backoff = ["1s", "106752d"]\nmax_deliver = 3'), 'f.toml', ENV));
    assert.match(bo.message, /observers\.subscribe\[0\]\.backoff\[1\]: "106752d" is longer than 106751d23h47m16s854ms/);
    const ret = configError(() => parseConfig(minimal('[relay]\nretention = "36501d"\n'), 'f.toml', ENV));
    assert.match(ret.message, /^f\.toml:6: relay\.retention: "36501d" is longer than 36500d/);
    const zero = configError(() => parseConfig(minimal('[relay.stream]\nduplicate_window = "0s"\n'), 'f.toml', ENV));
    assert.match(
      zero.message,
      /relay\.stream\.duplicate_window: must be longer than zero: JetStream replaces a zero duplicate window with its default \(2m\)/,
    );
    const ack0 = configError(() => parseConfig(sub('ack_wait = "0ms"'), 'f.toml', ENV));
    assert.match(ack0.message, /ack_wait: must be longer than zero: JetStream replaces a zero ack_wait with its default \(30s\)/);
    const t0 = configError(() => parseConfig(hook('timeout = "0s"'), 'f.toml', ENV));
    assert.match(t0.message, /actions\[0\]\.timeout: must be longer than zero/);
    // a zero retention and a zero shutdown wait mean "at once": accepted
    const c = parseConfig(minimal('[relay]\nretention = "0s"\nshutdown_timeout = "0s"\n'), 'f.toml', ENV);
    assert.equal(c.relay.retention, 0);
    assert.equal(c.relay.shutdown_timeout, 0);
  });
});

describe('defaultConsumerName', () => {
  it('is <project>-<subject> with every character outside [A-Za-z0-9_-] replaced by _', () => {
    assert.equal(defaultConsumerName('inventory-service', 'fraiseql.order.created'), 'inventory-service-fraiseql_order_created');
    assert.equal(defaultConsumerName('my svc', 'orders.*.>'), 'my_svc-orders____');
    assert.equal(defaultConsumerName('Svc_1', 'a.b'), 'Svc_1-a_b');
    assert.equal(defaultConsumerName('café', 'x'), 'caf_-x');
  });
});

describe('the service name without [project]', () => {
  /** A FraiseQL service file: no [project]; the database URL comes from DATABASE_URL. */
  const SERVICE_FILE = `[database]
type = "postgresql"
url = "\${DATABASE_URL}"
[observers]
backend = "nats"
nats_url = "\${NATS_URL}"
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "fn_reserve_inventory"
`;
  const named = (url: string, env: NodeJS.ProcessEnv = {}) => parseConfig(SERVICE_FILE, 'f.toml', { ...ENV, ...env, DATABASE_URL: url });
  const name = (url: string, env: NodeJS.ProcessEnv = {}): [string, ServiceNameSource] => {
    const c = named(url, env);
    return [c.project.name, c.project.source];
  };

  it('is the database name in the URL, and names the default consumers', () => {
    const c = named(ENV.DATABASE_URL);
    assert.deepEqual(c.project, { name: 'orders', source: 'database', from: 'the database name in [database] url' });
    assert.equal(c.observers.subscribe[0]!.consumer, 'orders-fraiseql_order_created');
    assert.equal(c.database.url, ENV.DATABASE_URL);
  });

  it('reads every URL form: query parameters, percent-encoding, several hosts, postgres:// and postgresql://', () => {
    assert.deepEqual(name('postgresql://app:pw@db:5432/inventory?sslmode=require&connect_timeout=5'), ['inventory', 'database']);
    assert.deepEqual(name('postgres://db/inventory#frag'), ['inventory', 'database']);
    assert.deepEqual(name('POSTGRESQL://db/Inventory'), ['Inventory', 'database']);
    assert.deepEqual(name('postgresql://app@db/?dbname=analytics'), ['analytics', 'database']);
    assert.deepEqual(name('postgresql://app@db?dbname=analytics&sslmode=disable'), ['analytics', 'database']);
    // as libpq: a dbname parameter overrides the path
    assert.deepEqual(name('postgresql://app@db/main?dbname=analytics'), ['analytics', 'database']);
    assert.deepEqual(name('postgresql://db/order%2Dservice'), ['order-service', 'database']);
    assert.deepEqual(name('postgresql://db/my%20db'), ['my db', 'database']);
    assert.equal(named('postgresql://db/my%20db').observers.subscribe[0]!.consumer, 'my_db-fraiseql_order_created');
    assert.deepEqual(name('postgresql://app@h1:5432,h2:5433/orders?target_session_attrs=read-write'), ['orders', 'database']);
    assert.deepEqual(name('postgresql://[::1]:5432/orders'), ['orders', 'database']);
    assert.deepEqual(name('postgresql:///orders?host=/var/run/postgresql'), ['orders', 'database']);
    assert.deepEqual(name('postgresql://%2Fvar%2Frun%2Fpostgresql/orders'), ['orders', 'database']);
  });

  it("without a database in the URL: PGDATABASE, else the user name (PostgreSQL's default database), else PGUSER", () => {
    assert.deepEqual(name('postgresql://billing:s3cr3t-pw@db:5432'), ['billing', 'user']);
    assert.deepEqual(name('postgresql://billing@db/'), ['billing', 'user']);
    assert.deepEqual(name('postgresql://db/?user=billing'), ['billing', 'user']);
    assert.deepEqual(name('postgresql://someone@db/?user=billing'), ['billing', 'user']);
    assert.deepEqual(name('postgresql://db:5432', { PGUSER: 'svc' }), ['svc', 'PGUSER']);
    assert.deepEqual(name('postgresql://billing@db', { PGDATABASE: 'reporting', PGUSER: 'svc' }), ['reporting', 'PGDATABASE']);
    // a database in the URL wins over the environment
    assert.deepEqual(name('postgresql://billing@db/orders', { PGDATABASE: 'reporting', PGUSER: 'svc' }), ['orders', 'database']);
    assert.equal(
      named('postgresql://billing@db').project.from,
      'the user name in [database] url (it names no database, so PostgreSQL uses the one named after the user)',
    );
    assert.equal(named('postgresql://db', { PGDATABASE: 'reporting' }).project.from, 'PGDATABASE ([database] url names no database)');
  });

  it('a URL that names neither a database nor a user is an error at its line asking for [project] name, without the URL', () => {
    for (const url of ['postgresql://:s3cr3t-pw@db.internal:5432', 'postgresql://db.internal/', 'host=db.internal password=s3cr3t-pw']) {
      const err = configError(() => named(url));
      assert.equal(err.line, 3, err.message);
      assert.equal(err.key, 'database.url');
      assert.match(err.message, /^f\.toml:3: database\.url: the service name cannot be derived from \[database\] url: /);
      assert.match(err.message, /add \[project\] with name = "<service name>"/);
      assert.ok(!err.message.includes('s3cr3t-pw') && !err.message.includes('db.internal'), err.message);
    }
  });

  it('[project] name wins over the database name, and needs nothing from the URL', () => {
    const c = parseConfig(`[project]\nname = "inventory-service"\n${SERVICE_FILE}`, 'f.toml', {
      ...ENV,
      DATABASE_URL: 'host=db password=x',
    });
    assert.deepEqual(c.project, { name: 'inventory-service', source: 'project', from: '[project] name' });
    assert.equal(c.observers.subscribe[0]!.consumer, 'inventory-service-fraiseql_order_created');
    const err = configError(() => parseConfig(`[project]\nversion = "2"\n${SERVICE_FILE}`, 'f.toml', ENV));
    assert.match(err.message, /^f\.toml:1: project\.name: is required; add name = "<service name>" under \[project\]/);
  });

  it('an explicit consumer name is kept; two subscriptions on one subject still need distinct ones', () => {
    const c = parseConfig(`${SERVICE_FILE}consumer = "inventory"\n`, 'f.toml', ENV);
    assert.equal(c.observers.subscribe[0]!.consumer, 'inventory');
    const twice = `${SERVICE_FILE}[[observers.subscribe]]\nsubject = "fraiseql.order.created"\nhandler = "fn_other"\n`;
    const err = configError(() => parseConfig(twice, 'f.toml', ENV));
    assert.match(err.message, /durable consumer "orders-fraiseql_order_created" is also used by observers\.subscribe\[0\]/);
  });

  it('a file without [database] connects to DATABASE_URL, and derives the name from it', () => {
    const text = SERVICE_FILE.split('\n').slice(3).join('\n');
    const c = parseConfig(text, 'f.toml', ENV);
    assert.deepEqual(c.database, { type: 'postgresql', url: ENV.DATABASE_URL });
    assert.deepEqual(c.project, { name: 'orders', source: 'database', from: 'the database name in DATABASE_URL' });

    const unset = configError(() => parseConfig(text, 'f.toml', { NATS_URL: ENV.NATS_URL }));
    assert.equal(
      unset.message,
      'f.toml: database: is required; add a [database] table with url = "${DATABASE_URL}" ' +
        '(or set the environment variable DATABASE_URL: a file without [database] connects to it)',
    );
    assert.equal(unset.key, 'database');

    const nameless = configError(() => parseConfig(text, 'f.toml', { ...ENV, DATABASE_URL: 'postgresql://:s3cr3t-pw@db.internal' }));
    assert.match(nameless.message, /^f\.toml: database: the service name cannot be derived from DATABASE_URL: /);
    assert.ok(!nameless.message.includes('s3cr3t-pw'), nameless.message);
  });

  it('the top-level [[observers]] form derives it too', () => {
    const text =
      '[database]\nurl = "${DATABASE_URL}"\n[[observers]]\ntable = "tb_order"\nevent = "INSERT"\nsubject = "fraiseql.order.created"\n';
    assert.equal(parseConfig(text, 'f.toml', ENV).project.name, 'orders');
  });

  it('every seed service file (test/fixtures/seed) is accepted as it stands', () => {
    const dir = join(import.meta.dirname, 'fixtures', 'seed');
    const files = readdirSync(dir).filter((f) => f.endsWith('.toml'));
    assert.ok(files.length >= 8);
    for (const f of files) {
      const c = parseConfig(readFileSync(join(dir, f), 'utf8'), f, ENV);
      assert.equal(c.project.name, 'orders', f);
      for (const s of c.observers.subscribe) assert.equal(s.consumer, defaultConsumerName('orders', s.subject), f);
    }
  });
});

describe('the default slot and publication names', () => {
  /** A service that publishes (it needs a slot), with `project` and `relay` lines as given. */
  const file = (project: string, url: string, relay = '') =>
    parseConfig(
      `${project}[database]\nurl = "${url}"\n[observers]\nnats_url = "nats://n:4222"\n` +
        `[[observers.publish]]\nmutation = "m"\nsubject = "a.b"\n${relay ? `[relay]\n${relay}` : ''}`,
      'f.toml',
      {},
    );

  it('without [project]: fraiseql_relay_<service>, the service being the database', () => {
    const c = file('', 'postgresql://app@db/orders');
    assert.equal(c.relay.slot, 'fraiseql_relay_orders');
    assert.equal(c.relay.publication, 'fraiseql_relay_orders');
    assert.deepEqual(c.relay.derivedNames, {
      slot: true,
      publication: true,
      from: 'the service name "orders", which is the database\'s name',
    });
    // the database named by the user (PostgreSQL's default database)
    assert.equal(file('', 'postgresql://billing:pw@db:5432').relay.slot, 'fraiseql_relay_billing');
  });

  it('with [project] name: fraiseql_relay_<service>_<database>, two databases of one cluster never share a slot', () => {
    const a = file('[project]\nname = "order-service"\n', 'postgresql://app@db/orders_eu');
    const b = file('[project]\nname = "order-service"\n', 'postgresql://app@db/orders_us');
    assert.equal(a.relay.slot, 'fraiseql_relay_order_service_orders_eu');
    assert.equal(b.relay.slot, 'fraiseql_relay_order_service_orders_us');
    assert.equal(a.relay.publication, 'fraiseql_relay_order_service_orders_eu');
    // pinning today's derived name as [project] name keeps today's slot
    assert.equal(file('[project]\nname = "orders"\n', 'postgresql://app@db/orders').relay.slot, 'fraiseql_relay_orders');
    // a URL that does not name the database (a key=value string): the database is left out, and check says so
    const kv = parseConfig('[project]\nname = "svc"\n[database]\nurl = "host=db dbname=x"\n', 'f.toml', {});
    assert.equal(kv.relay.slot, 'fraiseql_relay_svc');
    assert.match(kv.relay.derivedNames!.from, /does not name the database/);
  });

  it('names written under [relay] are used as written; only the others are derived', () => {
    const both = file('[project]\nname = "svc"\n', 'postgresql://app@db/orders', 'slot = "mine"\npublication = "pub"\n');
    assert.equal(both.relay.slot, 'mine');
    assert.equal(both.relay.publication, 'pub');
    assert.equal(both.relay.derivedNames, undefined);
    const slotOnly = file('[project]\nname = "svc"\n', 'postgresql://app@db/orders', 'slot = "fraiseql_relay"\n');
    assert.equal(slotOnly.relay.slot, LEGACY_RELAY_NAME);
    assert.equal(slotOnly.relay.publication, 'fraiseql_relay_svc_orders');
    assert.deepEqual(
      { slot: slotOnly.relay.derivedNames?.slot, publication: slotOnly.relay.derivedNames?.publication },
      { slot: false, publication: true },
    );
  });

  it('normalised to what PostgreSQL allows in a slot name, hashed when cut to 63 (56 for a publication) characters', () => {
    assert.equal(defaultRelayName('Order-Service', 'EU.Orders', 63), 'fraiseql_relay_order_service_eu_orders');
    assert.equal(defaultRelayName('--svc--', null, 63), 'fraiseql_relay_svc');
    assert.equal(defaultRelayName('Ünïcode Svc!', null, 63), 'fraiseql_relay_n_code_svc');
    // a name of only characters PostgreSQL does not allow: its hash
    assert.match(defaultRelayName('日本', null, 63), /^fraiseql_relay_[0-9a-f]{8}$/);
    assert.notEqual(defaultRelayName('日本', null, 63), defaultRelayName('中国', null, 63));
    const long = 'a-very-long-service-name-that-goes-on-and-on';
    for (const max of [63, 56]) {
      const one = defaultRelayName(long, 'database_one_of_the_cluster', max);
      const two = defaultRelayName(long, 'database_two_of_the_cluster', max);
      assert.ok(one.length <= max && two.length <= max, `${one} ${two}`);
      assert.match(one, /^fraiseql_relay_a_very_long_[a-z0-9_]*_[0-9a-f]{8}$/);
      assert.notEqual(one, two, 'the hash of the whole name tells them apart');
      assert.equal(one, defaultRelayName(long, 'database_one_of_the_cluster', max), 'stable');
    }
    for (const name of [defaultRelayName('x'.repeat(200), 'y'.repeat(200), 63), defaultRelayName('Ä b C', 'd', 63)]) {
      assert.match(name, /^[a-z0-9_]{1,63}$/);
    }
  });
});

describe('subscription batching and ordering keys', () => {
  const sub = (extra: string) =>
    parseConfig(
      `[project]\nname = "s"\n[database]\nurl = "postgres://u@h/db"\n[observers]\nnats_url = "nats://h:4222"\n[[observers.subscribe]]\nsubject = "a.b"\nhandler = "fn"\n${extra}`,
      'fraiseql.toml',
      {},
    ).observers.subscribe[0]!;
  it('order_by: true is the entity id, a name is a header, "$.a.b" is a path into the body', () => {
    assert.deepEqual(sub('order_by = true').order_by, { path: ['id'] });
    assert.deepEqual(sub('order_by = "Fraiseql-Entity-Id"').order_by, { header: 'Fraiseql-Entity-Id' });
    assert.deepEqual(sub('order_by = "$.entity.customer_id"').order_by, { path: ['entity', 'customer_id'] });
    assert.equal(sub('order_by = false').order_by, null);
    assert.equal(sub('').order_by, null);
  });
  it('batch is 1 to 1000 and max_wait a duration', () => {
    assert.equal(sub('batch = 1000\nmax_wait = "5ms"').batch, 1000);
    assert.equal(sub('max_wait = "5ms"').max_wait, 5);
    assert.throws(() => sub('batch = 1001'), /batch.*a whole number from 1 to 1000/s);
    assert.throws(() => sub('order_by = "$.a..b"'), /neither a header name nor a JSON path/);
    assert.throws(() => sub('order_by = "bad header"'), /neither a header name nor a JSON path/);
  });
});

describe('backend = "redis"', () => {
  const REDIS_ENV = { ...ENV, REDIS_URL: 'redis://relay:r3dis-pw@redis.internal:6379/0' };
  const redisFile = (extra = '') =>
    minimal(
      `[observers]\nbackend = "redis"\nredis_url = "\${REDIS_URL}"\n[[observers.publish]]\nmutation = "m"\nsubject = "a.b"\n${extra}`,
    );

  it('reads redis_url (interpolated) and [relay.redis], and no longer reports redis_url as ignored', () => {
    const c = parseConfig(
      redisFile('[relay.redis]\nstream_prefix = "svc:"\nmax_age = "7d"\nduplicate_window = "2m"\n'),
      'f.toml',
      REDIS_ENV,
    );
    assert.equal(c.observers.backend, 'redis');
    assert.equal(c.observers.redis_url, REDIS_ENV.REDIS_URL);
    assert.deepEqual(c.relay.redis, { stream_prefix: 'svc:', max_age: 7 * 86_400_000, duplicate_window: 120_000 });
    assert.deepEqual(c.ignoredKeys, []);
  });

  it('with backend = "nats", redis_url stays FraiseQL\'s own key: not interpolated, reported ignored', () => {
    const c = parseConfig(minimal('[observers]\nnats_url = "nats://h:4222"\nredis_url = "' + '${REDIS_URL}"\n'), 'f.toml', ENV);
    assert.equal(c.observers.redis_url, undefined);
    assert.deepEqual(c.ignoredKeys, ['observers.redis_url']);
  });

  it('an unset REDIS_URL, a missing or wrong redis_url are errors naming the key; the URL is never shown', () => {
    const unset = configError(() => parseConfig(redisFile(), 'f.toml', ENV));
    assert.match(unset.message, /f\.toml:7: environment variable REDIS_URL is not set/);
    const missing = configError(() =>
      parseConfig(minimal('[observers]\nbackend = "redis"\n[[observers.publish]]\nmutation = "m"\nsubject = "a.b"\n'), 'f.toml', ENV),
    );
    assert.match(missing.message, /observers\.redis_url is required when backend = "redis"/);
    const wrong = configError(() => parseConfig(redisFile().replace('${REDIS_URL}', 'http://u:r3dis-pw@h'), 'f.toml', ENV));
    assert.match(wrong.message, /f\.toml:7: observers\.redis_url must be a Redis URL/);
    assert.ok(!wrong.message.includes('r3dis-pw'), wrong.message);
    const typo = configError(() => parseConfig(redisFile('[relay]\nmax_in_flihgt = "r3dis-pw"\n'), 'f.toml', REDIS_ENV));
    assert.match(typo.message, /relay\.max_in_flihgt: unknown key/);
    assert.ok(!typo.message.includes(REDIS_ENV.REDIS_URL), typo.message);
  });

  it('[relay.redis] refuses max_len together with max_age, and a prefix with spaces', () => {
    const both = configError(() => parseConfig(redisFile('[relay.redis]\nmax_len = 10\nmax_age = "1h"\n'), 'f.toml', REDIS_ENV));
    assert.match(both.message, /relay\.redis\.max_age: is set together with max_len/);
    const spaced = configError(() => parseConfig(redisFile('[relay.redis]\nstream_prefix = "a b"\n'), 'f.toml', REDIS_ENV));
    assert.match(spaced.message, /relay\.redis\.stream_prefix: "a b" must be printable ASCII without spaces/);
  });
});

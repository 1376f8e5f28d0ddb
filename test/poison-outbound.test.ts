/**
 * One event must never stop all delivery (issue 12). Each poison event below is committed between
 * two ordinary events, written straight into the outbox where emit() would refuse it: both
 * ordinary events must arrive within seconds, the poison event must be in the dead-letter table
 * with its reason and nowhere in JetStream, and the relay must not have reconnected at all. A
 * full stream is the opposite case: it holds the slot (in order) until space is freed.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { NatsConnection } from '@nats-io/transport-node';
import { DiscardPolicy, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { TestEnv, BASE_TOML, sleep, waitForRows } from './fixture.js';
import type { Relay } from '../src/relay/relay.js';
import type { OutboundMessage } from '../src/sink/sink.js';
import { JetStreamSink } from '../src/sink/jetstream.js';
import { UndeliverableError } from '../src/sink/limits.js';
import { StreamMissingError } from '../src/util/errors.js';
import { createLogger } from '../src/util/log.js';

/** Small enough that a message near it is cheap to build, large enough for JetStream's 64 KiB header limit to come first. */
const MAX_PAYLOAD = 256 * 1024;
const MB2 = 2 * 1024 * 1024;
const log = createLogger('silent');

let env: TestEnv;
let relay: Relay;
let nc: NatsConnection;
let jsm: JetStreamManager;
let reconnects = 0;
const published: OutboundMessage[] = [];

before(async () => {
  env = await TestEnv.create({ nats: { maxPayload: MAX_PAYLOAD }, toml: BASE_TOML });
  await env.migrate();
  nc = await env.natsClient();
  jsm = await jetstreamManager(nc);
  // a stream whose own limit refuses a message only after it was published (err_code 10054)
  await jsm.streams.add({ name: 'SMALL', subjects: ['small.>'], max_msg_size: 2048 });
  // a stream that refuses every new message once it holds one (err_code 10077): the stream, not the message
  await jsm.streams.add({ name: 'FULL', subjects: ['full.>'], max_msgs: 1, discard: DiscardPolicy.New });
  relay = await env.startRelay();
  relay.on('reconnect', () => reconnects++);
  relay.on('published', (m) => published.push(m));
});

after(async () => {
  await relay?.stop();
  await nc?.close();
  await env?.destroy();
});

/** The stream message last stored on `subject`, or null. */
async function lastOn(subject: string, stream = 'FRAISEQL'): Promise<{ seq: number; header: (k: string) => string } | null> {
  try {
    const m = await jsm.streams.getMessage(stream, { last_by_subj: subject });
    return m ? { seq: m.seq, header: (k) => m.header.get(k) } : null;
  } catch {
    return null;
  }
}

async function waitOn(subject: string, timeoutMs: number): Promise<{ seq: number } | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await lastOn(subject);
    if (m !== null || Date.now() > deadline) return m;
    await sleep(50);
  }
}

async function walPosition(): Promise<string> {
  return (await env.sql<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`))[0]!.lsn;
}

/** Whether the slot's confirmed position reaches `lsn` within `timeoutMs`. */
async function slotPassed(lsn: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [r] = await env.sql<{ past: boolean }>(
      `SELECT confirmed_flush_lsn >= $1::pg_lsn AS past FROM pg_replication_slots WHERE slot_name = '${env.config().relay.slot}'`,
      [lsn],
    );
    if (r!.past || Date.now() > deadline) return r!.past;
    await sleep(50);
  }
}

async function emit(subject: string, payload: object = {}): Promise<string> {
  const [r] = await env.sql<{ id: string }>(`SELECT fraiseql_relay.emit($1, $2::jsonb)::text AS id`, [subject, JSON.stringify(payload)]);
  return r!.id;
}

/** An outbox row written without emit(): nothing checks it before the relay reads it. */
async function insert(subject: string, entity: unknown, headers: Record<string, string> | null = null, traceparent: string | null = null) {
  const [r] = await env.sql<{ id: string }>(
    `INSERT INTO fraiseql_relay.outbox (subject, operation, entity, headers, traceparent) VALUES ($1, 'CUSTOM', $2::jsonb, $3::jsonb, $4)
     RETURNING id::text AS id`,
    [subject, JSON.stringify(entity), headers === null ? null : JSON.stringify(headers), traceparent],
  );
  return r!.id;
}

interface PoisonCase {
  name: string;
  /** commits the poison event; returns its event id */
  commit: (tag: string) => Promise<string>;
  /** the dead letter's error */
  error: RegExp;
  /** where the event would be stored if it were published */
  stream?: string;
}

const header = (name: string, value = '1'): PoisonCase => ({
  name: `header ${name}`,
  commit: (tag) => insert(`fraiseql.poison.${tag}`, { n: 1 }, { [name]: value, 'X-Fine': 'y' }),
  error: new RegExp(`header "${name}" is reserved`),
});

const cases: PoisonCase[] = [
  // JetStream would refuse each of these forever ("wrong last sequence", …): the slot would never move
  header('Nats-Expected-Last-Sequence', '999999'),
  header('Nats-Expected-Last-Subject-Sequence', '999999'),
  header('Nats-Expected-Last-Msg-Id', 'nope'),
  header('Nats-Expected-Stream', 'OTHER'),
  // accepted (a stream with allow_rollup_hdrs), this one purges the stream
  header('Nats-Rollup', 'all'),
  header('nats-rollup', 'all'),
  // collides with the relay's de-duplication id: JetStream drops whichever comes second
  header('Nats-Msg-Id', 'app-chosen-id'),
  // the relay's own headers, which subscribers trust (a spoofed tenant)
  header('Fraiseql-Tenant-Id', '11111111-1111-1111-1111-111111111111'),
  header('FRAISEQL-EVENT-ID', 'not-the-event'),
  {
    name: 'a 2 MB header value',
    commit: (tag) => insert(`fraiseql.poison.${tag}`, { n: 1 }, { 'X-Big': 'v'.repeat(MB2) }),
    error: /headers of \d+ bytes .* exceed JetStream's limit of 65535 bytes|exceeds the NATS server's max_payload/,
  },
  {
    name: 'a 100 KB header value (under max_payload, over JetStream 64 KiB header limit)',
    commit: (tag) => insert(`fraiseql.poison.${tag}`, { n: 1 }, { 'X-Big': 'v'.repeat(100 * 1024) }),
    error: /headers of \d+ bytes \(as NATS encodes them\) exceed JetStream's limit of 65535 bytes/,
  },
  {
    name: 'a 2 MB traceparent from the fraiseql.traceparent setting (emit)',
    commit: async (tag) => {
      const [r] = await env.sql<{ id: string }>(
        `SELECT set_config('fraiseql.traceparent', repeat('a', ${MB2}), true), fraiseql_relay.emit($1, '{"n":1}')::text AS id`,
        [`fraiseql.poison.${tag}`],
      );
      return r!.id;
    },
    error: /exceed JetStream's limit of 65535 bytes|max_payload/,
  },
  {
    name: 'a 2 MB traceparent in an outbox row',
    commit: (tag) => insert(`fraiseql.poison.${tag}`, { n: 1 }, null, 'b'.repeat(MB2)),
    error: /exceed JetStream's limit of 65535 bytes|max_payload/,
  },
  {
    // the body alone fits by about 1.5 KB; its headers do not
    name: 'a body just under max_payload plus headers over it',
    commit: (tag) => insert(`fraiseql.poison.${tag}`, { blob: 'x'.repeat(MAX_PAYLOAD - 2000) }, { 'X-Pad': 'p'.repeat(3000) }),
    error: new RegExp(`message of \\d+ bytes \\(body \\d+, headers \\d+\\) exceeds the NATS server's max_payload of ${MAX_PAYLOAD} bytes`),
  },
  {
    name: 'a subject of 5,000 characters',
    commit: () => insert(`fraiseql.${'s'.repeat(5000 - 9)}`, { n: 1 }),
    error: /subject of 5000 bytes is longer than the 3968 bytes the relay publishes/,
  },
  {
    name: 'a subject of 6,400 characters with control characters',
    commit: () => insert(`fraiseql.${'c\u0001\u0007\t'.repeat(1600)}`.slice(0, 6400), { n: 1 }),
    error: /subject of \d+ bytes is longer|not a valid NATS subject/,
  },
  {
    name: "a message over its stream's max_msg_size (JetStream refuses it after it was sent)",
    commit: (tag) => insert(`small.${tag}`, { blob: 'x'.repeat(4000) }),
    error: /JetStream refused the message for good \(JetStream error 10054: message size exceeds maximum allowed\)/,
    stream: 'SMALL',
  },
];

for (const [i, c] of cases.entries()) {
  test(`poison: ${c.name} is dead-lettered and the events around it arrive`, async () => {
    const tag = `c${i}`;
    const reconnectsBefore = reconnects;
    await emit(`fraiseql.marker.${tag}.before`, { tag });
    const poison = await c.commit(tag);
    await emit(`fraiseql.marker.${tag}.after`, { tag });
    const written = await walPosition();

    const t0 = Date.now();
    const before = await waitOn(`fraiseql.marker.${tag}.before`, 10_000);
    const after = await waitOn(`fraiseql.marker.${tag}.after`, 10_000);
    assert.ok(before, 'the event committed before the poison one arrived');
    assert.ok(after, `the event committed after the poison one arrived (waited ${Date.now() - t0} ms)`);
    assert.ok(before.seq < after.seq, 'in commit order');
    assert.ok(await slotPassed(written, 10_000), 'the slot was confirmed past both (it is not held)');

    const dl = await waitForRows(() =>
      env.sql<{ direction: string; error: string }>(`SELECT direction, error FROM fraiseql_relay.dead_letter WHERE event_id = $1`, [
        poison,
      ]),
    );
    assert.equal(dl.length, 1, 'the poison event is in the dead-letter table');
    assert.equal(dl[0]!.direction, 'outbound');
    assert.match(dl[0]!.error, c.error);

    const stream = c.stream ?? 'FRAISEQL';
    assert.equal(await lastOn(`fraiseql.poison.${tag}`, stream), null, 'the poison event is nowhere in JetStream');
    if (c.stream) assert.equal((await jsm.streams.info(c.stream)).state.messages, 0);
    assert.equal(reconnects - reconnectsBefore, 0, 'the relay did not reconnect');
  });
}

/** Publishes through a sink and resolves with how it ended. */
function send(sink: JetStreamSink, msg: OutboundMessage): Promise<{ err?: Error; duplicate?: boolean }> {
  return new Promise((resolve) => sink.publish(msg, (err, duplicate) => resolve({ err, duplicate })));
}

const message = (subject: string, headers: Record<string, string> = {}): OutboundMessage => ({
  subject,
  eventId: '00000000-0000-4000-8000-000000000001',
  headers,
  body: Buffer.from('{}'),
});

test('the sink: a re-send is acknowledged as a duplicate, also when another header mentions Nats-Msg-Id', async () => {
  const sink = new JetStreamSink(nc, { maxInFlight: 10, maxInFlightBytes: 1e6, timeoutMs: 2000, streamSubjects: ['fraiseql.>'], log });
  try {
    // nats-server 2.9 reads a header where its name first occurs in the block: the relay's id goes first
    const m = message('fraiseql.sink.mentions', { 'X-Note': 'see Nats-Msg-Id', 'X-Nats-Msg-Id': 'x' });
    assert.equal(sink.check(m), null);
    assert.deepEqual(await send(sink, m), { err: undefined, duplicate: false });
    assert.deepEqual(await send(sink, m), { err: undefined, duplicate: true });
    const s = await jsm.streams.info('FRAISEQL', { subjects_filter: 'fraiseql.sink.mentions' });
    assert.equal(s.state.subjects?.['fraiseql.sink.mentions'], 1, 'stored once');
  } finally {
    sink.close();
  }
});

test('the sink: "no responders" after its stream was deleted is the message\'s own problem, unless it is the relay\'s stream', async () => {
  await jsm.streams.add({ name: 'GONE', subjects: ['gone.>'] });
  const sink = new JetStreamSink(nc, { maxInFlight: 10, maxInFlightBytes: 1e6, timeoutMs: 2000, streamSubjects: ['own.>'], log });
  try {
    const m = message('gone.x');
    assert.equal(await sink.check(m), null, 'a stream captured it when it was checked');
    await jsm.streams.delete('GONE');
    const { err } = await send(sink, m);
    assert.ok(err instanceof UndeliverableError, 'dead-lettered: the server says no stream captures it now');
    assert.match(err.reason, /no JetStream stream captures subject gone\.x/);
    // the relay's own stream missing: every message is refused alike, the session reconnects (and re-creates it)
    const own = await send(sink, message('own.x'));
    assert.ok(own.err instanceof StreamMissingError);
    assert.ok(!(own.err instanceof UndeliverableError));
  } finally {
    sink.close();
  }
});

test('a full stream (discard new) holds the slot in order until it has room; re-sent duplicates are not counted as published', async () => {
  const reconnectsBefore = reconnects;
  const dlBefore = (await env.sql<{ n: number }>(`SELECT count(*)::int AS n FROM fraiseql_relay.dead_letter`))[0]!.n;
  const pub = (s: string) => published.filter((m) => m.subject === s).length;
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.held.a', '{}'), fraiseql_relay.emit('full.one', '{"n":1}')`);
  assert.ok(await waitOn('fraiseql.held.a', 10_000));
  // FULL holds one message: this transaction's second message is refused, its first is stored
  await env.sql(`SELECT fraiseql_relay.emit('fraiseql.held.b', '{}'), fraiseql_relay.emit('full.two', '{"n":2}')`);
  const lsn = await walPosition();
  await emit('fraiseql.held.c');
  assert.ok(await waitOn('fraiseql.held.b', 10_000));
  await sleep(2500);
  assert.ok(reconnects - reconnectsBefore >= 1, 'the refused publish ended the session: it is retried from the slot');
  assert.equal(await slotPassed(lsn, 0), false, 'the slot is held before the refused transaction');
  assert.equal((await env.sql<{ n: number }>(`SELECT count(*)::int AS n FROM fraiseql_relay.dead_letter`))[0]!.n, dlBefore);

  await jsm.streams.update('FULL', { max_msgs: 100 });
  assert.equal(await slotPassed(lsn, 15_000), true, 'once the stream has room the slot moves on');
  assert.ok(await waitOn('fraiseql.held.c', 1000));
  assert.equal((await jsm.streams.info('FULL')).state.messages, 2, 'nothing lost, nothing dead-lettered');
  assert.equal((await env.sql<{ n: number }>(`SELECT count(*)::int AS n FROM fraiseql_relay.dead_letter`))[0]!.n, dlBefore);
  // fraiseql.held.b was re-sent after every reconnect and dropped by JetStream as a duplicate each time
  assert.equal(pub('fraiseql.held.b'), 1, 'published once, however often it was re-sent');
  assert.ok((relay.stats.duplicates ?? 0) >= 1, 'the re-sends are counted as duplicates');
  assert.equal(pub('fraiseql.held.c'), 1);
});

test('emit() refuses the headers the broker or the relay owns, with the name, a detail and a hint', async () => {
  for (const name of [
    'Nats-Msg-Id',
    'Nats-Expected-Stream',
    'Nats-Expected-Last-Sequence',
    'Nats-Expected-Last-Subject-Sequence',
    'Nats-Expected-Last-Msg-Id',
    'Nats-Rollup',
    'nats-msg-id',
    'NATS-TTL',
    'Fraiseql-Event-Id',
    'fraiseql-tenant-id',
  ]) {
    await assert.rejects(
      env.sql(`SELECT fraiseql_relay.emit('fraiseql.refused', '{}', $1::jsonb)`, [JSON.stringify({ 'X-Ok': 'y', [name]: 'v' })]),
      (err: Error & { code?: string; hint?: string; detail?: string }) => {
        assert.equal(err.message, `fraiseql_relay.emit: header '${name}' is reserved`);
        assert.equal(err.code, '22023');
        assert.match(err.hint ?? '', /Give the header another name .* Nats- or Fraiseql- \(in any case\) are reserved/);
        assert.match(
          err.detail ?? '',
          /^nats-/i.test(name) ? /NATS JetStream interprets Nats-\* headers/ : /The relay sets the Fraiseql-\* headers/,
        );
        return true;
      },
      name,
    );
  }
  // other names are the application's, as before
  const [r] = await env.sql<{ id: string }>(
    `SELECT fraiseql_relay.emit('fraiseql.allowed', '{}', '{"X-Request-Id": "r1", "NatsX": "1", "traceparent-ish": "t"}')::text AS id`,
  );
  assert.ok(r!.id);
  assert.equal((await env.sql(`SELECT 1 FROM fraiseql_relay.outbox WHERE subject = 'fraiseql.refused'`)).length, 0);
});

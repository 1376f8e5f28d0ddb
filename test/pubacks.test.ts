/**
 * The lean JetStream publisher against a real nats-server: what it writes on the wire, and each
 * way a publish can end (stored, duplicate, refused by the stream, no stream, no answer, closed).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, DiscardPolicy, type JetStreamManager } from '@nats-io/jetstream';
import { LocalNats } from '../src/local/nats.js';
import { PubAckPublisher } from '../src/sink/pubacks.js';
import { PublishRefusedError, StreamMissingError } from '../src/util/errors.js';

let nats: LocalNats;
let nc: NatsConnection;
let jsm: JetStreamManager;

before(async () => {
  nats = await LocalNats.start();
  nc = await connect({ servers: nats.url });
  jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: 'T', subjects: ['t.>'], duplicate_window: 60_000_000_000 });
});

after(async () => {
  await nc?.close();
  await nats?.destroy();
});

/** Publishes one message and resolves with its outcome (undefined: acknowledged). */
function publish(p: PubAckPublisher, subject: string, body: string, lines: string, msgId: string): Promise<Error | undefined> {
  return new Promise((resolve) => p.publish(subject, Buffer.from(body), lines, msgId, resolve));
}

test('a message is stored with its headers and Nats-Msg-Id; a re-send is acknowledged and dropped', async () => {
  const p = new PubAckPublisher(nc, 2000);
  try {
    assert.equal(await publish(p, 't.a', '{"n":1}', 'Fraiseql-Event-Id: e1\r\nX-Tenant: t-é\r\n', 'e1:t.a'), undefined);
    const m = await jsm.streams.getMessage('T', { last_by_subj: 't.a' });
    assert.ok(m);
    assert.equal(new TextDecoder().decode(m.data), '{"n":1}');
    assert.equal(m.header.get('Fraiseql-Event-Id'), 'e1');
    assert.equal(m.header.get('X-Tenant'), 't-é', 'UTF-8 header values keep their bytes');
    assert.equal(m.header.get('Nats-Msg-Id'), 'e1:t.a');

    assert.equal(await publish(p, 't.a', '{"n":1}', '', 'e1:t.a'), undefined, 'a duplicate is a success');
    assert.equal((await jsm.streams.info('T')).state.messages, 1, 'and is not stored twice');
    assert.equal(p.size, 0, 'nothing left pending');
  } finally {
    p.close();
  }
});

test('a burst of publishes is acknowledged in full, each callback once', async () => {
  await jsm.streams.add({ name: 'B', subjects: ['b.>'] });
  const p = new PubAckPublisher(nc, 5000);
  try {
    const n = 3000;
    const seen = new Map<number, number>();
    const all = Array.from(
      { length: n },
      (_, i) =>
        new Promise<Error | undefined>((resolve) =>
          p.publish('b.x', Buffer.from(`{"i":${i}}`), '', `b-${i}`, (err) => {
            seen.set(i, (seen.get(i) ?? 0) + 1);
            resolve(err);
          }),
        ),
    );
    const errors = (await Promise.all(all)).filter((e) => e !== undefined);
    assert.deepEqual(errors, []);
    assert.equal(seen.size, n);
    assert.ok(
      [...seen.values()].every((c) => c === 1),
      'each callback exactly once',
    );
    assert.equal((await jsm.streams.info('B')).state.messages, n);
  } finally {
    p.close();
    await jsm.streams.delete('B');
  }
});

test('a refusal by the stream is an error naming the JetStream error', async () => {
  await jsm.streams.add({ name: 'F', subjects: ['f.>'], max_msgs: 2, discard: DiscardPolicy.New });
  const p = new PubAckPublisher(nc, 2000);
  try {
    for (const id of ['f1', 'f2']) assert.equal(await publish(p, 'f.full', '{}', '', id), undefined);
    const err = await publish(p, 'f.full', '{}', '', 'f3');
    assert.ok(err instanceof PublishRefusedError, 'a typed refusal');
    assert.equal(err.subject, 'f.full');
    assert.equal(err.code, 10077, "JetStream's err_code for maximum messages exceeded");
    assert.match(err.message, /^JetStream error \d+: maximum messages exceeded/);
  } finally {
    p.close();
    await jsm.streams.delete('F');
  }
});

test('no stream for the subject: the 503 no-responders reply fails the publish at once', async () => {
  const p = new PubAckPublisher(nc, 5000);
  try {
    const t0 = Date.now();
    const err = await publish(p, 'nowhere.x', '{}', '', 'n1');
    assert.ok(err instanceof StreamMissingError, 'typed: no stream captures the subject');
    assert.equal(err.subject, 'nowhere.x');
    assert.match(err.message, /no JetStream stream answered for nowhere\.x \(503 no responders\)/);
    assert.ok(Date.now() - t0 < 2000, 'without waiting for the timeout');
  } finally {
    p.close();
  }
});

test('no answer within the timeout fails the publish; a late answer is ignored', async () => {
  // a core subscriber takes the message but never answers, so no 503 comes either
  const silent = nc.subscribe('silent.x');
  const p = new PubAckPublisher(nc, 300);
  try {
    const t0 = Date.now();
    const err = await publish(p, 'silent.x', '{}', '', 's1');
    const waited = Date.now() - t0;
    assert.ok(err instanceof Error);
    assert.match(err.message, /timeout: no PubAck for silent\.x within 300 ms/);
    assert.ok(waited >= 300, `failed after ${waited} ms`);
    assert.equal(p.size, 0);
  } finally {
    silent.unsubscribe();
    p.close();
  }
});

test('after close() a publish fails at once and nothing is sent', async () => {
  const p = new PubAckPublisher(nc, 2000);
  p.close();
  const before = (await jsm.streams.info('T')).state.messages;
  assert.ok(before > 0);
  const err = await publish(p, 't.closed', '{}', '', 'c1');
  assert.ok(err instanceof Error);
  assert.match(err.message, /publisher closed/);
  await nc.flush();
  assert.equal((await jsm.streams.info('T')).state.messages, before);
});

test('without nats.js internals to write to, the public publish() path stores the same message', async () => {
  // a connection that hides its protocol handler, as a future nats.js might
  const hidden = new Proxy(nc, {
    get: (t, k) => {
      if (k === 'protocol') return undefined;
      const v: unknown = Reflect.get(t, k);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  const p = new PubAckPublisher(hidden, 2000);
  try {
    assert.equal(await publish(p, 't.fallback', '{"f":1}', 'X-A: 1\r\n', 'fb1:t.fallback'), undefined);
    const m = await jsm.streams.getMessage('T', { last_by_subj: 't.fallback' });
    assert.ok(m);
    assert.equal(new TextDecoder().decode(m.data), '{"f":1}');
    assert.equal(m.header.get('X-A'), '1');
    assert.equal(m.header.get('Nats-Msg-Id'), 'fb1:t.fallback');
  } finally {
    p.close();
  }
});

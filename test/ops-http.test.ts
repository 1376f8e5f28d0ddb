import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { RelayMetrics, PUBLISH_LATENCY_BUCKETS } from '../src/ops/metrics.js';
import { Health } from '../src/ops/health.js';
import { startHttp, parseListen, type HttpServer } from '../src/ops/http.js';
import { UsageError } from '../src/util/errors.js';

function captureLog(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

class Clock {
  t = 1_000_000;
  now = (): number => this.t;
}

const servers: HttpServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

async function serve(opts: { metrics?: RelayMetrics; health?: Health; liveStaleMs?: number; listen?: string } = {}) {
  const metrics = opts.metrics ?? new RelayMetrics();
  const health = opts.health ?? new Health();
  const { log, lines } = captureLog();
  const srv = await startHttp(opts.listen ?? '127.0.0.1:0', { metrics, health, log, liveStaleMs: opts.liveStaleMs });
  servers.push(srv);
  const base = `http://127.0.0.1:${srv.port}`;
  return { srv, metrics, health, lines, base };
}

/** The value of one exposition line `name{labels} value`, or undefined when absent. */
function sample(text: string, series: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

describe('ops HTTP: /readyz', () => {
  test('readiness follows Health, and the 503 body names each reason', async () => {
    const { health, base } = await serve();
    health.register('postgres', 'connecting to PostgreSQL');
    health.register('nats', 'connecting to NATS');

    let r = await fetch(`${base}/readyz`);
    assert.equal(r.status, 503);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    assert.deepEqual(await r.json(), {
      status: 'not ready',
      reasons: { postgres: 'connecting to PostgreSQL', nats: 'connecting to NATS' },
    });

    health.set('postgres', true);
    r = await fetch(`${base}/readyz`);
    assert.equal(r.status, 503);
    assert.deepEqual(await r.json(), { status: 'not ready', reasons: { nats: 'connecting to NATS' } });

    health.set('nats', true);
    r = await fetch(`${base}/readyz`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { status: 'ready' });

    health.set('nats', false, 'NATS down: connection refused');
    health.set('slot', false, 'slot lag 2000000 bytes exceeds [relay] max_lag (1000000)');
    r = await fetch(`${base}/readyz`);
    assert.equal(r.status, 503);
    assert.deepEqual(await r.json(), {
      status: 'not ready',
      reasons: { nats: 'NATS down: connection refused', slot: 'slot lag 2000000 bytes exceeds [relay] max_lag (1000000)' },
    });

    // HEAD answers the same status without a body
    r = await fetch(`${base}/readyz`, { method: 'HEAD' });
    assert.equal(r.status, 503);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    health.set('nats', true);
    health.set('slot', true);
    r = await fetch(`${base}/readyz`, { method: 'HEAD' });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-length'), String(JSON.stringify({ status: 'ready' }).length));
  });

  test('Health: a component set without registering counts; a not-ok one without reason gets a generic one', () => {
    const h = new Health();
    assert.deepEqual(h.ready(), { ready: true, reasons: {} });
    h.set('slot', false);
    assert.deepEqual(h.ready(), { ready: false, reasons: { slot: 'slot is not ok' } });
    h.register('slot', 'ignored: already registered');
    assert.deepEqual(h.ready(), { ready: false, reasons: { slot: 'slot is not ok' } });
    h.set('slot', true);
    assert.deepEqual(h.ready(), { ready: true, reasons: {} });
  });
});

describe('ops HTTP: /livez', () => {
  test('200 while loops touch within the bound, 503 naming the stale loop when not', async () => {
    const clock = new Clock();
    const health = new Health(clock.now);
    const { base } = await serve({ health, liveStaleMs: 5_000 });

    // no loop yet: live (startup)
    let r = await fetch(`${base}/livez`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { status: 'ok' });

    health.touch('replication');
    health.touch('heartbeat');
    clock.t += 4_000;
    health.touch('heartbeat');
    r = await fetch(`${base}/livez`);
    assert.equal(r.status, 200);

    clock.t += 2_000; // replication last touched 6 s ago, heartbeat 2 s ago
    r = await fetch(`${base}/livez`);
    assert.equal(r.status, 503);
    assert.deepEqual(await r.json(), { status: 'stale', stale_ms: { replication: 6_000 } });
    r = await fetch(`${base}/livez`, { method: 'HEAD' });
    assert.equal(r.status, 503);

    health.touch('replication');
    r = await fetch(`${base}/livez`, { method: 'HEAD' });
    assert.equal(r.status, 200);

    clock.t += 10_000;
    assert.equal(health.live(5_000), false);
    health.forget('replication');
    health.forget('heartbeat');
    assert.equal(health.live(5_000), true);
    r = await fetch(`${base}/livez`);
    assert.equal(r.status, 200);
  });

  test('without a loop name, touch() watches one default loop', () => {
    const clock = new Clock();
    const h = new Health(clock.now);
    h.touch();
    clock.t += 100;
    assert.equal(h.live(100), true);
    clock.t += 1;
    assert.equal(h.live(100), false);
    h.touch();
    assert.equal(h.live(100), true);
  });
});

describe('ops HTTP: /metrics', () => {
  test('every labelled counter exists at 0 from the start, build_info carries the version, lag is heartbeat-based', async () => {
    const clock = new Clock();
    const metrics = new RelayMetrics({
      now: clock.now,
      version: '9.9.9',
      consumers: ['inventory-fraiseql_order_created'],
      subjects: ['fraiseql.order.created'],
      deadLetterCounts: () => Promise.resolve({ inbound: 3 }),
    });
    const text = await metrics.text();
    for (const d of ['outbound', 'inbound', 'webhook'])
      assert.equal(sample(text, `fraiseql_relay_dead_letters_total{direction="${d}"}`), 0, d);
    for (const t of ['postgres', 'nats']) assert.equal(sample(text, `fraiseql_relay_reconnects_total{target="${t}"}`), 0, t);
    for (const k of ['transient', 'permanent']) assert.equal(sample(text, `fraiseql_relay_publish_errors_total{kind="${k}"}`), 0, k);
    for (const o of ['applied', 'duplicate', 'failed', 'dead_lettered']) {
      assert.equal(sample(text, `fraiseql_relay_handler_calls_total{consumer="inventory-fraiseql_order_created",outcome="${o}"}`), 0, o);
    }
    for (const o of ['delivered', 'retried', 'dead_lettered'])
      assert.equal(sample(text, `fraiseql_relay_webhook_deliveries_total{outcome="${o}"}`), 0, o);
    assert.equal(sample(text, 'fraiseql_relay_events_published_total{subject="fraiseql.order.created"}'), 0);
    assert.equal(sample(text, 'fraiseql_relay_consumer_missing{consumer="inventory-fraiseql_order_created"}'), 0);
    assert.equal(sample(text, `fraiseql_relay_build_info{version="9.9.9",node_version="${process.versions.node}"}`), 1);
    assert.equal(sample(text, 'fraiseql_relay_dead_letter_backlog{direction="inbound"}'), 3);
    assert.equal(sample(text, 'fraiseql_relay_dead_letter_backlog{direction="outbound"}'), 0);
    assert.equal(sample(text, 'fraiseql_relay_lag_seconds'), 0, 'no heartbeat yet: no lag of its own');
    metrics.heartbeatReturned(0.25); // emitted 250 ms before it came back
    clock.t += 8_000; // then nothing comes back for 8 s (an outage)
    assert.equal(sample(await metrics.text(), 'fraiseql_relay_lag_seconds'), 8.25);
    metrics.standby();
    assert.equal(sample(await metrics.text(), 'fraiseql_relay_lag_seconds'), 0);
  });

  test('Prometheus text with the relay metrics, Node defaults, increments and wal_status', async () => {
    const clock = new Clock();
    const metrics = new RelayMetrics({ now: clock.now });
    const { base } = await serve({ metrics });

    metrics.eventsPublished.inc({ subject: 'fraiseql.order.created' }, 3);
    metrics.eventsPublished.inc({ subject: 'fraiseql.order.created' });
    metrics.handlerCalls.inc({ consumer: 'billing', outcome: 'applied' }, 2);
    metrics.publishLatency.observe(0.003);
    metrics.setWalStatus('lost');
    metrics.setSafeWalBytes(null);
    metrics.confirmed(0x16b3748n);
    metrics.active.set(1);
    clock.t += 7_500;

    let r = await fetch(`${base}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    let text = await r.text();

    // Node's default metrics under their standard names, as stock dashboards expect them
    assert.ok(sample(text, 'process_cpu_user_seconds_total') !== undefined, 'default process metric');
    assert.match(text, /^nodejs_heap_size_total_bytes \d/m);
    assert.doesNotMatch(text, /^fraiseql_relay_process_cpu_user_seconds_total/m, 'no prefixed copy');
    // every other metric family is prefixed
    for (const m of text.matchAll(/^# TYPE (\S+)/gm)) {
      if (!/^(process|nodejs)_/.test(m[1]!)) assert.ok(m[1]!.startsWith('fraiseql_relay_'), m[1]);
    }

    assert.equal(sample(text, 'fraiseql_relay_events_published_total{subject="fraiseql.order.created"}'), 4);
    assert.equal(sample(text, 'fraiseql_relay_handler_calls_total{consumer="billing",outcome="applied"}'), 2);
    assert.equal(sample(text, 'fraiseql_relay_publish_latency_seconds_bucket{le="0.0025"}'), 0);
    assert.equal(sample(text, 'fraiseql_relay_publish_latency_seconds_bucket{le="0.005"}'), 1);
    assert.equal(sample(text, 'fraiseql_relay_publish_latency_seconds_count'), 1);
    assert.equal(sample(text, 'fraiseql_relay_slot_wal_status{status="lost"}'), 1);
    assert.equal(sample(text, 'fraiseql_relay_slot_wal_status{status="reserved"}'), 0);
    assert.equal(sample(text, 'fraiseql_relay_slot_safe_wal_bytes'), -1);
    assert.equal(sample(text, 'fraiseql_relay_confirmed_lsn'), 0x16b3748);
    assert.equal(sample(text, 'fraiseql_relay_last_confirmed_lsn_age_seconds'), 7.5);
    assert.equal(sample(text, 'fraiseql_relay_heartbeat_age_seconds'), 7.5);
    assert.equal(sample(text, 'fraiseql_relay_active'), 1);
    assert.equal(sample(text, 'fraiseql_relay_up{target="nats"}'), 0);
    for (const name of [
      'events_unrouted_total',
      'in_flight_messages',
      'in_flight_bytes',
      'slot_lag_bytes',
      'slot_retained_bytes',
      'heartbeat_lag_seconds',
    ]) {
      assert.ok(sample(text, `fraiseql_relay_${name}`) !== undefined, name);
    }

    // the gauges move with the state
    metrics.setWalStatus('reserved');
    metrics.setSafeWalBytes(1024);
    metrics.heartbeatReturned(0.25);
    metrics.eventsPublished.inc({ subject: 'fraiseql.order.created' });
    clock.t += 1_000;
    text = await (await fetch(`${base}/metrics`)).text();
    assert.equal(sample(text, 'fraiseql_relay_slot_wal_status{status="lost"}'), 0);
    assert.equal(sample(text, 'fraiseql_relay_slot_wal_status{status="reserved"}'), 1);
    assert.equal(sample(text, 'fraiseql_relay_slot_safe_wal_bytes'), 1024);
    assert.equal(sample(text, 'fraiseql_relay_heartbeat_lag_seconds'), 0.25);
    assert.equal(sample(text, 'fraiseql_relay_heartbeat_age_seconds'), 1);
    assert.equal(sample(text, 'fraiseql_relay_last_confirmed_lsn_age_seconds'), 8.5);
    assert.equal(sample(text, 'fraiseql_relay_events_published_total{subject="fraiseql.order.created"}'), 5);

    // the hot path: every event counted, latency sampled at most once per millisecond
    clock.t = 1_000_000;
    metrics.published('fraiseql.order.created', clock.t - 3);
    metrics.published('fraiseql.order.created', clock.t - 500);
    metrics.published('audit.order', clock.t - 500);
    clock.t += 1;
    metrics.published('audit.order', clock.t - 40);
    text = await (await fetch(`${base}/metrics`)).text();
    assert.equal(sample(text, 'fraiseql_relay_events_published_total{subject="fraiseql.order.created"}'), 7);
    assert.equal(sample(text, 'fraiseql_relay_events_published_total{subject="audit.order"}'), 2);
    assert.equal(sample(text, 'fraiseql_relay_publish_latency_seconds_count'), 3, 'one sample per millisecond');
    assert.equal(sample(text, 'fraiseql_relay_publish_latency_seconds_bucket{le="0.005"}'), 2);
    text = await (await fetch(`${base}/metrics`)).text();
    assert.equal(sample(text, 'fraiseql_relay_events_published_total{subject="audit.order"}'), 2, 'counted once');

    // HEAD: headers only
    r = await fetch(`${base}/metrics`, { method: 'HEAD' });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  });

  test('each RelayMetrics has its own registry: two in one process neither collide nor share', async () => {
    const a = new RelayMetrics();
    const b = new RelayMetrics();
    a.reconnects.inc({ target: 'nats' });
    assert.equal(sample(await a.text(), 'fraiseql_relay_reconnects_total{target="nats"}'), 1);
    assert.equal(sample(await b.text(), 'fraiseql_relay_reconnects_total{target="nats"}'), 0, 'the other counts nothing (it starts at 0)');
    assert.deepEqual(PUBLISH_LATENCY_BUCKETS.at(0), 0.0005);
    assert.deepEqual(PUBLISH_LATENCY_BUCKETS.at(-1), 60);
  });
});

describe('ops HTTP: server', () => {
  test('unknown paths are 404, other methods 405', async () => {
    const { base } = await serve();
    let r = await fetch(`${base}/nope`);
    assert.equal(r.status, 404);
    assert.equal(((await r.json()) as { status: string }).status, 'not found');
    r = await fetch(`${base}/`);
    assert.equal(r.status, 404);
    await r.arrayBuffer();
    r = await fetch(`${base}/metrics`, { method: 'POST', body: 'x' });
    assert.equal(r.status, 405);
    assert.equal(r.headers.get('allow'), 'GET, HEAD');
    await r.arrayBuffer();
    // a query string does not change the route
    r = await fetch(`${base}/livez?verbose=1`);
    assert.equal(r.status, 200);
    await r.arrayBuffer();
  });

  test('logs one line with the address at start, and close() stops serving', async () => {
    const { srv, lines, base } = await serve();
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!['listen'], `127.0.0.1:${srv.port}`);
    assert.ok(srv.port > 0);
    await srv.close();
    await assert.rejects(fetch(`${base}/livez`));
    await srv.close(); // idempotent
  });

  test('a port in use rejects with a message naming the address and [relay] listen', async () => {
    const { srv } = await serve();
    const { log } = captureLog();
    const err = await startHttp(`127.0.0.1:${srv.port}`, { metrics: new RelayMetrics(), health: new Health(), log }).then(
      (s) => {
        servers.push(s);
        return undefined;
      },
      (e: unknown) => e,
    );
    assert.ok(err instanceof UsageError, 'a UsageError (exit code 2)');
    assert.ok(err.message.includes(`127.0.0.1:${srv.port}`), err.message);
    assert.match(err.message, /\[relay\] listen/);
    assert.match(err.message, /already in use/);
  });

  test('listen addresses: host:port, :port, [IPv6]:port', async () => {
    assert.deepEqual(parseListen('0.0.0.0:9464'), { host: '0.0.0.0', port: 9464 });
    assert.deepEqual(parseListen(':9464'), { host: undefined, port: 9464 });
    assert.deepEqual(parseListen('[::]:9464'), { host: '::', port: 9464 });
    assert.deepEqual(parseListen('localhost:0'), { host: 'localhost', port: 0 });
    assert.throws(() => parseListen('9464'), /\[relay\] listen/);
    assert.throws(() => parseListen('[::]:70000'), /\[relay\] listen/);

    // IPv6 loopback, where the machine has one
    const { log } = captureLog();
    let v6: HttpServer | undefined;
    try {
      v6 = await startHttp('[::1]:0', { metrics: new RelayMetrics(), health: new Health(), log });
    } catch (e) {
      if (e instanceof UsageError && /EADDRNOTAVAIL|not an address|EAFNOSUPPORT/.test(e.message)) return; // no IPv6 here
      throw e;
    }
    servers.push(v6);
    const r = await fetch(`http://[::1]:${v6.port}/livez`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { status: 'ok' });
  });
});

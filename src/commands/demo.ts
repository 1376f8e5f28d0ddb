import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as natsConnect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { parseConfig } from '../config/load.js';
import { createLogger } from '../log.js';
import { migrate } from '../migrate.js';
import { Relay } from '../relay.js';
import { LocalPostgres } from '../local/postgres.js';
import { LocalNats } from '../local/nats.js';
import { withClient } from '../db.js';

export interface DemoOptions {
  logLevel: string;
  /** orders per phase (before, during and after the NATS outage) */
  orders: number;
  outageSeconds: number;
}

/** The order service of the seed: a table, the v2 mutation_response, and a mutation that emits. */
export const ORDER_SERVICE_SQL = `
CREATE SCHEMA IF NOT EXISTS app;
DO $$ BEGIN
  CREATE TYPE app.mutation_response AS (
    succeeded boolean, state_changed boolean, error_class text, status_detail text, http_status smallint,
    message text, entity_id uuid, entity_type text, entity jsonb, updated_fields text[], cascade jsonb,
    error_detail jsonb, metadata jsonb);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE IF NOT EXISTS app.tb_order (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  customer text NOT NULL,
  item_ids text[] NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION app.fn_create_order(p_customer text, p_item_ids text[])
RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE
  v_order app.tb_order;
  v_result app.mutation_response;
BEGIN
  INSERT INTO app.tb_order (customer, item_ids) VALUES (p_customer, p_item_ids) RETURNING * INTO v_order;
  v_result := ROW(true, true, NULL, 'created', 201, 'order created', v_order.id, 'Order',
                  to_jsonb(v_order), NULL, NULL, NULL, jsonb_build_object('item_ids', to_jsonb(p_item_ids)));
  RETURN fraiseql_relay.emit_mutation('create_order', v_result);
END $$;
`;

const demoToml = (pgUrl: string, natsUrl: string) => `# written by fraiseql-relay demo
[project]
name = "order-service"

[database]
type = "postgresql"
url = "${pgUrl}"

[observers]
backend = "nats"
nats_url = "${natsUrl}"

[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"

[relay]
listen = "127.0.0.1:0"

[relay.stream]
name = "FRAISEQL"
duplicate_window = "10m"
`;

const out = (s: string) => process.stdout.write(s + '\n');

async function waitFor(what: string, timeoutMs: number, fn: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`demo: timed out waiting for ${what}`);
}

/**
 * Throwaway PostgreSQL and NATS, the order service, the relay; orders before, during and after
 * a NATS outage; then a table showing that every committed order reached JetStream exactly once.
 */
export async function runDemo(opts: DemoOptions): Promise<number> {
  const log = createLogger(opts.logLevel);
  const n = Math.max(1, Math.floor(opts.orders));
  out('fraiseql-relay demo: starting a throwaway PostgreSQL and NATS JetStream…');
  const pg = await LocalPostgres.start();
  let nats: LocalNats | null = null;
  let relay: Relay | null = null;
  const dir = await mkdtemp(join(tmpdir(), 'fraiseql-relay-demo-'));
  try {
    nats = await LocalNats.start();
    const dbUrl = await pg.createDatabase('orders');
    const file = join(dir, 'fraiseql.toml');
    await writeFile(file, demoToml(dbUrl, nats.url));
    const config = parseConfig(demoToml(dbUrl, nats.url), file);
    out(`  PostgreSQL on port ${pg.port}, NATS on ${nats.url}, config ${file}`);

    await migrate(config, log);
    await withClient(dbUrl, (c) => c.query(ORDER_SERVICE_SQL).then(() => undefined));
    out('  migrated: schema fraiseql_relay, outbox, publication, slot; order service created');

    relay = new Relay(config, log, { publishTimeoutMs: 2000, backoffMinMs: 200, backoffMaxMs: 2000 });
    await relay.start();
    out('  relay running\n');

    const phases: { name: string; ids: string[] }[] = [];
    const createOrders = async (phase: string) => {
      const ids: string[] = [];
      await withClient(dbUrl, async (c) => {
        for (let i = 0; i < n; i++) {
          const r = await c.query<{ entity_id: string }>(
            `SELECT entity_id::text FROM app.fn_create_order($1, ARRAY['SKU-' || (1 + $2::int % 5)])`,
            [`customer-${phase}-${i}`, i],
          );
          ids.push(r.rows[0]!.entity_id);
        }
      });
      phases.push({ name: phase, ids });
      out(`  committed ${n} orders (${phase})`);
    };

    await createOrders('NATS up');
    await nats.stop();
    out(`  NATS stopped: the relay stops confirming the slot and retries; the service keeps committing`);
    await createOrders('NATS down');
    await new Promise((r) => setTimeout(r, opts.outageSeconds * 1000));
    await nats.start();
    out(`  NATS restarted after ${opts.outageSeconds}s`);
    await createOrders('NATS back');

    const total = phases.reduce((a, p) => a + p.ids.length, 0);
    const nc = await natsConnect({ servers: nats.url });
    const counts = new Map<string, number>();
    try {
      const jsm = await jetstreamManager(nc);
      await waitFor('every order to reach JetStream', 90_000, async () => {
        try {
          return (await jsm.streams.info('FRAISEQL')).state.messages >= total;
        } catch {
          return false;
        }
      });
      const stored = (await jsm.streams.info('FRAISEQL')).state.messages;
      const js = jetstream(nc);
      const consumer = await js.consumers.get('FRAISEQL');
      const iter = await consumer.fetch({ max_messages: stored, expires: 5000 });
      let read = 0;
      for await (const m of iter) {
        const body = m.json<{ id: string }>();
        counts.set(body.id, (counts.get(body.id) ?? 0) + 1);
        if (++read >= stored) break;
      }
    } finally {
      await nc.close();
    }

    out('');
    out('  phase        committed   in JetStream   exactly once');
    out('  ───────────  ─────────   ────────────   ────────────');
    let ok = true;
    for (const p of phases) {
      const arrived = p.ids.filter((id) => (counts.get(id) ?? 0) > 0).length;
      const once = p.ids.filter((id) => counts.get(id) === 1).length;
      if (once !== p.ids.length) ok = false;
      out(`  ${p.name.padEnd(11)}  ${String(p.ids.length).padStart(9)}   ${String(arrived).padStart(12)}   ${String(once).padStart(12)}`);
    }
    const all = phases.flatMap((p) => p.ids);
    const once = all.filter((id) => counts.get(id) === 1).length;
    out(`  ${'total'.padEnd(11)}  ${String(all.length).padStart(9)}   ${String(all.filter((id) => counts.has(id)).length).padStart(12)}   ${String(once).padStart(12)}`);
    out('');
    out(ok ? `  ✔ every committed order arrived in JetStream exactly once, including the ${n} committed while NATS was down`
           : `  ✘ some orders are missing or duplicated`);
    return ok ? 0 : 1;
  } finally {
    await relay?.stop().catch(() => {});
    await nats?.destroy().catch(() => {});
    await pg.destroy().catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  }
}

/**
 * Fresh servers for each section of the benchmark: PostgreSQL and nats-server started anew, the
 * relay's schema migrated and the benchmark's SQL (payloads, backlog and paced producers, the
 * trivial handler) created.
 */
import { BenchEnv } from './env.js';
import { errMsg } from './util.js';
import { log } from './settings.js';

const SETUP_SQL = `
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE FUNCTION bench.payload(i bigint) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('n', i, 'customer', 'customer-' || i, 'items', jsonb_build_array('SKU-1', 'SKU-2'),
                            'amount', i * 1.5, 'note', repeat('x', 120)) $$;
CREATE OR REPLACE PROCEDURE bench.backlog(n int, per_tx int, p_subject text, first int DEFAULT 1) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN first..first + n - 1 LOOP
    PERFORM fraiseql_relay.emit(p_subject, bench.payload(i));
    IF i % per_tx = 0 THEN COMMIT; END IF;
  END LOOP;
  COMMIT;
END $$;
CREATE OR REPLACE PROCEDURE bench.produce(rate float8, secs float8, INOUT produced bigint DEFAULT 0) LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  el float8;
  ahead float8;
BEGIN
  produced := 0;
  LOOP
    el := extract(epoch FROM clock_timestamp() - t0);
    EXIT WHEN el >= secs;
    ahead := produced / rate - el;
    IF ahead > 0.002 THEN PERFORM pg_sleep(ahead); END IF;
    PERFORM fraiseql_relay.emit('bench.lat', jsonb_build_object(
      'bench_t', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'n', produced, 'note', repeat('x', 120)));
    COMMIT;
    produced := produced + 1;
  END LOOP;
END $$;
CREATE TABLE IF NOT EXISTS bench.seen (n int);
CREATE OR REPLACE FUNCTION bench.fn_trivial(p jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO bench.seen VALUES ((p->>'n')::int) $$;
`;

/** Fresh servers for one section: the relay's schema migrated, the benchmark's functions created. */
async function freshEnv(settings: Record<string, string>): Promise<BenchEnv> {
  const env = await BenchEnv.create(settings);
  try {
    await env.migrateRelay();
    await env.dropSlot('fraiseql_relay'); // created by migrate; every run uses its own slot
    await env.sql(SETUP_SQL);
    return env;
  } catch (err) {
    await env.destroy().catch(() => {});
    throw err;
  }
}

/** Runs a section on fresh servers (with extra PostgreSQL `settings`); a failure to set them up is reported by `onError`. */
export async function section(
  name: string,
  fn: (env: BenchEnv) => Promise<void>,
  onError: (e: string) => void,
  settings: Record<string, string> = {},
): Promise<void> {
  let env: BenchEnv | null = null;
  try {
    env = await freshEnv(settings);
    await fn(env);
  } catch (err) {
    log(`${name}: failed: ${errMsg(err)}`);
    onError(errMsg(err));
  } finally {
    await env?.destroy().catch(() => {});
  }
}

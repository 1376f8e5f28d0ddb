import { jetstreamManager } from '@nats-io/jetstream';
import type pg from 'pg';
import { defaultConsumerName, type Config } from '../config/load.js';
import { connectOnce } from '../sink/nats.js';
import type { Logger } from '../util/log.js';
import { connect, quoteIdent } from '../util/db.js';
import { errorMessage } from '../util/errors.js';
import { allowedPlugins } from '../schema/migrate.js';
import { loadMigrations, needsSlot, outboxPublication } from '../schema/plan.js';
import { requiredSubjects } from '../route/targets.js';
import { filterCovers } from '../sink/subjects.js';
import { checkHandler } from '../inbound/inbox.js';
import { identityProblem, resolveChangeLog, resolveRuleTables, tablesPublication } from '../schema/tables.js';
import { checkRuleFilters } from '../schema/filters.js';
import { readSlot, slotRecord } from '../schema/slot.js';
import { inspectOwnership, ownershipProbes } from '../schema/ownership.js';
import { namesProbe, resolveNames } from '../schema/names.js';
import { probeStream } from '../sink/stream.js';
import { loadMutationMap, type MutationInfo } from '../route/changelog.js';
import { probeRedis } from './check-redis.js';

type Status = 'ok' | 'warn' | 'fail';
interface Probe {
  what: string;
  status: Status;
  detail: string;
}

/** The PostgreSQL majors the relay is tested on (`npm test` and `npm run test:matrix`). */
const MIN_POSTGRES = 14;
const MAX_POSTGRES = 18;

async function probePostgres(config: Config, out: Probe[]): Promise<void> {
  let client;
  try {
    client = await connect(config.database.url, { connectionTimeoutMillis: 5000 });
  } catch (err) {
    out.push({
      what: 'postgres',
      status: 'fail',
      detail: `cannot connect ([database] url): ${errorMessage(err)}`,
    });
    return;
  }
  try {
    const v = (
      await client.query<{ num: string; version: string }>(`SELECT current_setting('server_version_num') AS num, version() AS version`)
    ).rows[0]!;
    const versionNum = Number(v.num);
    const major = Math.floor(versionNum / 10000);
    const shortVersion = v.version.split(' on ')[0] ?? v.version;
    if (major < MIN_POSTGRES || major > MAX_POSTGRES) {
      out.push({
        what: 'postgres',
        status: 'fail',
        detail:
          `connected to ${shortVersion}, which fraiseql-relay does not support: it is tested on PostgreSQL ${MIN_POSTGRES} to ${MAX_POSTGRES} ` +
          `(pgoutput's protocol, pg_replication_slots.wal_status and the publication options it relies on). Upgrade the server, or use a release that supports it`,
      });
    } else out.push({ what: 'postgres', status: 'ok', detail: `connected: ${shortVersion}` });
    if (major < 15) {
      for (const [i, rule] of config.observers.rules.entries()) {
        if (rule.where !== undefined) {
          out.push({
            what: `rule #${i + 1} where`,
            status: 'fail',
            detail: `publication row filters need PostgreSQL 15 or later (this server is ${shortVersion}): remove where, or upgrade`,
          });
        }
      }
    }
    // the slot and publication names: derived, as written, or a fraiseql-relay 0.1 installation's (schema/names.ts)
    const names = await resolveNames(client, config);
    config = names.config;
    out.push(namesProbe(names));
    const wal = (await client.query<{ wal_level: string }>('SHOW wal_level')).rows[0]?.wal_level;
    out.push(
      wal === 'logical'
        ? { what: 'wal_level', status: 'ok', detail: 'logical' }
        : { what: 'wal_level', status: 'fail', detail: `${wal}: set wal_level = logical and restart PostgreSQL` },
    );
    const s = config.relay.schema;
    const latest = Math.max(...loadMigrations(s).map((m) => m.id));
    const m = await client.query<{ max: number | null }>(`SELECT CASE WHEN to_regclass($1) IS NULL THEN NULL ELSE 0 END AS max`, [
      `${quoteIdent(s)}.migrations`,
    ]);
    if (m.rows[0]?.max === null) {
      out.push({ what: 'schema', status: 'fail', detail: `schema ${s} is not migrated: run fraiseql-relay migrate` });
    } else {
      const applied =
        (await client.query<{ max: number | null }>(`SELECT max(id) AS max FROM ${quoteIdent(s)}.migrations`)).rows[0]?.max ?? 0;
      out.push(
        applied >= latest
          ? { what: 'schema', status: 'ok', detail: `${s} at migration ${applied}` }
          : { what: 'schema', status: 'fail', detail: `${s} at migration ${applied}, ${latest} available: run fraiseql-relay migrate` },
      );
    }
    const pub = outboxPublication(config);
    const p = await client.query<{ pubinsert: boolean; has_outbox: boolean }>(
      `SELECT p.pubinsert, EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname AND t.schemaname = $2 AND t.tablename = 'outbox') AS has_outbox
         FROM pg_publication p WHERE p.pubname = $1`,
      [pub, s],
    );
    const pr = p.rows[0];
    out.push(
      !pr
        ? { what: 'publication', status: 'fail', detail: `${pub} is missing: run fraiseql-relay migrate` }
        : !pr.has_outbox || !pr.pubinsert
          ? { what: 'publication', status: 'fail', detail: `${pub} does not publish inserts into ${s}.outbox: run fraiseql-relay migrate` }
          : { what: 'publication', status: 'ok', detail: `${pub} publishes ${s}.outbox inserts` },
    );
    if (needsSlot(config)) {
      const slot = config.relay.slot;
      const row = await readSlot(client, slot);
      // whose the slot and publications are: what migrate, run, teardown and reconcile would refuse
      const owned = await inspectOwnership(client, config, {
        slot: row,
        publications: config.observers.rules.length > 0 ? ['outbox', 'tables'] : ['outbox'],
      });
      out.push(...ownershipProbes(owned, config));
      const allowed = await allowedPlugins(client);
      if (allowed && !allowed.includes(config.relay.plugin)) {
        out.push({
          what: 'plugin',
          status: 'fail',
          detail: `${config.relay.plugin} is not in output_plugin_libraries ('${allowed.join(', ')}'): as a superuser run ALTER SYSTEM SET output_plugin_libraries = ${[...allowed, config.relay.plugin].map((p) => `'${p}'`).join(', ')}; SELECT pg_reload_conf();`,
        });
      } else {
        out.push({ what: 'plugin', status: 'ok', detail: config.relay.plugin });
      }
      if (!row.exists) {
        const lost = await slotRecord(client, config.relay.schema, slot);
        out.push({
          what: 'slot',
          status: 'fail',
          detail: lost
            ? `${slot} is missing, but this relay streamed from it (${lost.table}): it was lost, e.g. in a failover; run fraiseql-relay reconcile --yes, not migrate`
            : `${slot} is missing: run fraiseql-relay migrate`,
        });
      } else if (owned.slot?.ownership.state === 'foreign') {
        out.push({ what: 'slot', status: 'fail', detail: `${slot} is not this relay's (see ownership)` });
      } else if (row.plugin !== config.relay.plugin) {
        out.push({
          what: 'slot',
          status: 'fail',
          detail: `${slot} uses plugin ${row.plugin}, but [relay] plugin = "${config.relay.plugin}": set plugin = "${row.plugin}" or recreate the slot`,
        });
      } else if (row.walStatus === 'lost')
        out.push({ what: 'slot', status: 'fail', detail: `${slot} was invalidated (wal_status = lost)` });
      else {
        out.push({
          what: 'slot',
          status: 'ok',
          detail: `${slot}: plugin ${row.plugin}, ${row.activePid ? `active (pid ${row.activePid})` : 'inactive'}, wal_status ${row.walStatus ?? 'n/a'}, lag ${row.confirmedLsn === null ? '?' : row.lagBytes} bytes`,
        });
      }
    }
    if (config.observers.rules.length > 0) {
      try {
        const { tables, perRule } = await resolveRuleTables(client, config);
        for (const f of await checkRuleFilters(client, config, perRule, major >= 15)) {
          out.push({ what: `rule #${f.rule} ${f.key}`, status: 'fail', detail: f.problem });
        }
        const filters = new Map(
          (
            await client.query<{ t: string; rowfilter: string | null }>(
              // rowfilter: PostgreSQL 15 and later
              `SELECT schemaname || '.' || tablename AS t, ${major >= 15 ? 'rowfilter' : 'NULL::text AS rowfilter'} FROM pg_publication_tables WHERE pubname = $1`,
              [tablesPublication(config)],
            )
          ).rows.map((r) => [r.t, r.rowfilter]),
        );
        const pubTables = new Set(
          (
            await client.query<{ t: string }>(`SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables WHERE pubname = $1`, [
              tablesPublication(config),
            ])
          ).rows.map((r) => r.t),
        );
        for (const t of tables) {
          const name = `${t.schema}.${t.name}`;
          const problem = identityProblem(t);
          if (problem) out.push({ what: `rule table ${name}`, status: 'fail', detail: problem });
          else if (!pubTables.has(name))
            out.push({
              what: `rule table ${name}`,
              status: 'fail',
              detail: `not in publication ${tablesPublication(config)}: run fraiseql-relay migrate`,
            });
          else if (t.where !== null && !filters.get(name))
            out.push({
              what: `rule table ${name}`,
              status: 'fail',
              detail: `its rules have where = ${JSON.stringify(t.where)}, but publication ${tablesPublication(config)} has no row filter for it: run fraiseql-relay migrate`,
            });
          else
            out.push({
              what: `rule table ${name}`,
              status: 'ok',
              detail: `${[...t.events].join('/')} published${filters.get(name) ? `, rows where ${filters.get(name)}` : ''}`,
            });
        }
      } catch (err) {
        out.push({ what: 'rule tables', status: 'fail', detail: errorMessage(err) });
      }
    }
    const changeLog = await resolveChangeLog(client, config).catch(() => null);
    if (changeLog) {
      const q = `${quoteIdent(changeLog.schema)}.${quoteIdent(changeLog.name)}`;
      const r = await client.query<{ rls: boolean; owner: boolean; bypass: boolean }>(
        `SELECT c.relrowsecurity AS rls, pg_has_role(current_user, c.relowner, 'USAGE') AS owner,
                (SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user) AS bypass
           FROM pg_class c WHERE c.oid = to_regclass($1)`,
        [q],
      );
      const row = r.rows[0];
      if (row?.rls && !row.owner && !row.bypass) {
        out.push({
          what: 'change log',
          status: 'warn',
          detail: `${changeLog.schema}.${changeLog.name} has row-level security and the relay's role neither owns it nor has BYPASSRLS: replay would read nothing. ALTER ROLE … BYPASSRLS, or run the relay as the owner`,
        });
      } else {
        out.push({ what: 'change log', status: 'ok', detail: `${changeLog.schema}.${changeLog.name} is streamed` });
      }
    }
    if (config.observers.publish.length > 0) await probePublishSources(client, config, changeLog, out);
    for (const sub of config.observers.subscribe) {
      const problem = await checkHandler(client, sub.handler);
      out.push(
        problem
          ? { what: `handler ${sub.handler}`, status: 'fail', detail: problem }
          : {
              what: `handler ${sub.handler}`,
              status: 'ok',
              detail: `${sub.handler}(jsonb) exists; consumer ${sub.consumer} on ${sub.subject}`,
            },
      );
    }
  } catch (err) {
    out.push({ what: 'postgres', status: 'fail', detail: errorMessage(err) });
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Which source carries each `[[observers.publish]]` entry's event: the outbox (a function calls
 * `emit_mutation('<mutation>', …)`, found in `pg_proc.prosrc`) or FraiseQL's change log (an entity
 * entry, or a mutation entry the compiled schema maps to its entity types). With both, the relay
 * publishes the outbox event and not the change-log row of the same transaction.
 */
async function probePublishSources(
  client: pg.Client,
  config: Config,
  changeLog: { schema: string; name: string } | null,
  out: Probe[],
): Promise<void> {
  const log = changeLog ? `${changeLog.schema}.${changeLog.name}` : null;
  let mutations: Map<string, MutationInfo> | null = null;
  let schemaProblem: string | null = null;
  if (config.relay.schema_file !== undefined) {
    try {
      mutations = loadMutationMap(config.relay.schema_file);
    } catch (err) {
      schemaProblem = errorMessage(err);
    }
  }
  const fns = (
    await client.query<{ fn: string; src: string }>(
      `SELECT n.nspname || '.' || p.proname AS fn, p.prosrc AS src
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosrc LIKE '%emit_mutation%' AND n.nspname <> ALL ($1::text[]) ORDER BY 1`,
      [[config.relay.schema, 'pg_catalog', 'information_schema']],
    )
  ).rows;
  const norm = (n: string) => n.replace(/_/g, '').toLowerCase();
  const bare = (n: string) => n.toLowerCase().split('.').pop()!;
  const calls = /emit_mutation\s*\(\s*'([^']*)'/gi;
  for (const p of config.observers.publish) {
    if (p.mutation === undefined) {
      const what = `publish ${p.entity ?? '?'}${p.operation ? ` ${p.operation}` : ''} → ${p.subject}`;
      out.push(
        log
          ? { what, status: 'ok', detail: `change log ${log}: rows of ${p.entity ?? '?'}` }
          : { what, status: 'warn', detail: "an entity entry matches rows of FraiseQL's change log, which is not streamed" },
      );
      continue;
    }
    const what = `publish ${p.mutation} → ${p.subject}`;
    const info = mutations?.get(norm(p.mutation)) ?? null;
    const emitters = fns
      .filter(
        (f) =>
          [...f.src.matchAll(calls)].some((m) => norm(m[1]!) === norm(p.mutation!)) ||
          (info !== null && info.sqlSource !== null && bare(info.sqlSource) === bare(f.fn) && f.src.includes('emit_mutation')),
      )
      .map((f) => f.fn);
    if (emitters.length > 0) {
      out.push({
        what,
        status: 'ok',
        detail:
          `outbox: emit_mutation in ${emitters.join(', ')}` +
          (log ? `; FraiseQL's change-log row for the same mutation (same transaction) is not published again` : ''),
      });
    } else if (log && info) {
      out.push({
        what,
        status: 'ok',
        detail: `change log ${log}: ${[...info.entities].join(' | ')} ${info.operation} rows ([relay] schema_file); no function calls emit_mutation('${p.mutation}')`,
      });
    } else {
      const why = !log
        ? "FraiseQL's change log is not streamed"
        : schemaProblem
          ? `the change log cannot match it: ${schemaProblem}`
          : config.relay.schema_file === undefined
            ? "the change log can only match it through FraiseQL's compiled schema: set [relay] schema_file"
            : `the change log cannot match it: ${config.relay.schema_file} has no mutation ${p.mutation}`;
      out.push({
        what,
        status: 'warn',
        detail: `no function calls emit_mutation('${p.mutation}') and ${why}: nothing publishes this entry`,
      });
    }
  }
}

async function probeNats(config: Config, out: Probe[]): Promise<void> {
  const url = config.observers.nats_url;
  if (config.observers.backend !== 'nats') return;
  if (!url) {
    out.push({ what: 'nats', status: 'fail', detail: '[observers] nats_url is not set' });
    return;
  }
  let nc;
  try {
    nc = await connectOnce(config, 'check');
  } catch (err) {
    out.push({
      what: 'nats',
      status: 'fail',
      detail: `cannot connect ([observers] nats_url): ${errorMessage(err)}`,
    });
    return;
  }
  try {
    out.push({
      what: 'nats',
      status: 'ok',
      detail: `connected, server ${nc.info?.version ?? '?'}, max_payload ${nc.info?.max_payload ?? '?'}`,
    });
    let jsm;
    try {
      jsm = await jetstreamManager(nc, { timeout: 5000 });
    } catch (err) {
      out.push({
        what: 'jetstream',
        status: 'fail',
        detail: `JetStream is not enabled on the server (start nats-server with -js): ${errorMessage(err)}`,
      });
      return;
    }
    const cfg = config.relay.stream;
    out.push(...(await probeStream(nc, jsm, config, requiredSubjects(config))));
    let subjects: string[] | null = null;
    try {
      subjects = (await jsm.streams.info(cfg.name)).config.subjects ?? [];
    } catch {
      subjects = null;
    }
    const wanted = [...requiredSubjects(config), ...config.observers.subscribe.map((s) => s.subject)];
    for (const subject of [...new Set(wanted)]) {
      if (subjects && subjects.some((s) => filterCovers(s, subject))) {
        out.push({ what: `subject ${subject}`, status: 'ok', detail: `captured by stream ${cfg.name}` });
        continue;
      }
      let other: string | null = null;
      try {
        other = await jsm.streams.find(subject);
      } catch {
        other = null;
      }
      if (other) out.push({ what: `subject ${subject}`, status: 'ok', detail: `captured by stream ${other}` });
      else if (cfg.create)
        out.push({ what: `subject ${subject}`, status: 'warn', detail: `not captured yet; run will add it to stream ${cfg.name}` });
      else out.push({ what: `subject ${subject}`, status: 'fail', detail: `no stream captures it and [relay.stream] create = false` });
    }
  } finally {
    await nc.close().catch(() => {});
  }
}

/** The service name and where it came from, and each subscription's durable consumer name. */
function serviceProbes(config: Config): Probe[] {
  const { name, source, from } = config.project;
  const out: Probe[] = [
    source === 'project'
      ? { what: 'service', status: 'ok', detail: `${name} (from ${from})` }
      : {
          // every cluster has a database "postgres": two services named after it would share consumers
          what: 'service',
          status: name === 'postgres' ? 'warn' : 'ok',
          detail:
            `${name} (derived from ${from}; default consumer names follow it: set [project] name to pin it)` +
            (name === 'postgres'
              ? '; every PostgreSQL cluster has a database "postgres", so another service may derive the same name'
              : ''),
        },
  ];
  for (const sub of config.observers.subscribe) {
    const derived = sub.consumer === defaultConsumerName(name, sub.subject);
    out.push({
      what: `consumer ${sub.consumer}`,
      status: 'ok',
      detail: `${sub.subject} → ${sub.handler} (${derived ? 'default: <service>-<subject>' : 'consumer = … in the file'})`,
    });
  }
  return out;
}

/**
 * Validates the configuration and probes PostgreSQL and NATS. Changes nothing. `--json`:
 * `{ "ok": boolean, "probes": [{ "what", "status": "ok" | "warn" | "fail", "detail" }] }`.
 */
export async function runCheck(config: Config, _log: Logger, opts: { json?: boolean } = {}): Promise<number> {
  const out: Probe[] = [{ what: 'config', status: 'ok', detail: config.file }, ...serviceProbes(config)];
  await probePostgres(config, out);
  await probeNats(config, out);
  if (config.observers.backend === 'redis') out.push(...(await probeRedis(config)));
  if (config.observers.backend === 'postgres') {
    const subs = config.observers.subscribe.length;
    out.push({
      what: 'backend',
      status: subs > 0 ? 'ok' : 'warn',
      detail:
        subs > 0
          ? `postgres: no broker; ${subs} subscription(s) applied from this database's slot, in commit order`
          : 'postgres: no broker and no [[observers.subscribe]]: every event is acknowledged and applied nowhere',
    });
  }
  const ok = !out.some((p) => p.status === 'fail');
  if (opts.json) {
    process.stdout.write(JSON.stringify({ ok, probes: out.map(({ what, status, detail }) => ({ what, status, detail })) }, null, 2) + '\n');
    return ok ? 0 : 1;
  }
  const w = Math.max(...out.map((p) => p.what.length));
  for (const p of out) {
    process.stdout.write(`${p.status === 'ok' ? 'ok  ' : p.status === 'warn' ? 'warn' : 'FAIL'}  ${p.what.padEnd(w)}  ${p.detail}\n`);
  }
  return ok ? 0 : 1;
}

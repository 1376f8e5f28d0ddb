/**
 * deploy/monitoring: the Prometheus alerting rules and the Grafana dashboard agree with the
 * relay's metrics and with each other's copies.
 *
 * - `promtool check rules` and `promtool test rules` (alerts.test.yaml: every alert fires in one
 *   case and stays silent in another);
 * - every metric the rules and the dashboard query, and every label value they match on, is in
 *   a real /metrics scrape of a running relay (PostgreSQL and NATS, one published and one
 *   handled event), or of a relay with backend = "redis" for the label values only it exposes;
 * - the dashboard is a Grafana dashboard whose queries parse (promtool) and filter on the
 *   dashboard's namespace and job variables;
 * - the Helm chart's and the Kustomize component's copies are the same rules and dashboard;
 * - README.md's alert table lists exactly these alerts, with their severities.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ROOT, TestEnv, until } from './fixture.js';
import { RedisEnv } from './redis-fixture.js';
import { startDaemon, type Daemon } from '../src/daemon.js';
import { createLogger } from '../src/util/log.js';

const MONITORING = join(ROOT, 'deploy', 'monitoring');
const RULES_FILE = join(MONITORING, 'alerts.yaml');
const RULES_TEST_FILE = join(MONITORING, 'alerts.test.yaml');
const DASHBOARD_FILE = join(MONITORING, 'dashboard.json');
const CHART_FILES = join(ROOT, 'deploy', 'helm', 'fraiseql-relay', 'files');
const COMPONENT = join(ROOT, 'deploy', 'kubernetes', 'components', 'monitoring');

/** Labels the scraper adds to every series (Prometheus, the Prometheus Operator), never the relay. */
const TARGET_LABELS = new Set(['namespace', 'job', 'instance', 'pod', 'service', 'container', 'endpoint']);
const SEVERITIES = new Set(['critical', 'warning', 'info']);

/** Parsed JSON and YAML are untyped trees, read by key path. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any parsed node, indexed freely
type Tree = any;

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

function read(path: string): string {
  return readFileSync(path, 'utf8');
}

function rules(): Rule[] {
  const file = parseYaml(read(RULES_FILE)) as { groups: { name: string; rules: Rule[] }[] };
  return file.groups.flatMap((g) => g.rules);
}

function alerts(): Rule[] {
  return rules().filter((r) => r.alert !== undefined);
}

/** Every PromQL query of the dashboard, with where it is. */
function dashboardQueries(): { where: string; expr: string }[] {
  const dashboard: Tree = JSON.parse(read(DASHBOARD_FILE));
  const out: { where: string; expr: string }[] = [];
  for (const panel of dashboard.panels as Tree[]) {
    for (const t of panel.targets ?? []) out.push({ where: `panel ${panel.id} "${panel.title}" ${t.refId}`, expr: t.expr });
  }
  return out;
}

/** The dashboard's variables replaced by what Grafana would put there, so that promtool can parse the query. */
function substituted(expr: string): string {
  return expr.replaceAll('$__rate_interval', '5m').replace(/\$(namespace|job)\b/g, '.*');
}

/** A PromQL expression without its string literals and durations (so that they are not taken for names). */
function code(expr: string): string {
  return expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""').replace(/\[[^\]]*\]/g, '');
}

/** The metric names an expression selects: the relay's own and Node's process metrics. */
function metricNames(expr: string): string[] {
  return [...new Set(code(expr).match(/\b(?:fraiseql_relay|process|nodejs)_[a-z0-9_]+\b/g) ?? [])];
}

/** `name{label="value", …}` selectors of an expression: the exact-match label matchers of each. */
function exactMatchers(expr: string): { metric: string; label: string; value: string }[] {
  const out: { metric: string; label: string; value: string }[] = [];
  for (const m of expr.matchAll(/\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}/g)) {
    for (const mm of m[2]!.matchAll(/([a-z_][a-z0-9_]*)\s*=\s*"([^"]*)"/g)) {
      out.push({ metric: m[1]!, label: mm[1]!, value: mm[2]! });
    }
  }
  return out;
}

/** Label names an expression groups or matches by: `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`. */
function groupingLabels(expr: string): string[] {
  const out: string[] = [];
  for (const m of code(expr).matchAll(/\b(?:by|without|on|ignoring)\s*\(([^)]*)\)/g)) {
    out.push(
      ...m[1]!
        .split(',')
        .map((l) => l.trim())
        .filter(Boolean),
    );
  }
  return out;
}

// ---------------------------------------------------------------- promtool

function promtool(): string | null {
  const r = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    // CI installs it (.ci/run: Debian's prometheus package); elsewhere the check is skipped, loudly
    assert.ok(!process.env['CI'], 'promtool is installed in CI (.ci/run installs the prometheus package)');
    return null;
  }
  return 'promtool';
}

test('alerts.yaml: `promtool check rules` and `promtool test rules` (every alert fires and stays silent)', (t) => {
  const bin = promtool();
  if (!bin) return t.skip('promtool is not installed (apt-get install prometheus)');
  const check = spawnSync(bin, ['check', 'rules', RULES_FILE], { encoding: 'utf8' });
  assert.equal(check.status, 0, `promtool check rules:\n${check.stdout}${check.stderr}`);
  assert.match(check.stdout, new RegExp(`SUCCESS: ${rules().length} rules found`));
  const unit = spawnSync(bin, ['test', 'rules', RULES_TEST_FILE], { encoding: 'utf8', cwd: MONITORING });
  assert.equal(unit.status, 0, `promtool test rules:\n${unit.stdout}${unit.stderr}`);
  assert.match(unit.stdout, /SUCCESS/);
});

test('alerts.test.yaml tests every alert of alerts.yaml, firing and not firing', () => {
  const tests = parseYaml(read(RULES_TEST_FILE)) as {
    rule_files: string[];
    tests: { name: string; alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[] }[];
  };
  assert.deepEqual(tests.rule_files, ['alerts.yaml'], 'the tests load alerts.yaml');
  const firing = new Set<string>();
  const silent = new Set<string>();
  for (const tc of tests.tests) {
    for (const a of tc.alert_rule_test ?? []) ((a.exp_alerts ?? []).length > 0 ? firing : silent).add(a.alertname);
  }
  const names = alerts().map((a) => a.alert!);
  for (const name of names) {
    assert.ok(firing.has(name), `alerts.test.yaml has a case where ${name} fires`);
    assert.ok(silent.has(name), `alerts.test.yaml has a case where ${name} does not fire`);
  }
  for (const name of [...firing, ...silent]) assert.ok(names.includes(name), `alerts.test.yaml tests ${name}, an alert of alerts.yaml`);
});

test('alerts.yaml: every alert has a FraiseqlRelay name, a severity, a summary and a description', () => {
  const names = new Set<string>();
  for (const a of alerts()) {
    const name = a.alert!;
    assert.match(name, /^FraiseqlRelay[A-Z]\w+$/, `${name}: named FraiseqlRelay…`);
    assert.ok(!names.has(name), `${name}: one alert of that name`);
    names.add(name);
    assert.ok(SEVERITIES.has(a.labels?.['severity'] ?? ''), `${name}: severity is one of ${[...SEVERITIES].join(', ')}`);
    assert.ok(a.annotations?.['summary'], `${name}: a summary`);
    assert.ok(a.annotations?.['description'], `${name}: a description`);
    if (a.for !== undefined) assert.match(a.for, /^\d+[smh]$/, `${name}: for is a duration`);
  }
  assert.ok(names.size >= 10, `the alerts of the issue are there (${[...names].join(', ')})`);
});

// ---------------------------------------------------------------- the metrics exist

const TOML = `
[project]
name = "monitoring"
[database]
url = "\${DATABASE_URL}"
[observers]
nats_url = "\${NATS_URL}"
[[observers.publish]]
mutation = "create_order"
subject = "fraiseql.order.created"
[[observers.subscribe]]
subject = "fraiseql.order.created"
handler = "app.fn_apply"
[relay]
listen = "127.0.0.1:0"
heartbeat = "1s"
[relay.stream]
name = "FRAISEQL"
subjects = ["fraiseql.>"]
`;

interface Scrape {
  /** metric families (`# TYPE` lines), with their types */
  families: Map<string, string>;
  /** every series name: the families, with _bucket, _sum and _count for histograms and summaries */
  names: Set<string>;
  /** label name → values, per series name */
  labels: Map<string, Map<string, Set<string>>>;
}

function parseScrape(text: string): Scrape {
  const families = new Map<string, string>();
  const names = new Set<string>();
  const labels = new Map<string, Map<string, Set<string>>>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      families.set(type[1]!, type[2]!);
      names.add(type[1]!);
      if (type[2] === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(type[1]! + s);
      if (type[2] === 'summary') for (const s of ['_sum', '_count']) names.add(type[1]! + s);
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? /.exec(line);
    if (!sample) continue;
    names.add(sample[1]!);
    const byLabel = labels.get(sample[1]!) ?? new Map<string, Set<string>>();
    labels.set(sample[1]!, byLabel);
    for (const m of (sample[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      const values = byLabel.get(m[1]!) ?? new Set<string>();
      values.add(m[2]!);
      byLabel.set(m[1]!, values);
    }
  }
  return { families, names, labels };
}

test(
  'the rules and the dashboard query only metrics, and match only label values, that a running relay exposes',
  { timeout: 180_000 },
  async (t) => {
    const env = await TestEnv.create({ toml: TOML });
    let daemon: Daemon | null = null;
    t.after(async () => {
      await daemon?.stop();
      await env.destroy();
    });
    await env.migrate();
    await env.sql(`
      CREATE SCHEMA app;
      CREATE TABLE app.applied (id text PRIMARY KEY);
      CREATE FUNCTION app.fn_apply(p_event jsonb) RETURNS void LANGUAGE sql AS $$
        INSERT INTO app.applied VALUES (p_event->>'event_id') ON CONFLICT DO NOTHING $$;
    `);
    daemon = await startDaemon(env.config(), createLogger('silent'), { backoffMinMs: 100, backoffMaxMs: 1000, publishTimeoutMs: 2000 });
    const d = daemon;
    const scrapeText = async () => (await fetch(`http://127.0.0.1:${d.port}/metrics`)).text();
    await until('the relay leads', async () => /^fraiseql_relay_leader 1$/m.test(await scrapeText()), 30_000);
    await env.sql(`SELECT fraiseql_relay.emit('fraiseql.order.created', '{"id": 1}'::jsonb)`);
    await until('the event is handled', async () => (await env.sql(`SELECT 1 FROM app.applied`)).length === 1, 30_000);
    await until(
      'a heartbeat came back',
      async () => Number(/^fraiseql_relay_lag_seconds (\S+)$/m.exec(await scrapeText())?.[1] ?? 0) > 0,
      30_000,
    );
    const scrape = parseScrape(await scrapeText());

    // a relay with backend = "redis" exposes up{target="redis"} instead of "nats": its label values count too
    const redisEnv = await RedisEnv.create();
    let redisDaemon: Daemon | null = null;
    t.after(async () => {
      await redisDaemon?.stop();
      await redisEnv.destroy();
    });
    await redisEnv.migrate();
    redisDaemon = await startDaemon(redisEnv.config(), createLogger('silent'), { backoffMinMs: 100, backoffMaxMs: 1000 });
    const rd = redisDaemon;
    const redisScrape = async () => (await fetch(`http://127.0.0.1:${rd.port}/metrics`)).text();
    await until('the redis relay is up', async () => /^fraiseql_relay_up\{target="redis"\} 1$/m.test(await redisScrape()), 30_000);
    for (const [metric, byLabel] of parseScrape(await redisScrape()).labels) {
      const into = scrape.labels.get(metric);
      if (!into) continue; // metric names come from the NATS relay's scrape alone
      for (const [label, values] of byLabel) {
        const set = into.get(label) ?? new Set<string>();
        for (const v of values) set.add(v);
        into.set(label, set);
      }
    }

    const queries = [
      ...rules().map((r) => ({ where: `alerts.yaml ${r.alert ?? r.record}`, expr: r.expr })),
      ...dashboardQueries().map((q) => ({ where: `dashboard.json ${q.where}`, expr: q.expr })),
    ];
    const used = new Set<string>();
    const allLabels = new Set<string>();
    for (const byLabel of scrape.labels.values()) for (const l of byLabel.keys()) allLabels.add(l);
    for (const { where, expr } of queries) {
      const names = metricNames(expr);
      assert.ok(names.length > 0, `${where}: queries a metric`);
      for (const name of names) {
        used.add(name);
        assert.ok(scrape.names.has(name), `${where}: ${name} is a metric the relay exposes`);
      }
      for (const { metric, label, value } of exactMatchers(expr)) {
        if (TARGET_LABELS.has(label)) continue;
        assert.ok(
          scrape.labels.get(metric)?.get(label)?.has(value),
          `${where}: ${metric}{${label}="${value}"} is a series the relay exposes (${label}: ${[...(scrape.labels.get(metric)?.get(label) ?? [])].join(', ')})`,
        );
      }
      for (const label of groupingLabels(expr)) {
        assert.ok(
          TARGET_LABELS.has(label) || label === 'le' || allLabels.has(label),
          `${where}: groups by ${label}, a label the relay exposes`,
        );
      }
    }
    // the alerts of issue 13, on the metrics they name
    for (const name of [
      'fraiseql_relay_slot_lag_bytes',
      'fraiseql_relay_lag_seconds',
      'fraiseql_relay_leader',
      'fraiseql_relay_dead_letters_total',
      'fraiseql_relay_dead_letter_backlog',
      'fraiseql_relay_handler_calls_total',
      'fraiseql_relay_slot_wal_status',
      'fraiseql_relay_up',
      'fraiseql_relay_consumer_missing',
      'fraiseql_relay_heartbeat_age_seconds',
    ]) {
      assert.ok(
        alerts().some((a) => metricNames(a.expr).includes(name)),
        `an alert watches ${name}`,
      );
    }
    // the relay's own metrics are all on the dashboard (of Node's process metrics, it picks a few)
    const shown = new Set(dashboardQueries().flatMap((q) => metricNames(q.expr)));
    const missing = [...scrape.families.keys()].filter(
      (f) => f.startsWith('fraiseql_relay_') && f !== 'fraiseql_relay_active' && !shown.has(f) && !shown.has(`${f}_bucket`),
    );
    assert.deepEqual(missing, [], 'the dashboard shows every fraiseql_relay_ metric (fraiseql_relay_active is the same as leader)');
  },
);

// ---------------------------------------------------------------- the dashboard

test('dashboard.json: a Grafana dashboard whose queries parse and follow its namespace and job variables', (t) => {
  const dashboard: Tree = JSON.parse(read(DASHBOARD_FILE));
  assert.equal(dashboard.uid, 'fraiseql-relay', 'a stable uid (links, provisioning)');
  assert.equal(typeof dashboard.title, 'string');
  assert.equal(typeof dashboard.schemaVersion, 'number');
  assert.equal(dashboard.__inputs, undefined, 'no import-time inputs: the Grafana sidecar loads the file as it is');
  const vars = new Map((dashboard.templating.list as Tree[]).map((v) => [v.name as string, v]));
  assert.equal(vars.get('datasource')?.type, 'datasource', 'a data source variable');
  assert.equal(vars.get('datasource')?.query, 'prometheus', 'of Prometheus data sources');
  for (const name of ['namespace', 'job']) {
    const v = vars.get(name);
    assert.equal(v?.type, 'query', `a ${name} variable`);
    assert.equal(v.datasource?.uid, '${datasource}', `the ${name} variable queries the chosen data source`);
    assert.equal(v.includeAll, true, `${name}: "All" is a choice`);
    assert.equal(v.allValue, '.*', `${name}: "All" matches series without the label too (Prometheus outside Kubernetes has no namespace)`);
  }

  const ids = new Set<number>();
  for (const panel of dashboard.panels as Tree[]) {
    const where = `panel ${panel.id} "${panel.title}"`;
    assert.equal(typeof panel.id, 'number', `${where}: an id`);
    assert.ok(!ids.has(panel.id), `${where}: a unique id`);
    ids.add(panel.id);
    const g = panel.gridPos;
    assert.ok(g && g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.h > 0 && g.y >= 0, `${where}: a gridPos within the 24 columns`);
    if (panel.type === 'row') continue;
    assert.ok(panel.targets?.length > 0, `${where}: queries`);
    assert.equal(panel.datasource?.uid, '${datasource}', `${where}: uses the data source variable`);
    for (const target of panel.targets as Tree[]) {
      assert.equal(target.datasource?.uid, '${datasource}', `${where} ${target.refId}: uses the data source variable`);
      for (const m of (target.expr as string).matchAll(/\b((?:fraiseql_relay|process|nodejs)_[a-z0-9_]+)(\{[^}]*\})?/g)) {
        assert.ok(
          m[2]?.includes('namespace=~"$namespace"') && m[2].includes('job=~"$job"'),
          `${where} ${target.refId}: ${m[1]} is filtered by the namespace and job variables`,
        );
      }
    }
  }
  // no two panels overlap
  const cells = new Set<string>();
  for (const panel of dashboard.panels as Tree[]) {
    const g = panel.gridPos;
    for (let x = g.x; x < g.x + g.w; x++) {
      for (let y = g.y; y < g.y + g.h; y++) {
        assert.ok(!cells.has(`${x},${y}`), `panel ${panel.id} "${panel.title}" overlaps another panel at ${x},${y}`);
        cells.add(`${x},${y}`);
      }
    }
  }

  // the queries parse: promtool checks them as recording rules
  const bin = promtool();
  if (!bin) return t.skip('promtool is not installed: the queries were not parsed');
  const dir = mkdtempSync(join(tmpdir(), 'fraiseql-relay-dashboard-'));
  try {
    const file = join(dir, 'dashboard-queries.yaml');
    const recorded = dashboardQueries().map((q, i) => ({ record: `dashboard:query_${i}`, expr: substituted(q.expr) }));
    writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules: recorded }] }));
    const r = spawnSync(bin, ['check', 'rules', file], { encoding: 'utf8' });
    assert.equal(r.status, 0, `the dashboard's queries parse:\n${r.stdout}${r.stderr}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- the copies

test('the Helm chart and the Kustomize component ship the same rules and dashboard as deploy/monitoring', () => {
  const sync =
    'copy deploy/monitoring/alerts.yaml and dashboard.json to deploy/helm/fraiseql-relay/files/ and deploy/kubernetes/components/monitoring/';
  assert.equal(
    read(join(CHART_FILES, 'alerts.yaml')),
    read(RULES_FILE),
    `helm files/alerts.yaml is deploy/monitoring/alerts.yaml: ${sync}`,
  );
  assert.equal(
    read(join(CHART_FILES, 'dashboard.json')),
    read(DASHBOARD_FILE),
    `helm files/dashboard.json is deploy/monitoring/dashboard.json: ${sync}`,
  );
  assert.equal(
    read(join(COMPONENT, 'dashboard.json')),
    read(DASHBOARD_FILE),
    `the component's dashboard.json is deploy/monitoring/dashboard.json: ${sync}`,
  );
  const rule: Tree = parseYaml(read(join(COMPONENT, 'prometheusrule.yaml')));
  assert.equal(rule.kind, 'PrometheusRule');
  assert.equal(rule.apiVersion, 'monitoring.coreos.com/v1');
  assert.deepEqual(
    rule.spec,
    parseYaml(read(RULES_FILE)),
    `the component's PrometheusRule holds the groups of deploy/monitoring/alerts.yaml: ${sync}`,
  );
  const kustomization: Tree = parseYaml(read(join(COMPONENT, 'kustomization.yaml')));
  assert.equal(kustomization.kind, 'Component', 'an optional Kustomize component');
  assert.deepEqual(kustomization.resources, ['prometheusrule.yaml']);
  const generator = (kustomization.configMapGenerator as Tree[]).find((g) =>
    (g.files as string[]).some((f) => f.endsWith('dashboard.json')),
  );
  assert.equal(generator?.options?.labels?.grafana_dashboard, '1', "the dashboard ConfigMap carries the Grafana sidecar's default label");
});

// ---------------------------------------------------------------- README

test("README.md's alert table lists exactly the alerts of alerts.yaml, with their severities", () => {
  const readme = read(join(ROOT, 'README.md'));
  const rows = new Map<string, string>();
  for (const m of readme.matchAll(/^\| `(FraiseqlRelay\w+)` \|(.*)$/gm)) rows.set(m[1]!, m[2]!);
  const names = alerts().map((a) => a.alert!);
  assert.deepEqual([...rows.keys()].sort(), [...names].sort(), "README.md's table has one row per alert");
  for (const a of alerts()) {
    const cells = rows
      .get(a.alert!)!
      .split('|')
      .map((c) => c.trim());
    assert.ok(cells.includes(a.labels!['severity']!), `README.md: ${a.alert} is ${a.labels!['severity']}`);
  }
  assert.match(readme, /deploy\/monitoring\/alerts\.yaml/, 'README.md points at the rules file');
  assert.match(readme, /deploy\/monitoring\/dashboard\.json/, 'README.md points at the dashboard');
});

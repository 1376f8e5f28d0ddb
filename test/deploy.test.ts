/**
 * deploy/ agrees with the code: the Dockerfile, the Kustomize base, the Helm chart and the
 * compose file use the HTTP port and paths the relay serves (`[relay] listen`, /livez, /readyz,
 * /metrics), pass `-c` the file their ConfigMap (or volume) mounts, provide every `${NAME}` the
 * example config names, run commands the CLI has, and give the relay more time to stop than its
 * `shutdown_timeout`.
 *
 * Readiness means healthy, not leader: every healthy replica (a standby too) is Ready, so the
 * rollout keeps replicas available (maxUnavailable below the replica count) and the
 * PodDisruptionBudget lets a drain evict one relay at a time.
 *
 * The manifests are parsed as YAML; when `kubectl` (kustomize) or `helm` is on PATH, the
 * rendered objects are checked the same way. (No helm here: `helm` is neither a Debian nor an npm
 * package, so the Helm rendering test runs where a developer has it.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { parseConfig, parseDuration, type Config } from '../src/config/load.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DEPLOY = join(ROOT, 'deploy');
const BASE = join(DEPLOY, 'kubernetes', 'base');
const CHART = join(DEPLOY, 'helm', 'fraiseql-relay');
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  license: string;
  files: string[];
  engines: { node: string };
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
/** The optional Secret whose keys the Kustomize base projects beside fraiseql.toml. */
const FILES_SECRET = 'fraiseql-relay-files';

/** The port the README and the Dockerfile promise for `[relay] listen`. */
const CONTRACT_PORT = 9464;
/** The uid the image runs as and the manifests ask for. */
const UID = 10001;

/** Manifests are untyped YAML trees, read by key path. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any YAML node, indexed freely
type K8s = any;

// ---------------------------------------------------------------- helpers

function read(path: string): string {
  return readFileSync(path, 'utf8');
}

/** Every YAML document of a text (empty ones dropped); a syntax error fails the test. */
function yamlDocs(text: string, what: string): K8s[] {
  const docs = parseAllDocuments(text, { merge: true });
  const out: K8s[] = [];
  for (const d of Array.isArray(docs) ? docs : [docs]) {
    assert.deepEqual(
      d.errors.map((e) => e.message),
      [],
      `${what}: YAML errors`,
    );
    const v: unknown = d.toJS();
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

/** `${NAME}` placeholders of a TOML text, outside whole-line comments. */
function placeholders(toml: string): string[] {
  const names = new Set<string>();
  for (const line of toml.split('\n')) {
    if (line.trim().startsWith('#')) continue;
    for (const m of line.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g)) names.add(m[1]!);
  }
  return [...names].sort();
}

function portOf(listen: string): number {
  const m = /:(\d+)$/.exec(listen);
  assert.ok(m, `listen ${JSON.stringify(listen)} has a port`);
  return Number(m[1]);
}

/** The configuration the relay uses when `[relay]` says nothing. */
const DEFAULTS: Config = parseConfig(
  '[project]\nname = "defaults"\n\n[database]\ntype = "postgresql"\nurl = "postgres://relay@db/app"\n',
  join(ROOT, 'defaults.toml'),
  {},
);
const DEFAULT_PORT = portOf(DEFAULTS.relay.listen);

/** Runs the CLI from source (src/cli.ts parses argv as soon as it is imported). */
function cli(args: string[]): string {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0', COLUMNS: '200' },
  });
  assert.equal(r.status, 0, `fraiseql-relay ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

let commandsCache: string[] | undefined;
/** The top-level commands `fraiseql-relay --help` lists. */
function cliCommands(): string[] {
  if (commandsCache) return commandsCache;
  const help = cli(['--help']);
  const lines = help.split('\n');
  const start = lines.findIndex((l) => /^Commands:/.test(l));
  assert.ok(start >= 0, `--help lists commands:\n${help}`);
  const names: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (line.trim() === '') break;
    const m = /^ {2}([a-z][a-z0-9-]*)/.exec(line);
    if (m && m[1] !== 'help') names.push(m[1]!);
  }
  assert.ok(names.includes('run') && names.includes('migrate'), `commands found: ${names.join(', ')}`);
  commandsCache = names;
  return names;
}

const configOptionCache = new Map<string, boolean>();
/** Whether `fraiseql-relay <command> --help` documents `-c, --config <file>`. */
function takesConfig(command: string): boolean {
  let v = configOptionCache.get(command);
  if (v === undefined) {
    v = /-c, --config <file>/.test(cli([command, '--help']));
    configOptionCache.set(command, v);
  }
  return v;
}

/** `[command, '-c', file]` (or `--config`): the command must exist and take -c. */
function checkInvocation(args: unknown, expected: string, what: string): string {
  assert.ok(Array.isArray(args) && args.every((a) => typeof a === 'string'), `${what}: args is a list of strings`);
  const list = args;
  const command = list[0]!;
  assert.equal(command, expected, `${what}: runs \`${expected}\``);
  assert.ok(cliCommands().includes(command), `${what}: \`${command}\` is a fraiseql-relay command (${cliCommands().join(', ')})`);
  assert.ok(takesConfig(command), `${what}: \`${command}\` takes -c/--config`);
  const i = list.findIndex((a) => a === '-c' || a === '--config');
  assert.ok(i > 0 && list[i + 1] !== undefined, `${what}: passes the config with -c: ${JSON.stringify(list)}`);
  return list[i + 1]!;
}

/** Parses a config the way the relay does, with the environment a workload provides. */
function checkConfig(toml: string, env: Record<string, string>, what: string): Config {
  for (const name of placeholders(toml)) {
    assert.ok(
      name in env,
      `${what}: the config names \${${name}}, which the workload does not set (it sets ${Object.keys(env).join(', ')})`,
    );
  }
  try {
    return parseConfig(toml, `${what}/fraiseql.toml`, env);
  } catch (e) {
    assert.fail(`${what}: the config does not load: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function labelsMatch(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined, what: string): void {
  assert.ok(selector && Object.keys(selector).length > 0, `${what}: has a selector`);
  for (const [k, v] of Object.entries(selector)) {
    assert.equal(labels?.[k], v, `${what}: selector ${k}=${v} matches the relay pods' labels`);
  }
}

function resolvePort(container: K8s, port: unknown, what: string): number {
  if (typeof port === 'number') return port;
  const named = (container.ports ?? []).find((p: K8s) => p.name === port);
  assert.ok(named, `${what}: port ${String(port)} is a named port of the container`);
  return named.containerPort as number;
}

/** k8s rounds maxUnavailable percentages down, maxSurge percentages up. */
function rolloutCount(value: unknown, replicas: number, round: (n: number) => number, what: string): number {
  if (value === undefined) return round((25 * replicas) / 100); // the Deployment default, 25%
  if (typeof value === 'number') return value;
  const m = /^(\d+)%$/.exec(typeof value === 'string' ? value : '');
  assert.ok(m, `${what} ${JSON.stringify(value)} is a number or a percentage`);
  return round((Number(m[1]) * replicas) / 100);
}

/**
 * Every healthy replica is Ready (readiness means healthy, not leader): a rollout must keep
 * replicas available, and must be able to progress at all.
 */
function checkRollout(rollingUpdate: K8s, replicas: number, what: string): void {
  const unavailable = rolloutCount(rollingUpdate?.maxUnavailable, replicas, Math.floor, 'maxUnavailable');
  const surge = rolloutCount(rollingUpdate?.maxSurge, replicas, Math.ceil, 'maxSurge');
  assert.ok(
    unavailable < replicas,
    `${what}: maxUnavailable (${String(rollingUpdate?.maxUnavailable)}) leaves a replica available (standbys are Ready)`,
  );
  assert.ok(unavailable <= 1, `${what}: at most one replica unavailable during a rollout`);
  assert.ok(surge + unavailable > 0, `${what}: maxSurge or maxUnavailable lets the rollout progress`);
}

// ---------------------------------------------------------------- Kubernetes objects

interface Workload {
  pod: K8s;
  container: K8s;
  config: Config;
  configPath: string;
}

/** The ConfigMap (and item list) of a volume: a configMap volume, or the configMap source of a projected one. */
function configMapOf(volume: K8s): { name: string; items?: K8s[] } | undefined {
  if (volume?.configMap?.name) return volume.configMap;
  const sources = (volume?.projected?.sources ?? []).filter((src: K8s) => src.configMap);
  assert.ok(sources.length <= 1, `the projected volume ${volume?.name} has one ConfigMap source`);
  return sources[0]?.configMap;
}

/**
 * Checks a container of a Deployment's or Job's pod: the command and its -c file, the ConfigMap
 * mounted there, the environment (from Secrets) the config needs, the security context. Returns
 * the parsed config.
 */
function checkContainer(objects: K8s[], pod: K8s, container: K8s, command: string, what: string): Workload {
  const configPath = checkInvocation(container.args, command, what);
  assert.equal(container.command, undefined, `${what}: keeps the image's entrypoint (tini, node, bin/fraiseql-relay.js)`);

  // the config file: a ConfigMap key mounted at the directory of the -c path (a configMap volume,
  // or a projected one that puts the files the config names beside it)
  const mount = (container.volumeMounts ?? []).find((m: K8s) => m.mountPath === posix.dirname(configPath));
  assert.ok(mount, `${what}: a volume is mounted at ${posix.dirname(configPath)} (the directory of -c ${configPath})`);
  const volume = (pod.volumes ?? []).find((v: K8s) => v.name === mount.name);
  const source = configMapOf(volume);
  assert.ok(source?.name, `${what}: the volume ${mount.name} is (or projects) a ConfigMap`);
  const item = (source.items ?? []).find((i: K8s) => i.path === posix.basename(configPath));
  const key = item ? item.key : posix.basename(configPath);
  const cm = objects.find((o) => o.kind === 'ConfigMap' && o.metadata?.name === source.name);
  assert.ok(cm, `${what}: the ConfigMap ${source.name} exists`);
  const toml = cm.data?.[key];
  assert.equal(typeof toml, 'string', `${what}: the ConfigMap ${source.name} has the key ${key} (the file -c reads)`);
  for (const src of volume.projected?.sources ?? []) {
    if (src.secret) {
      // files beside fraiseql.toml never shadow it
      for (const i of src.secret.items ?? [])
        assert.notEqual(i.path, posix.basename(configPath), `${what}: the Secret ${src.secret.name} does not replace the config file`);
    }
  }
  if (volume.projected) {
    const mode = volume.projected.defaultMode as number;
    assert.equal(mode & 0o007, 0, `${what}: the files in ${mount.mountPath} (keys, credentials) are not world-readable`);
    assert.equal(mode & 0o040, 0o040, `${what}: the relay's group (fsGroup) reads the files in ${mount.mountPath}`);
  }

  // the environment: every variable the config names, resolved from its Secret
  const env: Record<string, string> = {};
  for (const e of container.env ?? []) {
    if (typeof e.value === 'string') {
      env[e.name] = e.value;
    } else if (e.valueFrom?.secretKeyRef) {
      const ref = e.valueFrom.secretKeyRef;
      const secret = objects.find((o) => o.kind === 'Secret' && o.metadata?.name === ref.name);
      assert.ok(secret, `${what}: env ${e.name} reads the Secret ${ref.name}, which exists`);
      const value: unknown =
        secret.stringData?.[ref.key] ??
        (secret.data?.[ref.key] === undefined ? undefined : Buffer.from(secret.data[ref.key], 'base64').toString());
      assert.equal(typeof value, 'string', `${what}: the Secret ${ref.name} has the key ${ref.key} (env ${e.name})`);
      env[e.name] = value as string;
    }
  }
  for (const name of placeholders(toml)) {
    const e = (container.env ?? []).find((x: K8s) => x.name === name);
    assert.ok(e?.valueFrom?.secretKeyRef, `${what}: \${${name}} of the config comes from a Secret`);
  }
  const config = checkConfig(toml, env, what);

  // security: non-root, read-only root filesystem with a writable /tmp, no privileges
  const psc = pod.securityContext ?? {};
  const csc = container.securityContext ?? {};
  const eff = (k: string): unknown => csc[k] ?? psc[k];
  assert.equal(eff('runAsNonRoot'), true, `${what}: runAsNonRoot`);
  assert.equal(eff('runAsUser'), UID, `${what}: runAsUser ${UID} (the image's user)`);
  assert.equal(csc.readOnlyRootFilesystem, true, `${what}: readOnlyRootFilesystem`);
  assert.equal(csc.allowPrivilegeEscalation, false, `${what}: allowPrivilegeEscalation false`);
  assert.deepEqual(csc.capabilities?.drop, ['ALL'], `${what}: drops all capabilities`);
  assert.equal((csc.seccompProfile ?? psc.seccompProfile)?.type, 'RuntimeDefault', `${what}: seccomp RuntimeDefault`);
  const tmp = (container.volumeMounts ?? []).find((m: K8s) => m.mountPath === '/tmp');
  assert.ok(tmp, `${what}: /tmp is mounted (the root filesystem is read-only)`);
  assert.ok((pod.volumes ?? []).find((v: K8s) => v.name === tmp.name)?.emptyDir, `${what}: /tmp is an emptyDir`);
  assert.ok(container.resources?.requests?.memory && container.resources?.limits?.memory, `${what}: memory requests and limits`);

  return { pod, container, config, configPath };
}

/** Checks a Deployment's or Job's pod and its one container (see {@link checkContainer}). */
function checkPod(objects: K8s[], pod: K8s, command: string, what: string): Workload {
  assert.equal(pod.containers?.length, 1, `${what}: one container`);
  return checkContainer(objects, pod, pod.containers[0], command, what);
}

function one(objects: K8s[], kind: string, what: string, filter: (o: K8s) => boolean = () => true): K8s {
  const found = objects.filter((o) => o.kind === kind && filter(o));
  assert.equal(found.length, 1, `${what}: exactly one ${kind} (found ${found.length})`);
  return found[0];
}

/** How `migrate` runs before the relay: a Job (Helm's hook), an init container of the relay pods (Kustomize), or not at all. */
type Migrate = 'job' | 'init' | 'none';

/** The checks every rendering of the manifests (static, kustomize, helm) must pass. */
function checkManifests(objects: K8s[], what: string, opts: { serviceMonitor: boolean; migrate: Migrate }): void {
  const deployment = one(objects, 'Deployment', what);
  const d = `${what} Deployment`;
  const podSpec = deployment.spec.template.spec;
  const relay = checkPod(objects, podSpec, 'run', d);
  const podLabels = deployment.spec.template.metadata.labels as Record<string, string>;
  labelsMatch(deployment.spec.selector.matchLabels, podLabels, `${d} selector`);

  // HTTP: the port the config listens on = the default = the container port = the probes' port
  const listenPort = portOf(relay.config.relay.listen);
  assert.equal(DEFAULT_PORT, CONTRACT_PORT, `the default [relay] listen port is ${CONTRACT_PORT}`);
  assert.equal(listenPort, DEFAULT_PORT, `${d}: the config listens on the default port ${DEFAULT_PORT}`);
  const metrics = (relay.container.ports ?? []).find((p: K8s) => p.name === 'metrics');
  assert.ok(metrics, `${d}: a container port named metrics`);
  assert.equal(metrics.containerPort, listenPort, `${d}: container port metrics = [relay] listen port`);
  const live = relay.container.livenessProbe?.httpGet;
  const ready = relay.container.readinessProbe?.httpGet;
  assert.equal(live?.path, '/livez', `${d}: livenessProbe GET /livez`);
  assert.equal(ready?.path, '/readyz', `${d}: readinessProbe GET /readyz`);
  assert.equal(resolvePort(relay.container, live.port, d), listenPort, `${d}: livenessProbe on the listen port`);
  assert.equal(resolvePort(relay.container, ready.port, d), listenPort, `${d}: readinessProbe on the listen port`);

  // two replicas, one leader; every healthy replica is Ready, so the rollout keeps one available
  const replicas = deployment.spec.replicas as number;
  assert.ok(replicas >= 2, `${d}: at least 2 replicas (one leader, one standby)`);
  assert.equal(deployment.spec.strategy?.type, 'RollingUpdate', `${d}: RollingUpdate`);
  checkRollout(deployment.spec.strategy.rollingUpdate, replicas, d);

  // the replicas spread over nodes (and zones), softly
  const spread = (podSpec.topologySpreadConstraints ?? []) as K8s[];
  assert.ok(
    spread.some((c) => c.topologyKey === 'kubernetes.io/hostname'),
    `${d}: a topology spread constraint over nodes (kubernetes.io/hostname)`,
  );
  for (const c of spread) {
    labelsMatch(c.labelSelector?.matchLabels, podLabels, `${d} topologySpreadConstraint ${c.topologyKey}`);
    assert.equal(c.whenUnsatisfiable, 'ScheduleAnyway', `${d}: spreading over ${c.topologyKey} never blocks scheduling`);
  }

  // shutdown: the kubelet waits longer than the relay's own bound
  const grace = podSpec.terminationGracePeriodSeconds as number;
  assert.equal(typeof grace, 'number', `${d}: terminationGracePeriodSeconds is set`);
  assert.ok(
    grace * 1000 > relay.config.relay.shutdown_timeout,
    `${d}: terminationGracePeriodSeconds ${grace}s > [relay] shutdown_timeout ${relay.config.relay.shutdown_timeout / 1000}s`,
  );

  // migrate: same config, `migrate`, before the relay starts
  const jobs = objects.filter((o) => o.kind === 'Job');
  const inits = (podSpec.initContainers ?? []) as K8s[];
  let m: Workload | null = null;
  let mw = '';
  if (opts.migrate === 'job') {
    const job = one(objects, 'Job', what);
    mw = `${what} Job`;
    m = checkPod(objects, job.spec.template.spec, 'migrate', mw);
    assert.equal(job.spec.template.spec.restartPolicy, 'OnFailure', `${mw}: restartPolicy OnFailure`);
  } else {
    assert.equal(jobs.length, 0, `${what}: no migration Job`);
  }
  if (opts.migrate === 'init') {
    assert.equal(inits.length, 1, `${d}: one init container (migrate)`);
    mw = `${d} init container ${inits[0].name}`;
    m = checkContainer(objects, podSpec, inits[0], 'migrate', mw);
    assert.equal(inits[0].image, relay.container.image, `${mw}: the relay's image (migrations of the version that runs)`);
  } else {
    assert.equal(inits.length, 0, `${d}: no init container`);
  }
  if (m) {
    assert.equal(m.configPath, relay.configPath, `${mw}: reads the same config path as the relay`);
    assert.equal(m.config.relay.schema, relay.config.relay.schema, `${mw}: migrates the schema the relay uses`);
    assert.equal(m.config.relay.slot, relay.config.relay.slot, `${mw}: creates the slot the relay uses`);
  }

  // PodDisruptionBudget over the relay pods: a drain evicts one relay at a time
  const pdb = one(objects, 'PodDisruptionBudget', what);
  assert.equal(pdb.spec.minAvailable, 1, `${what} PodDisruptionBudget: minAvailable 1`);
  assert.ok(pdb.spec.minAvailable < replicas, `${what} PodDisruptionBudget: a drain can evict a replica (standbys are Ready)`);
  assert.equal(pdb.spec.maxUnavailable, undefined, `${what} PodDisruptionBudget: minAvailable only`);
  labelsMatch(pdb.spec.selector.matchLabels, podLabels, `${what} PodDisruptionBudget`);

  // Service for metrics, on the relay pods' metrics port, every replica included
  const service = one(objects, 'Service', what);
  const s = `${what} Service`;
  labelsMatch(service.spec.selector, podLabels, s);
  const sp = (service.spec.ports ?? []).find((p: K8s) => p.name === 'metrics');
  assert.ok(sp, `${s}: a port named metrics`);
  assert.equal(sp.port, listenPort, `${s}: port ${listenPort}`);
  assert.equal(resolvePort(relay.container, sp.targetPort ?? sp.port, s), listenPort, `${s}: targets the relay's listen port`);
  // standbys are Ready; a replica that is not (an outage: all of them) is the one whose metrics say why
  assert.equal(service.spec.publishNotReadyAddresses, true, `${s}: publishes replicas that are not Ready, for scraping`);

  // ServiceMonitor
  const monitors = objects.filter((o) => o.kind === 'ServiceMonitor');
  if (opts.serviceMonitor) {
    const sm = one(objects, 'ServiceMonitor', what);
    const sw = `${what} ServiceMonitor`;
    assert.equal(sm.apiVersion, 'monitoring.coreos.com/v1', `${sw}: monitoring.coreos.com/v1`);
    labelsMatch(sm.spec.selector.matchLabels, service.metadata.labels, sw);
    assert.equal(sm.spec.endpoints?.length, 1, `${sw}: one endpoint`);
    assert.equal(sm.spec.endpoints[0].port, 'metrics', `${sw}: scrapes the Service port metrics`);
    assert.equal(sm.spec.endpoints[0].path, '/metrics', `${sw}: path /metrics`);
  } else {
    assert.equal(monitors.length, 0, `${what}: no ServiceMonitor`);
  }
}

// ---------------------------------------------------------------- Kustomize base

/** The base's objects as kustomize would build them, without kustomize: resources + generated ConfigMaps. */
function kustomizeBaseStatic(): { objects: K8s[]; kustomization: K8s } {
  const kustomization = parseYaml(read(join(BASE, 'kustomization.yaml')));
  const objects: K8s[] = [];
  for (const r of kustomization.resources as string[]) {
    assert.ok(existsSync(join(BASE, r)), `kustomization resource ${r} exists`);
    objects.push(...yamlDocs(read(join(BASE, r)), r));
  }
  for (const g of kustomization.configMapGenerator ?? []) {
    const data: Record<string, string> = {};
    for (const f of g.files as string[]) {
      const [key, path] = f.includes('=') ? (f.split('=', 2) as [string, string]) : [basename(f), f];
      data[key] = read(join(BASE, path));
    }
    objects.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: g.name }, data });
  }
  return { objects, kustomization };
}

/** The example Secret (not part of the base): stands in for the Secret the operator creates. */
function exampleSecret(): K8s {
  const text = read(join(BASE, 'secret.example.yaml'));
  assert.match(text, /EXAMPLE/, 'secret.example.yaml says it is an example');
  const [secret] = yamlDocs(text, 'secret.example.yaml');
  assert.equal(secret.kind, 'Secret');
  return secret;
}

/** The base's Deployment projects the optional files Secret beside fraiseql.toml, for relay and migrate alike. */
function checkFilesSecret(objects: K8s[], what: string): void {
  const pod = one(objects, 'Deployment', what).spec.template.spec;
  const volume = pod.volumes.find((v: K8s) => v.name === 'config');
  const secret = (volume?.projected?.sources ?? []).find((src: K8s) => src.secret)?.secret;
  assert.equal(
    secret?.name,
    FILES_SECRET,
    `${what}: the config volume projects the Secret ${FILES_SECRET} (CA files, client certificate, NATS credentials)`,
  );
  assert.equal(secret.optional, true, `${what}: the Secret ${FILES_SECRET} is optional (a config without such files needs none)`);
  for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
    assert.ok(
      (c.volumeMounts ?? []).some((m: K8s) => m.name === 'config'),
      `${what}: the ${c.name} container mounts the config volume (the files are the same for migrate and run)`,
    );
  }
}

test('kustomize base: the manifests agree with the code', () => {
  const { objects, kustomization } = kustomizeBaseStatic();
  assert.ok(!(kustomization.resources as string[]).includes('secret.example.yaml'), 'the example Secret is not applied with the base');
  // migrate is an init container: re-applying the base never meets an immutable Job
  checkManifests([...objects, exampleSecret()], 'kustomize base', { serviceMonitor: true, migrate: 'init' });
  checkFilesSecret(objects, 'kustomize base');
  const image = (kustomization.images ?? []).find((i: K8s) => i.name === 'fraiseql-relay');
  assert.equal(image?.newTag, PKG.version, 'kustomization images: the tag is package.json version');
});

test('kustomize base: `kubectl kustomize` renders the same (when kubectl is on PATH)', () => {
  const r = spawnSync('kubectl', ['kustomize', BASE], { encoding: 'utf8', timeout: 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    return; // no kubectl here: the static checks above stand
  }
  assert.equal(r.status, 0, `kubectl kustomize failed: ${r.stderr}`);
  const objects = yamlDocs(r.stdout, 'kubectl kustomize');
  assert.ok(
    objects.some((o) => o.kind === 'ConfigMap' && /^fraiseql-relay-config-[a-z0-9]+$/.test(o.metadata.name)),
    'the generated ConfigMap carries a content hash',
  );
  // the generated (hashed) ConfigMap name reaches the projected volume of the Deployment
  checkManifests([...objects, exampleSecret()], 'kubectl kustomize', { serviceMonitor: true, migrate: 'init' });
  checkFilesSecret(objects, 'kubectl kustomize');
  assert.deepEqual(
    objects.filter((o) => o.kind === 'Job'),
    [],
    'no Job: nothing immutable, so `kubectl apply -k` of a new image or config is always clean',
  );
});

test('kustomize example overlay: the base with the monitoring component (when kubectl is on PATH)', () => {
  const dir = join(DEPLOY, 'kubernetes', 'examples', 'monitoring');
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    return; // no kubectl here: test/monitoring.test.ts checks the component's files statically
  }
  assert.equal(r.status, 0, `kubectl kustomize ${relative(ROOT, dir)} failed: ${r.stderr}`);
  const objects = yamlDocs(r.stdout, 'kubectl kustomize (monitoring)');
  checkManifests([...objects, exampleSecret()], 'kubectl kustomize (monitoring)', { serviceMonitor: true, migrate: 'init' });

  const rule = one(objects, 'PrometheusRule', 'monitoring overlay');
  assert.equal(rule.apiVersion, 'monitoring.coreos.com/v1');
  assert.deepEqual(
    rule.spec,
    parseYaml(read(join(DEPLOY, 'monitoring', 'alerts.yaml'))),
    'the PrometheusRule holds the groups of deploy/monitoring/alerts.yaml',
  );
  const dashboard = one(objects, 'ConfigMap', 'monitoring overlay', (o) => o.metadata.labels?.grafana_dashboard === '1');
  const files = Object.keys(dashboard.data ?? {});
  assert.equal(files.length, 1, 'the dashboard ConfigMap holds one file');
  assert.match(files[0]!, /\.json$/, 'the Grafana sidecar loads *.json files');
  assert.deepEqual(
    JSON.parse(dashboard.data[files[0]!]),
    JSON.parse(read(join(DEPLOY, 'monitoring', 'dashboard.json'))),
    'the ConfigMap holds deploy/monitoring/dashboard.json',
  );
  for (const o of [rule, one(objects, 'ServiceMonitor', 'monitoring overlay')])
    assert.ok(o.metadata.labels?.release, `the example patch labels the ${o.kind} for kube-prometheus-stack's selector`);
});

// ---------------------------------------------------------------- Helm chart

/** The JSON Schema keywords values.schema.json may use: those {@link schemaErrors} checks. */
const SCHEMA_KEYWORDS = new Set([
  '$schema',
  'title',
  'description',
  'type',
  'properties',
  'additionalProperties',
  'required',
  'items',
  'enum',
  'minimum',
  'maximum',
  'minLength',
  'pattern',
  'anyOf',
]);

/** What a value breaks of a (draft-07, self-contained) schema, as Helm would report it; [] when it validates. */
function schemaErrors(schema: K8s, value: unknown, path = 'values'): string[] {
  const errors: string[] = [];
  for (const k of Object.keys(schema)) if (!SCHEMA_KEYWORDS.has(k)) errors.push(`${path}: unsupported schema keyword ${k}`);
  if (schema.anyOf && !(schema.anyOf as K8s[]).some((alt) => schemaErrors(alt, value, path).length === 0))
    errors.push(`${path}: matches none of anyOf`);
  const type = Array.isArray(value) ? 'array' : value === null ? 'null' : Number.isInteger(value) ? 'integer' : typeof value;
  if (schema.type !== undefined && !(type === schema.type || (schema.type === 'number' && type === 'integer'))) {
    errors.push(`${path}: a ${type}, not a ${String(schema.type)}`);
    return errors;
  }
  if (schema.enum && !(schema.enum as unknown[]).includes(value)) errors.push(`${path}: ${JSON.stringify(value)} is not one of the enum`);
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push(`${path}: below ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) errors.push(`${path}: above ${schema.maximum}`);
  }
  if (typeof value === 'string') {
    if (schema.minLength !== undefined && value.length < schema.minLength) errors.push(`${path}: shorter than ${schema.minLength}`);
    if (schema.pattern !== undefined && !new RegExp(schema.pattern as string, 'u').test(value))
      errors.push(`${path}: does not match ${schema.pattern}`);
  }
  if (type === 'object') {
    const obj = value as Record<string, unknown>;
    for (const r of schema.required ?? []) if (!(r in obj)) errors.push(`${path}: ${r} is required`);
    for (const [k, v] of Object.entries(obj)) {
      const sub = schema.properties?.[k];
      if (sub) errors.push(...schemaErrors(sub, v, `${path}.${k}`));
      else if (schema.additionalProperties === false) errors.push(`${path}: unknown key ${k}`);
      else if (typeof schema.additionalProperties === 'object')
        errors.push(...schemaErrors(schema.additionalProperties, v, `${path}.${k}`));
    }
  }
  if (type === 'array' && schema.items)
    (value as unknown[]).forEach((v, i) => errors.push(...schemaErrors(schema.items, v, `${path}[${i}]`)));
  return errors;
}

/** A copy of a values tree with one key path set (what `--set a.b=c` does). */
function withValue(values: K8s, path: string, value: unknown): K8s {
  const copy = structuredClone(values);
  const keys = path.split('.');
  let node = copy;
  for (const k of keys.slice(0, -1)) node = node[k] ??= {};
  node[keys.at(-1)!] = value;
  return copy;
}

/** The names of the alerts in deploy/monitoring/alerts.yaml. */
function alertNames(): string[] {
  const rules = parseYaml(read(join(DEPLOY, 'monitoring', 'alerts.yaml'))) as { groups: { rules: { alert?: string }[] }[] };
  return rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.alert ? [r.alert] : [])));
}

function helmHelper(helpers: string, name: string): string {
  const m = new RegExp(`\\{\\{-? define "fraiseql-relay\\.${name}" -?\\}\\}(.*?)\\{\\{-? end -?\\}\\}`).exec(helpers);
  assert.ok(m, `_helpers.tpl defines fraiseql-relay.${name} on one line`);
  return m[1]!;
}

test('helm chart: values and templates agree with the code', () => {
  const chart = parseYaml(read(join(CHART, 'Chart.yaml')));
  assert.equal(chart.apiVersion, 'v2', 'Chart.yaml apiVersion v2');
  assert.equal(chart.appVersion, PKG.version, 'Chart.yaml appVersion is package.json version (the default image tag)');

  const values = parseYaml(read(join(CHART, 'values.yaml')));
  assert.equal(typeof values.config, 'string', 'values.config holds fraiseql.toml');
  const env: Record<string, string> = {};
  for (const k of values.secretKeys as string[]) {
    assert.equal(typeof values.secretValues?.[k], 'string', `values.secretValues has an example for ${k}`);
    env[k] = values.secretValues[k];
  }
  const config = checkConfig(values.config, env, 'helm values');
  assert.equal(portOf(config.relay.listen), DEFAULT_PORT, 'values.config listens on the default port');
  assert.equal(values.port, portOf(config.relay.listen), 'values.port is the port of [relay] listen in values.config');
  assert.ok(
    values.terminationGracePeriodSeconds * 1000 > config.relay.shutdown_timeout,
    'values: terminationGracePeriodSeconds > shutdown_timeout',
  );
  assert.ok(values.replicaCount >= 2, 'values: at least 2 replicas');
  checkRollout(values.strategy?.rollingUpdate, values.replicaCount, 'values.strategy');
  assert.ok(
    (values.topologySpreadConstraints as K8s[]).some((c) => c.topologyKey === 'kubernetes.io/hostname'),
    'values: the replicas spread over nodes',
  );
  assert.deepEqual(values.configFiles?.secrets, [], 'values: configFiles.secrets exists (empty: the example config names no files)');
  assert.equal(values.configFiles.defaultMode & 0o007, 0, 'values: configFiles.defaultMode is not world-readable');
  assert.deepEqual(values.extraVolumes, [], 'values: extraVolumes exists');
  assert.deepEqual(values.extraVolumeMounts, [], 'values: extraVolumeMounts exists');
  assert.equal(values.serviceMonitor?.enabled, false, 'values: serviceMonitor.enabled exists (off: it needs the CRDs)');
  assert.equal(values.prometheusRule?.enabled, false, 'values: prometheusRule.enabled exists (off: it needs the CRDs)');
  assert.equal(values.grafanaDashboard?.enabled, false, 'values: grafanaDashboard.enabled exists (off)');
  assert.equal(
    values.grafanaDashboard?.labels?.grafana_dashboard,
    '1',
    "values: the dashboard carries the Grafana sidecar's default label",
  );
  assert.equal(values.migrationJob?.enabled, true, 'values: migrationJob.enabled exists (on)');
  assert.equal(values.existingSecret, '', 'values: existingSecret exists');
  assert.equal(values.securityContext?.readOnlyRootFilesystem, true, 'values: readOnlyRootFilesystem');
  assert.equal(values.podSecurityContext?.runAsUser, UID, `values: runAsUser ${UID}`);

  // templates: the parts that are plain text
  const t = (f: string): string => read(join(CHART, 'templates', f));
  const helpers = t('_helpers.tpl');
  const configDir = helmHelper(helpers, 'configDir');
  const configFile = helmHelper(helpers, 'configFile').replace('{{ include "fraiseql-relay.configDir" . }}', configDir);
  assert.equal(configFile, `${configDir}/fraiseql.toml`, 'configFile is fraiseql.toml in configDir');
  assert.match(
    t('configmap.yaml'),
    /^ {2}fraiseql\.toml: \|\n {4}\{\{- \.Values\.config \| nindent 4 \}\}/m,
    'the ConfigMap key fraiseql.toml holds values.config',
  );

  const deployment = t('deployment.yaml');
  const dargs = /args: \["(\w+)", "-c", \{\{ include "fraiseql-relay\.configFile" \. \| quote \}\}\]/.exec(deployment);
  assert.ok(dargs, 'deployment.yaml: args [<command>, -c, configFile]');
  checkInvocation([dargs[1], '-c', configFile], 'run', 'helm deployment.yaml');
  const mounts = helpers.slice(helpers.indexOf('define "fraiseql-relay.volumeMounts"'));
  assert.match(
    mounts,
    /^- name: config\n {2}mountPath: \{\{ include "fraiseql-relay\.configDir" \. \}\}\n {2}readOnly: true\n- name: tmp\n {2}mountPath: \/tmp\n/m,
    'fraiseql-relay.volumeMounts mounts the config volume at configDir, and /tmp',
  );
  const volume = helpers.slice(helpers.indexOf('define "fraiseql-relay.configVolume"'));
  assert.match(
    volume,
    /^projected:\n {2}defaultMode: \{\{ \.Values\.configFiles\.defaultMode \}\}\n {2}sources:\n {4}- configMap:\n {8}name: \{\{ \$configMap \}\}\n {4}\{\{- range \.Values\.configFiles\.secrets \}\}\n {4}- secret:/m,
    'fraiseql-relay.configVolume projects the ConfigMap and the configFiles Secrets',
  );
  for (const [file, configMap] of [
    ['deployment.yaml', '(printf "%s-config" (include "fraiseql-relay.fullname" .))'],
    ['migrate-job.yaml', '$name'],
  ] as const) {
    const text = t(file);
    assert.ok(
      text.includes('volumeMounts:\n            {{- include "fraiseql-relay.volumeMounts" . | nindent 12 }}'),
      `${file}: the container mounts fraiseql-relay.volumeMounts`,
    );
    assert.ok(
      text.includes(`- name: config\n          {{- include "fraiseql-relay.configVolume" (list . ${configMap}) | trim | nindent 10 }}`),
      `${file}: the config volume is fraiseql-relay.configVolume of its ConfigMap`,
    );
    assert.ok(text.includes('{{- with .Values.extraVolumes }}'), `${file}: adds extraVolumes`);
  }
  assert.match(
    deployment,
    /topologySpreadConstraints:\n\s+\{\{- toYaml \$spread \| nindent 8 \}\}/,
    'deployment.yaml renders the spread constraints',
  );
  assert.match(
    deployment,
    /- name: metrics\n\s+containerPort: \{\{ \.Values\.port \}\}/,
    'deployment.yaml: container port metrics = values.port',
  );
  assert.match(
    deployment,
    /livenessProbe:\n\s+httpGet:\n\s+path: \/livez\n\s+port: metrics\n/,
    'deployment.yaml: livenessProbe GET /livez on metrics',
  );
  assert.match(
    deployment,
    /readinessProbe:\n\s+httpGet:\n\s+path: \/readyz\n\s+port: metrics\n/,
    'deployment.yaml: readinessProbe GET /readyz on metrics',
  );
  assert.match(
    deployment,
    /terminationGracePeriodSeconds: \{\{ \.Values\.terminationGracePeriodSeconds \}\}/,
    'deployment.yaml uses values.terminationGracePeriodSeconds',
  );

  const job = t('migrate-job.yaml');
  const jargs = /args: \["(\w+)", "-c", \{\{ include "fraiseql-relay\.configFile" \. \| quote \}\}\]/.exec(job);
  assert.ok(jargs, 'migrate-job.yaml: args [<command>, -c, configFile]');
  checkInvocation([jargs[1], '-c', configFile], 'migrate', 'helm migrate-job.yaml');
  assert.match(job, /^\{\{- if \.Values\.migrationJob\.enabled \}\}/, 'migrate-job.yaml is behind migrationJob.enabled');
  assert.match(
    job,
    /kind: Job\n(?:.*\n)*?\s+helm\.sh\/hook: pre-install,pre-upgrade\n/,
    'the migration Job is a pre-install,pre-upgrade hook',
  );
  assert.match(job, /restartPolicy: OnFailure/, 'the migration Job restarts on failure');

  assert.match(
    t('servicemonitor.yaml'),
    /^\{\{- if \.Values\.serviceMonitor\.enabled \}\}\napiVersion: monitoring\.coreos\.com\/v1\nkind: ServiceMonitor/,
    'servicemonitor.yaml is behind serviceMonitor.enabled',
  );
  assert.match(t('servicemonitor.yaml'), /- port: metrics\n\s+path: \/metrics\n/, 'the ServiceMonitor scrapes metrics /metrics');
  assert.match(
    t('service.yaml'),
    /- name: metrics\n\s+port: \{\{ \.Values\.port \}\}\n\s+targetPort: metrics/,
    'the Service port metrics = values.port',
  );
  assert.match(t('secret.yaml'), /^\{\{- if not \.Values\.existingSecret \}\}/, 'secret.yaml is skipped with existingSecret');
  assert.doesNotMatch(
    [t('service.yaml'), t('pdb.yaml'), t('NOTES.txt'), read(join(CHART, 'values.yaml'))].join('\n'),
    /standbys? (?:are|is) (?:live but )?not ready|only the active relay is ready|not ready \(standbys\)|100%/i,
    'nothing says standbys are not Ready any more',
  );

  // monitoring: behind their flags, from the chart's copies of deploy/monitoring (test/monitoring.test.ts compares them)
  const rule = t('prometheusrule.yaml');
  assert.match(rule, /^\{\{- if \.Values\.prometheusRule\.enabled \}\}/, 'prometheusrule.yaml is behind prometheusRule.enabled');
  assert.ok(rule.includes('.Files.Get "files/alerts.yaml" | fromYaml'), 'prometheusrule.yaml reads files/alerts.yaml');
  assert.ok(rule.includes('(has $rule.alert $.Values.prometheusRule.disabledAlerts)'), 'prometheusrule.yaml leaves out disabledAlerts');
  const dash = t('dashboard-configmap.yaml');
  assert.match(dash, /^\{\{- if \.Values\.grafanaDashboard\.enabled \}\}/, 'dashboard-configmap.yaml is behind grafanaDashboard.enabled');
  assert.ok(dash.includes('.Files.Get "files/dashboard.json"'), 'dashboard-configmap.yaml reads files/dashboard.json');
  for (const f of ['alerts.yaml', 'dashboard.json']) assert.ok(existsSync(join(CHART, 'files', f)), `the chart ships files/${f}`);

  // without helm to render them, the templates are checked for what breaks a render: every
  // .Values path exists in values.yaml, and every block ends
  const templates = readdirSync(join(CHART, 'templates')).filter((f) => /\.(yaml|tpl|txt)$/.test(f));
  for (const f of templates) {
    const text = t(f);
    for (const [, path] of text.matchAll(/\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g)) {
      let node: K8s = values;
      for (const key of path!.slice(1).split('.')) {
        assert.ok(node !== null && typeof node === 'object' && key in node, `${f}: .Values${path} exists in values.yaml`);
        node = node[key];
      }
    }
    const opens = [...text.matchAll(/\{\{-?\s*(if|with|range|define)\b/g)].length;
    const ends = [...text.matchAll(/\{\{-?\s*end\s*-?\}\}/g)].length;
    assert.equal(opens, ends, `${f}: every if/with/range/define has its end`);
  }
});

test('helm chart: values.schema.json accepts values.yaml and refuses what would break the release', () => {
  const schema = JSON.parse(read(join(CHART, 'values.schema.json')));
  const values = parseYaml(read(join(CHART, 'values.yaml')));
  assert.equal(schema.$schema, 'http://json-schema.org/draft-07/schema#', 'draft-07, which every Helm 3 validates');
  assert.doesNotMatch(JSON.stringify(schema), /"\$ref"|"\$id"/, 'self-contained: Helm 3.18.5+ refuses remote references');
  assert.deepEqual(schemaErrors(schema, values), [], 'values.yaml validates');
  assert.equal(schema.additionalProperties, false, 'a misspelt top-level value is an error, not ignored');
  assert.deepEqual(
    Object.keys(schema.properties)
      .filter((k) => k !== 'global')
      .sort(),
    Object.keys(values).sort(),
    'the schema describes every top-level value (and `global`, which a parent chart passes)',
  );
  assert.deepEqual(
    [...schema.properties.prometheusRule.properties.disabledAlerts.items.enum].sort(),
    alertNames().sort(),
    'prometheusRule.disabledAlerts takes the names of the alerts in files/alerts.yaml',
  );

  const accepted: [string, unknown][] = [
    [
      'configFiles.secrets',
      [
        { name: 'tls', items: [{ key: 'ca.crt', path: 'certs/nats-ca.pem' }] },
        { name: 'creds', optional: true },
      ],
    ],
    ['prometheusRule.disabledAlerts', ['FraiseqlRelayNatsDown']],
    ['podDisruptionBudget.minAvailable', '50%'],
    ['strategy.rollingUpdate.maxUnavailable', 1],
    ['extraVolumeMounts', [{ name: 'csi', mountPath: '/mnt/secrets' }]],
  ];
  for (const [path, value] of accepted)
    assert.deepEqual(schemaErrors(schema, withValue(values, path, value)), [], `the schema accepts ${path}=${JSON.stringify(value)}`);
  const refused: [string, unknown][] = [
    ['replicaCount', 'two'],
    ['replicaCount', 0],
    ['port', 70000],
    ['logLevel', 'verbose'],
    ['secretKeys', ['DATABASE-URL']],
    ['configFiles.secrets', [{ items: [] }]],
    ['configFiles.secrets', [{ name: 'tls', items: [{ key: 'ca.crt', path: '/etc/ca.pem' }] }]],
    ['configFiles.defaultMode', 1000],
    ['prometheusRule.disabledAlerts', ['FraiseqlRelayNoSuchAlert']],
    ['podDisruptionBudget.minAvailable', 'half'],
    ['topologySpreadConstraints', [{ topologyKey: 'kubernetes.io/hostname' }]],
    ['migrationJob.databseUrlKey', 'MIGRATE_DATABASE_URL'],
    ['serviceMonitorr', { enabled: true }],
  ];
  for (const [path, value] of refused)
    assert.notDeepEqual(schemaErrors(schema, withValue(values, path, value)), [], `the schema refuses ${path}=${JSON.stringify(value)}`);
});

function helm(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('helm', args, { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('helm chart: `helm template` renders objects that agree with the code (when helm is on PATH)', () => {
  const probe = spawnSync('helm', ['version', '--short'], { encoding: 'utf8' });
  if (probe.error && (probe.error as NodeJS.ErrnoException).code === 'ENOENT') {
    return; // no helm here: the static checks above stand
  }
  const lint = helm(['lint', CHART]);
  assert.equal(lint.status, 0, `helm lint: ${lint.stdout}${lint.stderr}`);

  // defaults, with the ServiceMonitor
  const r = helm(['template', 'orders', CHART, '--set', 'serviceMonitor.enabled=true']);
  assert.equal(r.status, 0, `helm template: ${r.stderr}`);
  const objects = yamlDocs(r.stdout, 'helm template');
  checkManifests(objects, 'helm template', { serviceMonitor: true, migrate: 'job' });
  const deployment = one(objects, 'Deployment', 'helm template');
  assert.equal(
    deployment.spec.template.spec.containers[0].image,
    `fraiseql-relay:${PKG.version}`,
    'helm: the image tag defaults to appVersion',
  );
  const job = one(objects, 'Job', 'helm template');
  assert.equal(job.metadata.annotations?.['helm.sh/hook'], 'pre-install,pre-upgrade', 'helm: the Job is a pre-install,pre-upgrade hook');
  // on install, hooks run before the release's own objects exist: the Job's ConfigMap and Secret are earlier hooks
  const jobSpec = job.spec.template.spec;
  const weight = (o: K8s): number => Number(o.metadata.annotations?.['helm.sh/hook-weight'] ?? 0);
  const cmName = jobSpec.volumes.find((v: K8s) => v.configMap)?.configMap.name;
  const secretNames = new Set<string>(
    jobSpec.containers[0].env.filter((e: K8s) => e.valueFrom?.secretKeyRef).map((e: K8s) => e.valueFrom.secretKeyRef.name),
  );
  for (const o of objects.filter(
    (x) => (x.kind === 'ConfigMap' && x.metadata.name === cmName) || (x.kind === 'Secret' && secretNames.has(x.metadata.name)),
  )) {
    assert.match(
      o.metadata.annotations?.['helm.sh/hook'] ?? '',
      /pre-install/,
      `helm: the Job's ${o.kind} ${o.metadata.name} is a hook too`,
    );
    assert.ok(weight(o) < weight(job), `helm: the Job's ${o.kind} ${o.metadata.name} is created before the Job`);
  }

  // defaults: no ServiceMonitor (it needs the CRDs)
  const plain = helm(['template', 'orders', CHART]);
  assert.equal(plain.status, 0, `helm template (defaults): ${plain.stderr}`);
  const plainObjects = yamlDocs(plain.stdout, 'helm template (defaults)');
  checkManifests(plainObjects, 'helm template (defaults)', { serviceMonitor: false, migrate: 'job' });
  assert.deepEqual(
    plainObjects.filter((o) => o.kind === 'PrometheusRule' || o.metadata.labels?.grafana_dashboard),
    [],
    'helm: no PrometheusRule or dashboard by default',
  );

  // existingSecret: no Secret rendered, every secretKeyRef points at it
  const ext = helm(['template', 'orders', CHART, '--set', 'existingSecret=orders-relay-env', '--set', 'migrationJob.enabled=false']);
  assert.equal(ext.status, 0, `helm template (existingSecret): ${ext.stderr}`);
  const extObjects = yamlDocs(ext.stdout, 'helm template (existingSecret)');
  assert.equal(extObjects.filter((o) => o.kind === 'Secret').length, 0, 'helm: existingSecret renders no Secret');
  const refs = one(extObjects, 'Deployment', 'helm (existingSecret)').spec.template.spec.containers[0].env.filter(
    (e: K8s) => e.valueFrom?.secretKeyRef,
  );
  assert.ok(
    refs.length >= 2 && refs.every((e: K8s) => e.valueFrom.secretKeyRef.name === 'orders-relay-env'),
    'helm: env reads the existing Secret',
  );
  // the operator's Secret, as the static check of the base has the example one
  const standIn = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: 'orders-relay-env' },
    stringData: { DATABASE_URL: 'postgres://relay@db/orders', NATS_URL: 'nats://nats:4222' },
  };
  checkManifests([...extObjects, standIn], 'helm template (existingSecret)', { serviceMonitor: false, migrate: 'none' });

  // migrate as the schema owner, the relay as the least-privilege role
  const owner = helm([
    'template',
    'orders',
    CHART,
    '--set',
    'migrationJob.databaseUrlKey=MIGRATE_DATABASE_URL',
    '--set',
    'secretValues.MIGRATE_DATABASE_URL=postgres://owner@db/orders',
  ]);
  assert.equal(owner.status, 0, `helm template (databaseUrlKey): ${owner.stderr}`);
  const ownerObjects = yamlDocs(owner.stdout, 'helm template (databaseUrlKey)');
  const dbKey = (kind: string): unknown =>
    one(ownerObjects, kind, 'helm (databaseUrlKey)').spec.template.spec.containers[0].env.find((e: K8s) => e.name === 'DATABASE_URL')
      ?.valueFrom?.secretKeyRef?.key;
  assert.equal(dbKey('Job'), 'MIGRATE_DATABASE_URL', 'helm: migrationJob.databaseUrlKey gives migrate its own DATABASE_URL');
  assert.equal(dbKey('Deployment'), 'DATABASE_URL', 'helm: the relay keeps DATABASE_URL');
  checkManifests(ownerObjects, 'helm template (databaseUrlKey)', { serviceMonitor: false, migrate: 'job' });

  // a key the chart should create but has no value for: a render error, not a broken pod
  const missing = helm(['template', 'orders', CHART, '--set', 'secretKeys={DATABASE_URL,NATS_URL,HOOK_TOKEN}']);
  assert.notEqual(missing.status, 0, 'helm: a secretKeys entry without secretValues fails the render');
  assert.match(missing.stderr, /secretValues\.HOOK_TOKEN/, 'helm: the render error names the key');

  // values.schema.json: a wrong value fails the render
  const bad = helm(['template', 'orders', CHART, '--set', 'replicaCount=two']);
  assert.notEqual(bad.status, 0, 'helm: values.schema.json refuses replicaCount=two');

  // monitoring, the files the config names, more volumes
  const dir = mkdtempSync(join(tmpdir(), 'fraiseql-relay-helm-'));
  try {
    const file = join(dir, 'values.yaml');
    writeFileSync(
      file,
      JSON.stringify({
        prometheusRule: {
          enabled: true,
          labels: { release: 'kps' },
          ruleLabels: { team: 'orders' },
          disabledAlerts: ['FraiseqlRelayNatsDown'],
        },
        grafanaDashboard: { enabled: true, annotations: { grafana_folder: 'FraiseQL' } },
        configFiles: {
          secrets: [
            { name: 'orders-nats-tls', items: [{ key: 'ca.crt', path: 'certs/nats-ca.pem' }] },
            { name: 'orders-nats-creds', optional: true },
          ],
        },
        extraVolumes: [{ name: 'extra', emptyDir: {} }],
        extraVolumeMounts: [{ name: 'extra', mountPath: '/mnt/extra' }],
      }),
    );
    const mon = helm(['template', 'orders', CHART, '-f', file]);
    assert.equal(mon.status, 0, `helm template (monitoring): ${mon.stderr}`);
    const monObjects = yamlDocs(mon.stdout, 'helm template (monitoring)');
    checkManifests(monObjects, 'helm template (monitoring)', { serviceMonitor: false, migrate: 'job' });
    const rule = one(monObjects, 'PrometheusRule', 'helm (monitoring)');
    assert.equal(rule.metadata.labels.release, 'kps', 'helm: prometheusRule.labels label the PrometheusRule');
    const expected = parseYaml(read(join(DEPLOY, 'monitoring', 'alerts.yaml'))) as { groups: { rules: K8s[] }[] };
    const got = rule.spec.groups as { rules: K8s[] }[];
    assert.deepEqual(
      got.flatMap((g) => g.rules.map((r) => r.alert)),
      alertNames().filter((a) => a !== 'FraiseqlRelayNatsDown'),
      'helm: the alerts of alerts.yaml, less disabledAlerts',
    );
    for (const r of got.flatMap((g) => g.rules)) {
      const original = expected.groups.flatMap((g) => g.rules).find((x) => x.alert === r.alert);
      assert.deepEqual(
        r,
        { ...original, labels: { ...original.labels, team: 'orders' } },
        `helm: ${r.alert} as in alerts.yaml, plus ruleLabels`,
      );
    }
    const dash = one(monObjects, 'ConfigMap', 'helm (monitoring)', (o) => o.metadata.labels?.grafana_dashboard === '1');
    assert.equal(dash.metadata.annotations?.grafana_folder, 'FraiseQL', 'helm: grafanaDashboard.annotations');
    assert.deepEqual(
      JSON.parse(dash.data['fraiseql-relay.json']),
      JSON.parse(read(join(DEPLOY, 'monitoring', 'dashboard.json'))),
      'helm: the dashboard ConfigMap holds deploy/monitoring/dashboard.json',
    );
    for (const kind of ['Deployment', 'Job']) {
      const pod = one(monObjects, kind, `helm (monitoring) ${kind}`).spec.template.spec;
      const sources = pod.volumes.find((v: K8s) => v.name === 'config').projected.sources as K8s[];
      assert.deepEqual(
        sources.filter((src) => src.secret).map((src) => src.secret),
        [
          { name: 'orders-nats-tls', items: [{ key: 'ca.crt', path: 'certs/nats-ca.pem' }] },
          { name: 'orders-nats-creds', optional: true },
        ],
        `helm ${kind}: configFiles.secrets are projected beside fraiseql.toml`,
      );
      assert.ok(
        pod.volumes.some((v: K8s) => v.name === 'extra'),
        `helm ${kind}: extraVolumes`,
      );
      assert.ok(
        pod.containers[0].volumeMounts.some((m: K8s) => m.mountPath === '/mnt/extra'),
        `helm ${kind}: extraVolumeMounts`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- compose

test('compose.yaml: PostgreSQL with logical WAL, NATS with JetStream, migrate then the relay', () => {
  const compose = yamlDocs(read(join(DEPLOY, 'compose.yaml')), 'compose.yaml')[0];
  const services = compose.services as Record<string, K8s>;
  for (const name of ['postgres', 'nats', 'migrate', 'relay']) assert.ok(services[name], `compose: service ${name}`);
  const { postgres, nats, migrate, relay } = services;

  assert.match(String(postgres.image), /^postgres:1[5-9]/, 'compose: PostgreSQL 15+');
  assert.ok((postgres.command as string[]).includes('wal_level=logical'), 'compose: PostgreSQL runs with wal_level=logical');
  assert.match(String(nats.image), /^nats:2\.(9|1\d)/, 'compose: nats-server 2.9+');
  assert.ok(
    (nats.command as string[]).some((a) => a === '-js' || a === '--jetstream'),
    'compose: NATS runs with JetStream',
  );

  // the image: built once, from deploy/Dockerfile with the repository as context, by one service
  const builders = Object.entries(services).filter(([, svc]) => svc.build);
  assert.equal(builders.length, 1, `compose: one service builds the image (${builders.map(([n]) => n).join(', ')})`);
  const [builderName, builder] = builders[0]!;
  const context = resolve(DEPLOY, builder.build.context);
  assert.equal(context, ROOT, `compose ${builderName}: build context is the repository root`);
  assert.ok(
    existsSync(join(context, builder.build.dockerfile)),
    `compose ${builderName}: the Dockerfile ${builder.build.dockerfile} exists in the context`,
  );
  assert.equal(typeof builder.image, 'string', `compose ${builderName}: names the image it builds`);

  let relayConfig: Config | undefined;
  for (const [name, command] of [
    ['migrate', 'migrate'],
    ['relay', 'run'],
  ] as const) {
    const svc = services[name];
    const what = `compose ${name}`;
    assert.equal(svc.image, builder.image, `${what}: runs the image ${builderName} builds`);
    if (!svc.build) assert.equal(svc.pull_policy, 'never', `${what}: never pulls ${svc.image} from a registry: it is built here`);
    const configPath = checkInvocation(svc.command, command, what);
    // the config: a bind mount of a file in deploy/
    const mount = (svc.volumes as string[]).map((v) => v.split(':')).find((p) => p[1] === configPath);
    assert.ok(mount, `${what}: a volume is mounted at ${configPath}`);
    const host = resolve(DEPLOY, mount[0]!);
    assert.ok(existsSync(host), `${what}: ${mount[0]} exists`);
    const env = svc.environment as Record<string, string>;
    const config = checkConfig(read(host), env, what);
    assert.equal(svc.read_only, true, `${what}: read-only root filesystem`);
    assert.ok((svc.tmpfs as string[]).includes('/tmp'), `${what}: /tmp is a tmpfs`);
    assert.equal(svc.user, undefined, `${what}: runs as the image's non-root user`);
    if (name === 'relay') relayConfig = config;
  }
  assert.ok(relayConfig);

  // HTTP: published port and healthcheck on [relay] listen
  const port = portOf(relayConfig.relay.listen);
  assert.equal(port, DEFAULT_PORT, 'compose: the config listens on the default port');
  assert.ok(
    (relay.ports as string[]).some((p) => p.split(':').at(-1) === String(port)),
    `compose relay: container port ${port} is published`,
  );
  const health = (relay.healthcheck?.test as string[]).join(' ');
  assert.match(health, new RegExp(`:${port}/(readyz|livez)\\b`), 'compose relay: healthcheck on /readyz or /livez at the listen port');
  assert.ok(
    parseDuration(relay.stop_grace_period) > relayConfig.relay.shutdown_timeout,
    'compose relay: stop_grace_period > shutdown_timeout',
  );

  // start order: databases healthy, migrate done, then the relay
  assert.equal(migrate.depends_on?.postgres?.condition, 'service_healthy', 'compose migrate: waits for a healthy PostgreSQL');
  assert.equal(relay.depends_on?.postgres?.condition, 'service_healthy', 'compose relay: waits for a healthy PostgreSQL');
  assert.equal(relay.depends_on?.nats?.condition, 'service_healthy', 'compose relay: waits for a healthy NATS');
  assert.equal(relay.depends_on?.migrate?.condition, 'service_completed_successfully', 'compose relay: waits for migrate to succeed');
  for (const [name, svc] of Object.entries(services)) {
    for (const [dep, cond] of Object.entries((svc.depends_on ?? {}) as Record<string, K8s>)) {
      if (cond.condition === 'service_healthy')
        assert.ok(services[dep]?.healthcheck?.test, `compose: ${name} waits for ${dep} to be healthy, which has a healthcheck`);
    }
  }

  // a way to look at the messages: the NATS CLI, on demand, with the commands documented
  const box = services['nats-box'];
  assert.ok(box, 'compose: a nats-box service (the NATS CLI)');
  assert.match(String(box.image), /^natsio\/nats-box:\d+\.\d+\.\d+$/, 'compose nats-box: a pinned natsio/nats-box image');
  assert.ok((box.profiles as string[] | undefined)?.includes('tools'), 'compose nats-box: in the tools profile, not started by `up`');
  assert.equal(
    box.environment?.NATS_URL,
    (migrate.environment as Record<string, string>).NATS_URL,
    'compose nats-box: the NATS the relay uses',
  );
  const text = read(join(DEPLOY, 'compose.yaml'));
  const stream = relayConfig.relay.stream.name;
  assert.ok(
    text.includes(`docker compose -f deploy/compose.yaml run --rm nats-box nats stream view ${stream}`),
    `compose.yaml documents \`nats stream view ${stream}\` (the relay's stream)`,
  );
  assert.match(text, /run --rm nats-box nats sub 'fraiseql\.>'/, 'compose.yaml documents `nats sub`');
});

// ---------------------------------------------------------------- Dockerfile

interface Instruction {
  op: string;
  args: string;
  stage: number;
}

function dockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let stage = -1;
  let pending = '';
  for (const raw of text.split('\n')) {
    if (pending === '' && /^\s*(#|$)/.test(raw)) continue;
    if (/^\s*#/.test(raw)) continue; // a comment inside a continued instruction
    const line = pending + raw.trim();
    if (line.endsWith('\\')) {
      pending = line.slice(0, -1) + ' ';
      continue;
    }
    pending = '';
    const m = /^(\w+)\s+(.*)$/.exec(line);
    assert.ok(m, `Dockerfile line ${JSON.stringify(line)}`);
    const op = m[1]!.toUpperCase();
    if (op === 'FROM') stage++;
    out.push({ op, args: m[2]!, stage });
  }
  return out;
}

test('Dockerfile: non-root, tini, the listen port, the files the runtime reads', () => {
  const ins = dockerfile(read(join(DEPLOY, 'Dockerfile')));
  const froms = ins.filter((i) => i.op === 'FROM');
  assert.ok(froms.length >= 2, 'multi-stage');
  for (const f of froms) assert.match(f.args, /^node:22-bookworm-slim\b/, `FROM node:22-bookworm-slim: ${f.args}`);
  assert.match(PKG.engines.node, /^>=20$/, 'the package still supports Node.js 20 and later; the image runs 22');
  const last = froms.length - 1;
  const build = ins
    .filter((i) => i.stage < last && i.op === 'RUN')
    .map((i) => i.args)
    .join('\n');
  assert.match(build, /\bnpm ci\b/, 'the build stage runs npm ci');
  assert.match(build, /\bnpm run build\b/, 'the build stage runs npm run build');
  assert.match(build, /\bnpm prune --omit=dev\b/, 'the build stage drops the devDependencies');
  const runtime = ins.filter((i) => i.stage === last);
  const at = (op: string): Instruction[] => runtime.filter((i) => i.op === op);

  // OCI labels: what the image is, which version, under which licence
  const args = new Map<string, string>();
  for (const i of at('ARG')) {
    const [name, ...rest] = i.args.split('=');
    args.set(name!, rest.join('=').replace(/^"(.*)"$/, '$1'));
  }
  const labels = new Map<string, string>();
  for (const i of at('LABEL')) {
    for (const m of i.args.matchAll(/([\w.-]+)="([^"]*)"/g))
      labels.set(
        m[1]!,
        m[2]!.replace(/\$\{(\w+)\}/g, (_, a: string) => args.get(a) ?? ''),
      );
  }
  for (const k of ['title', 'description', 'version', 'revision', 'created', 'source', 'licenses', 'base.name'])
    assert.ok(labels.has(`org.opencontainers.image.${k}`), `LABEL org.opencontainers.image.${k}`);
  assert.equal(labels.get('org.opencontainers.image.version'), PKG.version, 'the version label defaults to package.json version');
  assert.equal(labels.get('org.opencontainers.image.licenses'), PKG.license, 'the licenses label is package.json license');
  assert.equal(
    labels.get('org.opencontainers.image.base.name'),
    `docker.io/library/${froms[last]!.args.split(/\s+/)[0]}`,
    'the base.name label is the runtime stage base image',
  );
  const prune = build.split('\n').find((l) => /npm prune --omit=dev/.test(l)) ?? '';
  assert.match(prune, /test ! -e node_modules\/tsx/, 'the build proves tsx is not in the runtime dependencies');

  // non-root user, the uid the manifests ask for
  const user = at('USER').at(-1);
  assert.ok(user, 'the runtime stage sets USER');
  const [uid] = user.args.split(':');
  assert.ok(uid !== 'root' && uid !== '0', 'USER is not root');
  assert.equal(uid, String(UID), `USER ${UID} (runAsUser in the manifests)`);

  // tini as PID 1, then node on bin/fraiseql-relay.js; exec form
  const entry = JSON.parse(at('ENTRYPOINT').at(-1)?.args ?? 'null') as string[] | null;
  assert.ok(Array.isArray(entry), 'ENTRYPOINT in exec form');
  assert.equal(entry[0], '/usr/bin/tini', 'ENTRYPOINT starts with tini');
  assert.equal(entry[1], '--', 'tini -- node …');
  assert.equal(entry[2], 'node', 'tini runs node');
  assert.match(
    at('RUN')
      .map((i) => i.args)
      .join('\n'),
    /apt-get install[^\n]*\btini\b/,
    'the runtime stage installs tini',
  );
  const script = entry[3]!;
  assert.equal(posix.basename(script), 'fraiseql-relay.js', 'node runs bin/fraiseql-relay.js');

  // CMD: `run -c <the path the manifests mount>`
  const cmd = JSON.parse(at('CMD').at(-1)?.args ?? 'null') as string[] | null;
  const configPath = checkInvocation(cmd, 'run', 'Dockerfile CMD');
  const deployment = kustomizeBaseStatic().objects.find((o) => o.kind === 'Deployment');
  assert.equal(
    configPath,
    checkInvocation(deployment.spec.template.spec.containers[0].args, 'run', 'kustomize Deployment'),
    'CMD reads the config where the manifests mount it',
  );

  // EXPOSE the default listen port; production mode
  const exposed = at('EXPOSE')
    .flatMap((i) => i.args.split(/\s+/))
    .map((p) => Number(p.split('/')[0]));
  assert.ok(exposed.includes(DEFAULT_PORT), `EXPOSE ${DEFAULT_PORT} (the default [relay] listen port)`);
  assert.match(
    at('ENV')
      .map((i) => i.args)
      .join('\n'),
    /\bNODE_ENV=production\b/,
    'ENV NODE_ENV=production',
  );

  // the runtime layout: bin/ imports ../dist/cli.js, migrate.ts reads ../sql relative to dist/
  let workdir = '/';
  const dest = new Map<string, string>();
  for (const i of runtime) {
    if (i.op === 'WORKDIR') workdir = posix.resolve(workdir, i.args);
    if (i.op === 'COPY') {
      const parts = i.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      const to = posix.resolve(workdir, parts.at(-1)!);
      for (const src of parts.slice(0, -1)) dest.set(posix.basename(src), parts.length > 2 ? posix.join(to, posix.basename(src)) : to);
    }
  }
  for (const needed of ['package.json', 'node_modules', 'dist', 'sql', 'bin'])
    assert.ok(dest.has(needed), `the runtime stage copies ${needed}`);
  assert.equal(posix.dirname(script), dest.get('bin'), 'ENTRYPOINT runs the copied bin/');
  assert.match(
    read(join(ROOT, 'bin', 'fraiseql-relay.js')),
    /new URL\('\.\.\/dist\/cli\.js', import\.meta\.url\)/,
    'bin/fraiseql-relay.js runs ../dist/cli.js',
  );
  assert.equal(dest.get('dist'), posix.join(dest.get('bin')!, '..', 'dist'), 'dist/ is where bin/ looks for it');
  assert.match(
    read(join(ROOT, 'src', 'schema', 'plan.ts')),
    /join\(dirname\(fileURLToPath\(import\.meta\.url\)\), '\.\.', '\.\.', 'sql'\)/,
    'the migration plan (dist/schema/) reads ../../sql relative to its module',
  );
  assert.equal(
    dest.get('sql'),
    posix.join(dest.get('dist')!, '..', 'sql'),
    'sql/ is beside dist/ (migrate reads ../../sql from dist/schema/)',
  );
  assert.equal(
    dest.get('package.json'),
    posix.join(dest.get('dist')!, '..', 'package.json'),
    'package.json ("type": "module") is beside dist/',
  );

  // .dockerignore keeps the build context small and the host's build out
  const ignore = read(join(ROOT, '.dockerignore'))
    .split('\n')
    .map((l) => l.trim().replace(/^\/|\/$/g, ''));
  for (const p of ['node_modules', 'dist', '.git']) assert.ok(ignore.includes(p), `.dockerignore lists ${p}`);
});

// ---------------------------------------------------------------- the package at run time

/** Every file under a directory, relative to it. */
function walk(dir: string, base = dir): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p, base) : [relative(base, p)];
  });
}

test(
  'the runtime: dist/ as built for the package has no source maps, and `npm ci --omit=dev` runs the CLI without tsx',
  { timeout: 300_000 },
  () => {
    assert.equal(PKG.dependencies['tsx'], undefined, 'tsx is not a runtime dependency');
    assert.ok(PKG.devDependencies['tsx'], 'tsx is a devDependency (bin/ runs src/ through it in a checkout without dist/)');
    const dir = mkdtempSync(join(tmpdir(), 'fraiseql-relay-runtime-'));
    try {
      // the build `npm run build` (prepare) makes for the package and the image
      const tsc = spawnSync(
        process.execPath,
        [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(dir, 'dist')],
        { cwd: ROOT, encoding: 'utf8', timeout: 240_000 },
      );
      assert.equal(tsc.status, 0, `tsc -p tsconfig.build.json: ${tsc.stdout}${tsc.stderr}`);
      const built = walk(join(dir, 'dist'));
      assert.ok(built.includes('cli.js') && built.includes('index.d.ts'), 'the build emits dist/cli.js and the declarations');
      // src/ is not in the package (package.json files): a map would point at files nobody has
      assert.ok(!PKG.files.includes('src'), 'src/ is not shipped');
      assert.deepEqual(
        built.filter((f) => f.endsWith('.map')),
        [],
        'no source maps or declaration maps (they would point at src/, which is not shipped)',
      );
      const withMapUrl = built.filter((f) => /\.(js|d\.ts)$/.test(f) && /sourceMappingURL=/.test(read(join(dir, 'dist', f))));
      assert.deepEqual(withMapUrl, [], 'no sourceMappingURL comment points at a missing map');

      // the production install the image makes (npm ci, build, npm prune --omit=dev)
      for (const f of ['package.json', 'package-lock.json']) cpSync(join(ROOT, f), join(dir, f));
      for (const d of ['bin', 'sql']) cpSync(join(ROOT, d), join(dir, d), { recursive: true });
      const npm = spawnSync('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'], {
        cwd: dir,
        encoding: 'utf8',
        timeout: 240_000,
      });
      assert.equal(npm.status, 0, `npm ci --omit=dev: ${npm.stderr}`);
      assert.ok(!existsSync(join(dir, 'node_modules', 'tsx')), 'tsx is not installed with --omit=dev');
      assert.ok(!existsSync(join(dir, 'node_modules', 'typescript')), 'typescript is not installed with --omit=dev');
      const env = { ...process.env, NODE_ENV: 'production', NODE_OPTIONS: '' };
      const help = spawnSync(process.execPath, [join(dir, 'bin', 'fraiseql-relay.js'), '--help'], { cwd: dir, encoding: 'utf8', env });
      assert.equal(help.status, 0, `fraiseql-relay --help from dist/ without devDependencies: ${help.stderr}`);
      assert.match(help.stdout, /^Commands:/m, 'the CLI lists its commands');

      // without dist/ and without tsx: a clear message, not a stack trace
      rmSync(join(dir, 'dist'), { recursive: true });
      const none = spawnSync(process.execPath, [join(dir, 'bin', 'fraiseql-relay.js'), '--help'], { cwd: dir, encoding: 'utf8', env });
      assert.equal(none.status, 1, 'no dist/ and no tsx: exit 1');
      assert.match(none.stderr, /dist\/ is missing: build it with `npm run build`/, 'says how to build dist/');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }

    // a development checkout without dist/: bin/ runs src/ through tsx
    const dev = mkdtempSync(join(tmpdir(), 'fraiseql-relay-dev-'));
    try {
      cpSync(join(ROOT, 'bin'), join(dev, 'bin'), { recursive: true });
      cpSync(join(ROOT, 'package.json'), join(dev, 'package.json'));
      for (const d of ['src', 'node_modules', 'sql']) symlinkSync(join(ROOT, d), join(dev, d));
      const r = spawnSync(process.execPath, [join(dev, 'bin', 'fraiseql-relay.js'), '--help'], { cwd: dev, encoding: 'utf8' });
      assert.equal(r.status, 0, `fraiseql-relay --help from src/ through tsx: ${r.stderr}`);
      assert.match(r.stdout, /^Commands:/m, 'the CLI lists its commands');
    } finally {
      rmSync(dev, { recursive: true, force: true });
    }
  },
);

// ---------------------------------------------------------------- the same with Redis

/** Helm's merge of a values file over the chart's: maps merged key by key, null deletes, the rest replaced. */
function helmMerge(base: unknown, over: unknown): unknown {
  if (over === null || typeof over !== 'object' || Array.isArray(over)) return over;
  if (base === null || typeof base !== 'object' || Array.isArray(base)) base = {};
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(over as Record<string, unknown>)) {
    if (v === null) delete out[k];
    else out[k] = helmMerge(out[k], v);
  }
  return out;
}

test('helm values-redis.yaml: the chart runs the relay with backend = "redis", its values valid for the schema', () => {
  const values = helmMerge(parseYaml(read(join(CHART, 'values.yaml'))), parseYaml(read(join(DEPLOY, 'helm', 'values-redis.yaml')))) as K8s;
  const env: Record<string, string> = {};
  for (const k of values.secretKeys as string[]) {
    assert.equal(typeof values.secretValues?.[k], 'string', `values-redis: secretValues has an example for ${k}`);
    env[k] = values.secretValues[k];
  }
  assert.deepEqual(Object.keys(values.secretValues).sort(), ['DATABASE_URL', 'REDIS_URL'], 'values-redis: no NATS_URL left in the Secret');
  const config = checkConfig(values.config, env, 'helm values-redis');
  assert.equal(config.observers.backend, 'redis');
  assert.equal(config.observers.redis_url, env['REDIS_URL']);
  assert.equal(values.port, portOf(config.relay.listen), 'values-redis: [relay] listen uses values.port');
  assert.ok(values.terminationGracePeriodSeconds * 1000 > config.relay.shutdown_timeout, 'values-redis: grace period > shutdown_timeout');
  assert.ok((values.prometheusRule.disabledAlerts as string[]).includes('FraiseqlRelayNatsDown'), 'values-redis: no NATS alert');
  const schema = JSON.parse(read(join(CHART, 'values.schema.json')));
  assert.deepEqual(schemaErrors(schema, values), [], 'values.yaml with values-redis.yaml validates');
});

test('compose.redis.yaml: Redis with an fsynced append-only file, migrate and the relay on fraiseql.redis.toml', () => {
  const base = yamlDocs(read(join(DEPLOY, 'compose.yaml')), 'compose.yaml')[0];
  const over = yamlDocs(read(join(DEPLOY, 'compose.redis.yaml')), 'compose.redis.yaml')[0];
  const services = over.services as Record<string, K8s>;
  const redis = services['redis'];
  assert.ok(redis, 'compose.redis: a redis service');
  assert.match(String(redis.image), /^redis:(6\.2|[7-9])/, 'compose.redis: Redis 6.2+ (XAUTOCLAIM)');
  const cmd = (redis.command as string[]).join(' ');
  assert.match(cmd, /--appendonly yes/, 'compose.redis: append-only file on');
  assert.match(cmd, /--appendfsync always/, 'compose.redis: fsynced on every write');
  assert.ok(redis.healthcheck?.test, 'compose.redis: redis has a healthcheck');
  assert.ok(
    (redis.volumes as string[]).some((v) => v.endsWith(':/data')),
    'compose.redis: its data on a volume',
  );
  assert.ok(over.volumes['redis-data'] !== undefined, 'compose.redis: declares the redis-data volume');
  for (const [name, command] of [
    ['migrate', 'migrate'],
    ['relay', 'run'],
  ] as const) {
    const what = `compose.redis ${name}`;
    const svc = base.services[name];
    const o = services[name];
    assert.ok(o, `${what}: overridden`);
    const configPath = checkInvocation(svc.command, command, what);
    // compose merges volumes by their path in the container: the override's mount replaces the base's
    const mount = (o.volumes as string[]).map((v) => v.split(':')).find((p) => p[1] === configPath);
    assert.ok(mount, `${what}: mounts its config at ${configPath}`);
    const env = { ...(svc.environment as Record<string, string>), ...(o.environment as Record<string, string>) };
    const config = checkConfig(read(resolve(DEPLOY, mount[0]!)), env, what);
    assert.equal(config.observers.backend, 'redis', `${what}: backend = "redis"`);
    assert.equal(config.observers.redis_url, 'redis://redis:6379', `${what}: the compose redis service`);
    if (name === 'relay') {
      assert.equal(portOf(config.relay.listen), DEFAULT_PORT, `${what}: the published port`);
      assert.equal(o.depends_on?.redis?.condition, 'service_healthy', `${what}: waits for a healthy Redis`);
    }
  }
  const text = read(join(DEPLOY, 'compose.redis.yaml'));
  assert.ok(text.includes('docker compose -f deploy/compose.yaml -f deploy/compose.redis.yaml up --build'), 'documents how to start it');
});

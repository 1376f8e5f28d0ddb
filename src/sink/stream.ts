import {
  JetStreamApiCodes,
  JetStreamApiError,
  jetstreamManager,
  StorageType,
  type JetStreamManager,
  type StreamInfo,
  type StreamUpdateConfig,
} from '@nats-io/jetstream';
import { nanos, type NatsConnection } from '@nats-io/transport-node';
import type { Config, StreamConfig } from '../config/load.js';
import { formatDuration } from '../config/duration.js';
import type { Logger } from '../util/log.js';
import { UsageError } from '../util/errors.js';
import { filterCovers } from './subjects.js';

/** JetStream API error codes the relay explains (nats-server's errors.json). */
const API = {
  /** "replicas > 1 not supported in non-clustered mode" */
  replicasNotSupported: 10074,
  /** "no suitable peers for placement" */
  noSuitablePeers: 10005,
  /** "insufficient resources" */
  insufficientResources: 10023,
  /** "subjects overlap with an existing stream" */
  subjectsOverlap: 10065,
  /** "stream configuration update can not change …", "duplicates window can not be larger then max age", … */
  invalidConfig: 10052,
} as const;

/** Drops subjects another one in the list already covers. */
function minimal(subjects: string[]): string[] {
  return subjects.filter((s, i) => !subjects.some((o, j) => j !== i && o !== s && filterCovers(o, s)));
}

/** True when some subject matches both filters (`*` one token, `>` one or more trailing tokens). */
export function subjectsOverlap(a: string, b: string): boolean {
  const ta = a.split('.');
  const tb = b.split('.');
  for (let i = 0; ; i++) {
    const x = ta[i];
    const y = tb[i];
    if (x === undefined || y === undefined) return x === undefined && y === undefined;
    if (x === '>' || y === '>') return true;
    if (x !== '*' && y !== '*' && x !== y) return false;
  }
}

/** The stream capturing `subject`, or null. */
export async function findStream(jsm: JetStreamManager, subject: string): Promise<string | null> {
  try {
    return await jsm.streams.find(subject);
  } catch (err) {
    if (isStreamNotFound(err)) return null;
    throw err;
  }
}

/** JetStream's "stream not found" (10059), which is also what a subject no stream captures gets. */
function isStreamNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;
}

async function streamInfo(jsm: JetStreamManager, name: string): Promise<StreamInfo | null> {
  try {
    return await jsm.streams.info(name);
  } catch (err) {
    if (isStreamNotFound(err)) return null;
    throw err;
  }
}

/**
 * The subjects the relay's own stream must capture: the required ones, plus each subscribed
 * subject no stream captures yet (a subscription attaches to whichever stream captures its subject).
 */
async function subjectsToCapture(jsm: JetStreamManager, config: Config, requiredSubjects: readonly string[]): Promise<string[]> {
  const required = [...requiredSubjects];
  for (const sub of config.observers.subscribe) {
    if (required.some((r) => filterCovers(r, sub.subject))) continue;
    if ((await findStream(jsm, sub.subject)) === null) required.push(sub.subject);
  }
  return required;
}

/** Whether the server runs JetStream in a cluster, where a stream may have more than one replica. */
function isClustered(nc: NatsConnection, info: StreamInfo | null): boolean {
  return info?.cluster?.name !== undefined || (nc.info?.cluster ?? '') !== '';
}

/** The server for messages: its name and version (never its URL, which may carry credentials). */
function serverName(nc: NatsConnection): string {
  const i = nc.info;
  return i ? `nats-server ${i.version} (${i.server_name})` : 'the NATS server';
}

const storageOf = (cfg: StreamConfig) => (cfg.storage === 'memory' ? StorageType.Memory : StorageType.File);

/** "file storage, 1 replica, duplicate window 10m" */
function describeStream(storage: string, replicas: number, windowMs: number, maxAgeMs = 0): string {
  return (
    `${storage} storage, ${replicas} replica${replicas === 1 ? '' : 's'}, duplicate window ${formatDuration(windowMs)}` +
    (maxAgeMs > 0 ? `, max_age ${formatDuration(maxAgeMs)}` : '')
  );
}

/** replicas > 1 on a server that is not part of a JetStream cluster. */
function replicasProblem(cfg: StreamConfig, server: string, answer?: string): string {
  return (
    `[relay.stream] replicas = ${cfg.replicas}, but ${server} runs JetStream on its own, not in a cluster, and a stream there has ` +
    `exactly one copy: ` +
    (answer !== undefined
      ? `it answered "${answer}" when asked to create stream ${cfg.name}. `
      : `it refuses to create a stream with more ("replicas > 1 not supported in non-clustered mode"), and accepts an update of ` +
        `stream ${cfg.name} to ${cfg.replicas} replicas while still keeping one. `) +
    `Set replicas = 1, or run a JetStream cluster of at least ${cfg.replicas} servers.`
  );
}

function storageProblem(info: StreamInfo, cfg: StreamConfig): string {
  const have = info.config.storage;
  const n = info.state.messages;
  return (
    `stream ${cfg.name} keeps its messages in ${have} storage, but [relay.stream] storage = "${cfg.storage}", and JetStream cannot ` +
    `change a stream's storage in place. Either set storage = "${have}", or recreate the stream: stop every relay that publishes ` +
    `to it, remove it (nats stream rm ${cfg.name}: this deletes its ${n} message${n === 1 ? '' : 's'} and its durable consumers), start ` +
    `the relay (it creates the stream with storage = "${cfg.storage}" and the consumers again; they start from the new stream's ` +
    `first message, and the inbox keeps a handler from running twice for an event it already processed), then re-publish what ` +
    `the outbox still retains with \`fraiseql-relay replay --since <time>\`.` +
    (cfg.storage === 'memory' ? ' A memory stream loses every message when the server restarts.' : '')
  );
}

function maxAgeProblem(info: StreamInfo, cfg: StreamConfig): string {
  const maxAge = formatDuration(Math.round(info.config.max_age / 1e6));
  return (
    `[relay.stream] duplicate_window = "${formatDuration(cfg.duplicate_window)}" is longer than stream ${cfg.name}'s max_age ` +
    `(${maxAge}), and JetStream requires duplicate_window <= max_age ("duplicates window can not be larger then max age"). ` +
    `Lower duplicate_window to at most "${maxAge}", or raise the stream's max_age (nats stream edit ${cfg.name} --max-age …).`
  );
}

interface StreamComparison {
  /** differences that cannot be applied: what differs and how to fix it */
  problems: string[];
  /** what an update changes (storage never: JetStream cannot) */
  update: Partial<Pick<StreamUpdateConfig, 'num_replicas' | 'duplicate_window'>>;
  /** the update, for people: "replicas 1 → 3" */
  changes: string[];
}

/**
 * How the existing stream differs from `[relay.stream]` in storage, replicas and duplicate
 * window, and which differences an update can apply (replicas in a cluster, the window).
 */
function compareStream(info: StreamInfo, cfg: StreamConfig, clustered: boolean, server: string): StreamComparison {
  const out: StreamComparison = { problems: [], update: {}, changes: [] };
  if (info.config.storage !== storageOf(cfg)) out.problems.push(storageProblem(info, cfg));
  if (cfg.replicas > 1 && !clustered) out.problems.push(replicasProblem(cfg, server));
  else if (info.config.num_replicas !== cfg.replicas) {
    out.update.num_replicas = cfg.replicas;
    out.changes.push(`replicas ${info.config.num_replicas} → ${cfg.replicas}`);
  }
  const window = nanos(cfg.duplicate_window);
  if (info.config.duplicate_window !== window) {
    if (info.config.max_age > 0 && window > info.config.max_age) out.problems.push(maxAgeProblem(info, cfg));
    else {
      out.update.duplicate_window = window;
      out.changes.push(
        `duplicate window ${formatDuration(Math.round(info.config.duplicate_window / 1e6))} → ${formatDuration(cfg.duplicate_window)}`,
      );
    }
  }
  return out;
}

/** Other streams whose subjects overlap `subjects`, said with what to do; null when there are none. */
async function overlapProblem(jsm: JetStreamManager, cfg: StreamConfig, subjects: readonly string[]): Promise<string | null> {
  const others: string[] = [];
  let first: string | null = null;
  try {
    for await (const si of jsm.streams.list()) {
      if (si.config.name === cfg.name) continue;
      const theirs = si.config.subjects ?? [];
      const hits = theirs.filter((t) => subjects.some((s) => subjectsOverlap(s, t)));
      if (hits.length === 0) continue;
      first ??= si.config.name;
      const ours = subjects.filter((s) => theirs.some((t) => subjectsOverlap(s, t)));
      others.push(
        `stream ${si.config.name} captures ${hits.join(', ')} (its subjects: ${theirs.join(', ')}), which overlaps ${ours.join(', ')}`,
      );
    }
  } catch {
    return null; // no permission to list streams: the server's answer stands alone
  }
  if (first === null) return null;
  return (
    `stream ${cfg.name} cannot capture ${subjects.join(', ')}: JetStream lets a subject belong to one stream only, and\n` +
    others.map((o) => `    ${o}\n`).join('') +
    `  What to do: if ${first} is where these events belong, set [relay.stream] name = "${first}" (the relay then adds its ` +
    `subjects to that stream) or create = false (the relay then publishes into whichever stream captures each subject and ` +
    `changes none); otherwise remove the overlapping subjects from [relay.stream] subjects or the publish entries, or from ` +
    `stream ${first} (nats stream edit ${first} --subjects …).`
  );
}

/** A JetStream refusal to create or update the relay's stream, explained (a UsageError when the configuration must change). */
async function explainRefusal(
  err: unknown,
  jsm: JetStreamManager,
  nc: NatsConnection,
  cfg: StreamConfig,
  subjects: readonly string[],
  creating: boolean,
): Promise<unknown> {
  if (!(err instanceof JetStreamApiError)) return err;
  const answer = `${err.message} (JetStream error ${err.code})`;
  const server = serverName(nc);
  switch (err.code) {
    case API.replicasNotSupported:
      return new UsageError(replicasProblem(cfg, server, answer), { cause: err });
    case API.noSuitablePeers:
    case API.insufficientResources:
      return new UsageError(
        `JetStream could not place stream ${cfg.name} with replicas = ${cfg.replicas} and ${cfg.storage} storage: ${server} answered ` +
          `"${answer}": the cluster has fewer JetStream servers with room for it than replicas. Lower [relay.stream] replicas, ` +
          `or add JetStream servers (with ${cfg.storage} storage available) to the cluster.`,
        { cause: err },
      );
    case API.subjectsOverlap: {
      const why = await overlapProblem(jsm, cfg, subjects);
      return new UsageError(why ?? `stream ${cfg.name} cannot capture ${subjects.join(', ')}: ${server} answered "${answer}"`, {
        cause: err,
      });
    }
    case API.invalidConfig:
      return new UsageError(
        `JetStream refused to ${creating ? 'create' : 'update'} stream ${cfg.name} (${describeStream(cfg.storage, cfg.replicas, cfg.duplicate_window)}, ` +
          `subjects ${subjects.join(', ')}): ${server} answered "${answer}". Change [relay.stream] accordingly, or the stream on the server.`,
        { cause: err },
      );
    default:
      return err;
  }
}

/**
 * `[relay.stream] create = true`: creates the stream with the configured storage, replicas and
 * duplicate window, or updates it so it captures every required subject with the configured
 * replicas and duplicate window. What cannot be applied (another storage, replicas on a server
 * without a cluster, a window longer than the stream's max_age, subjects another stream captures)
 * is a UsageError saying what differs and how to fix it, and changes nothing.
 * `create = false`: every required subject must already be captured by some stream, else a
 * UsageError names it; the stream is not changed (differences are logged as warnings).
 * Returns the subjects of the relay's stream as known now.
 */
export async function ensureStream(
  nc: NatsConnection,
  config: Config,
  requiredSubjects: readonly string[],
  log: Logger,
): Promise<string[]> {
  const jsm = await jetstreamManager(nc);
  const cfg = config.relay.stream;
  const required = await subjectsToCapture(jsm, config, requiredSubjects);
  if (!cfg.create) {
    const missing: string[] = [];
    for (const subject of required) {
      if ((await findStream(jsm, subject)) === null) missing.push(subject);
    }
    if (missing.length > 0) {
      throw new UsageError(
        `[relay.stream] create = false, but no JetStream stream captures subject${missing.length > 1 ? 's' : ''} ${missing.join(', ')}.\n` +
          `  Create a stream for ${missing.length > 1 ? 'them' : 'it'} (nats stream add ${cfg.name} --subjects '${missing.join(',')}' --dupe-window ${Math.round(cfg.duplicate_window / 1000)}s), ` +
          `or set [relay.stream] create = true to let the relay manage stream ${cfg.name}.`,
      );
    }
    const info = await streamInfo(jsm, cfg.name).catch(() => null);
    if (!info) return [];
    const diff = compareStream(info, cfg, isClustered(nc, info), serverName(nc));
    if (diff.problems.length > 0 || diff.changes.length > 0) {
      log.warn(
        { stream: cfg.name, differs: [...diff.changes, ...diff.problems] },
        '[relay.stream] create = false: the stream differs from [relay.stream] storage/replicas/duplicate_window, which are not applied',
      );
    }
    return info.config.subjects ?? [];
  }
  if (required.length === 0) {
    log.warn({ stream: cfg.name }, 'no [[observers.publish]] subjects and no [relay.stream] subjects: not creating a stream');
    return [];
  }
  let info = await streamInfo(jsm, cfg.name);
  const clustered = isClustered(nc, info);
  if (!info) {
    const subjects = minimal(required);
    // refused before asking: nats-server answers an update of a standalone stream to more replicas with a success
    if (cfg.replicas > 1 && !clustered) throw new UsageError(replicasProblem(cfg, serverName(nc)));
    try {
      info = await jsm.streams.add({
        name: cfg.name,
        subjects,
        duplicate_window: nanos(cfg.duplicate_window),
        storage: storageOf(cfg),
        num_replicas: cfg.replicas,
      });
    } catch (err) {
      throw await explainRefusal(err, jsm, nc, cfg, subjects, true);
    }
    log.info({ stream: cfg.name, subjects, storage: cfg.storage, replicas: cfg.replicas }, 'created JetStream stream');
    return info.config.subjects ?? subjects;
  }
  const diff = compareStream(info, cfg, clustered, serverName(nc));
  if (diff.problems.length > 0) throw new UsageError(diff.problems.join('\n'));
  const have = info.config.subjects ?? [];
  const missing = required.filter((s) => !have.some((h) => filterCovers(h, s)));
  if (missing.length > 0 || diff.changes.length > 0) {
    const subjects = minimal([...have, ...missing]);
    try {
      info = await jsm.streams.update(cfg.name, { subjects, ...diff.update });
    } catch (err) {
      throw await explainRefusal(err, jsm, nc, cfg, missing.length > 0 ? missing : subjects, false);
    }
    // a changed setting is worth a warning: replicas may have gone down to what the configuration says
    if (diff.changes.length > 0)
      log.warn({ stream: cfg.name, changes: diff.changes, added: missing }, 'updated JetStream stream to match [relay.stream]');
    else log.info({ stream: cfg.name, subjects, added: missing }, 'updated JetStream stream');
  }
  return info.config.subjects ?? have;
}

/** One line of `check`. */
export interface StreamProbe {
  what: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
}

/**
 * What `run` would find and do with the relay's stream, for `check` (changes nothing): FAIL for
 * what it would refuse (another storage, replicas without a cluster, a window over max_age,
 * subjects another stream captures), warn for what it would change or (create = false) leave.
 */
export async function probeStream(
  nc: NatsConnection,
  jsm: JetStreamManager,
  config: Config,
  requiredSubjects: readonly string[],
): Promise<StreamProbe[]> {
  const cfg = config.relay.stream;
  const what = `stream ${cfg.name}`;
  const info = await streamInfo(jsm, cfg.name);
  const clustered = isClustered(nc, info);
  const server = serverName(nc);
  if (info) {
    const diff = compareStream(info, cfg, clustered, server);
    const now = describeStream(
      info.config.storage,
      info.config.num_replicas,
      Math.round(info.config.duplicate_window / 1e6),
      Math.round(info.config.max_age / 1e6),
    );
    if (!cfg.create) {
      return diff.problems.length > 0 || diff.changes.length > 0
        ? [
            {
              what,
              status: 'warn',
              detail: `${now}; differs from [relay.stream] (${[...diff.changes, ...diff.problems].join(' ')}), which create = false does not apply`,
            },
          ]
        : [{ what, status: 'ok', detail: now }];
    }
    const out: StreamProbe[] = diff.problems.map((p) => ({ what, status: 'fail', detail: p }));
    const required = await subjectsToCapture(jsm, config, requiredSubjects);
    const have = info.config.subjects ?? [];
    const missing = required.filter((s) => !have.some((h) => filterCovers(h, s)));
    const overlap = missing.length > 0 ? await overlapProblem(jsm, cfg, missing) : null;
    if (overlap) out.push({ what, status: 'fail', detail: overlap });
    if (out.length > 0) return out;
    return diff.changes.length > 0
      ? [{ what, status: 'warn', detail: `${now}; run will update it: ${diff.changes.join(', ')}` }]
      : [{ what, status: 'ok', detail: now }];
  }
  const required = await subjectsToCapture(jsm, config, requiredSubjects);
  if (!cfg.create || required.length === 0) return [];
  const out: StreamProbe[] = [];
  if (cfg.replicas > 1 && !clustered) out.push({ what, status: 'fail', detail: replicasProblem(cfg, server) });
  const overlap = await overlapProblem(jsm, cfg, minimal(required));
  if (overlap) out.push({ what, status: 'fail', detail: overlap });
  if (out.length > 0) return out;
  return [
    {
      what,
      status: 'warn',
      detail: `does not exist yet; run creates it (${describeStream(cfg.storage, cfg.replicas, cfg.duplicate_window)})`,
    },
  ];
}

import { JetStreamApiCodes, JetStreamApiError, jetstreamManager, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { nanos, type NatsConnection } from '@nats-io/transport-node';
import type { Config } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { UsageError } from '../util/errors.js';
import { filterCovers } from './subjects.js';

/** Drops subjects another one in the list already covers. */
function minimal(subjects: string[]): string[] {
  return subjects.filter((s, i) => !subjects.some((o, j) => j !== i && o !== s && filterCovers(o, s)));
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

/**
 * `[relay.stream] create = true`: creates the stream, or updates it so it captures every
 * required subject with the configured duplicate window. `create = false`: every required
 * subject must already be captured by some stream, else a UsageError names it.
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
  const required = [...requiredSubjects];
  // a subscription attaches to whichever stream captures its subject; one no stream captures
  // yet is added to the relay's own stream (create = true) or is an error (create = false)
  for (const sub of config.observers.subscribe) {
    if (required.some((r) => filterCovers(r, sub.subject))) continue;
    if ((await findStream(jsm, sub.subject)) === null) required.push(sub.subject);
  }
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
    try {
      return (await jsm.streams.info(cfg.name)).config.subjects ?? [];
    } catch {
      return [];
    }
  }
  if (required.length === 0) {
    log.warn({ stream: cfg.name }, 'no [[observers.publish]] subjects and no [relay.stream] subjects: not creating a stream');
    return [];
  }
  const window = nanos(cfg.duplicate_window);
  let info: StreamInfo | null = null;
  try {
    info = await jsm.streams.info(cfg.name);
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  if (!info) {
    const subjects = minimal(required);
    info = await jsm.streams.add({ name: cfg.name, subjects, duplicate_window: window });
    log.info({ stream: cfg.name, subjects }, 'created JetStream stream');
    return info.config.subjects ?? subjects;
  }
  const have = info.config.subjects ?? [];
  const missing = required.filter((s) => !have.some((h) => filterCovers(h, s)));
  if (missing.length > 0 || info.config.duplicate_window !== window) {
    const subjects = minimal([...have, ...missing]);
    info = await jsm.streams.update(cfg.name, { subjects, duplicate_window: window });
    log.info({ stream: cfg.name, subjects, added: missing }, 'updated JetStream stream');
  }
  return info.config.subjects ?? have;
}

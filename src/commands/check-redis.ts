/** `check` with backend = "redis": the server, its version, its persistence, the stream keys. */
import type { Config } from '../config/load.js';
import { createLogger } from '../util/log.js';
import { errorMessage } from '../util/errors.js';
import { requiredSubjects } from '../route/targets.js';
import { closeRedis, connectRedis, type RedisLink } from '../sink/redis-client.js';
import { streamKey } from '../sink/redis.js';

interface Probe {
  what: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
}

/** XAUTOCLAIM (claiming the entries of a dead reader) came with Redis 6.2. */
const MIN_VERSION = [6, 2];

/** CONFIG GET name: its value, or null when the server does not allow CONFIG (a managed Redis may not). */
async function configValue(redis: RedisLink, name: string): Promise<string | null> {
  try {
    const r = await redis.sendCommand<string[]>(['CONFIG', 'GET', name]);
    return r[1] ?? null;
  } catch {
    return null;
  }
}

/**
 * What an acknowledged append means on this server. appendonly no: nothing is written to disk
 * (RDB snapshots aside), so a restart loses what the relay confirmed in the slot: warn.
 */
function persistenceProbe(appendonly: string | null, appendfsync: string | null): Probe {
  if (appendonly === null) {
    return {
      what: 'redis persistence',
      status: 'warn',
      detail:
        'cannot read appendonly (CONFIG GET refused): make sure the server runs with appendonly yes and appendfsync always, ' +
        'or an append the relay confirmed can be lost when Redis restarts',
    };
  }
  if (appendonly !== 'yes') {
    return {
      what: 'redis persistence',
      status: 'warn',
      detail:
        'persistence is off (appendonly no): Redis answers appends from memory, and what it held is lost when it restarts, ' +
        'after the relay confirmed it in the slot; set appendonly yes and appendfsync always (README: Redis durability)',
    };
  }
  if (appendfsync === 'always') {
    return { what: 'redis persistence', status: 'ok', detail: 'appendonly yes, appendfsync always: an acknowledged append is on disk' };
  }
  return {
    what: 'redis persistence',
    status: 'warn',
    detail:
      `appendonly yes, appendfsync ${appendfsync ?? '?'}: an acknowledged append survives a Redis crash but not a crash of its host ` +
      `(the last ${appendfsync === 'everysec' ? 'second' : 'seconds the kernel held'} of appends); appendfsync always closes that gap`,
  };
}

export async function probeRedis(config: Config): Promise<Probe[]> {
  const url = config.observers.redis_url;
  if (!url) return [{ what: 'redis', status: 'fail', detail: '[observers] redis_url is not set' }];
  let redis: RedisLink;
  try {
    redis = await connectRedis({ url, log: createLogger('silent'), name: 'fraiseql-relay-check', once: true });
  } catch (err) {
    return [{ what: 'redis', status: 'fail', detail: `cannot connect ([observers] redis_url): ${errorMessage(err)}` }];
  }
  const out: Probe[] = [];
  try {
    const info = await redis.sendCommand<string>(['INFO', 'server']);
    const version = /redis_version:([\d.]+)/.exec(info)?.[1] ?? '?';
    const [major = 0, minor = 0] = version.split('.').map(Number);
    const old = major < MIN_VERSION[0]! || (major === MIN_VERSION[0] && minor < MIN_VERSION[1]!);
    out.push(
      old
        ? { what: 'redis', status: 'fail', detail: `server ${version}: backend = "redis" needs Redis 6.2 or later (XAUTOCLAIM)` }
        : { what: 'redis', status: 'ok', detail: `connected, server ${version}` },
    );
    out.push(persistenceProbe(await configValue(redis, 'appendonly'), await configValue(redis, 'appendfsync')));
    const keys = [...new Set([...requiredSubjects(config), ...config.observers.subscribe.map((s) => s.subject)])]
      .filter((s) => !/[*>]/.test(s))
      .map((s) => streamKey(config.relay.redis, s));
    for (const key of keys) {
      const type = await redis.sendCommand<string>(['TYPE', key]);
      if (type !== 'stream' && type !== 'none') {
        out.push({
          what: 'redis stream',
          status: 'fail',
          detail: `key ${JSON.stringify(key)} holds a ${type}, not a stream: nothing can be appended to it`,
        });
      }
    }
    if (keys.length > 0 && !out.some((p) => p.what === 'redis stream')) {
      out.push({
        what: 'redis streams',
        status: 'ok',
        detail: `${keys.map((k) => JSON.stringify(k)).join(', ')}: streams or not created yet`,
      });
    }
  } catch (err) {
    out.push({ what: 'redis', status: 'fail', detail: errorMessage(err) });
  } finally {
    closeRedis(redis);
  }
  return out;
}

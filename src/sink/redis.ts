/**
 * backend = "redis", outbound: each subject is a Redis Stream (key `<stream_prefix><subject>`), and
 * each message is appended by one server-side script that de-duplicates it by its event id, like
 * JetStream's `Nats-Msg-Id`:
 *
 *   EVALSHA <append> 2 <prefix>dedup:<event id>:<subject> <prefix><subject> <window ms> <trim> <threshold> body <json> <header> <value>…
 *
 * The script appends (XADD, trimmed by an approximate MAXLEN or MINID when configured) only when
 * the de-duplication key does not exist, then sets it with the window as its expiry; it answers
 * the new entry's id, or nil for a re-send it already holds. One command per message, pipelined
 * on one connection: Redis runs them in the order they were sent, so the stream keeps commit order.
 */
import { createHash } from 'node:crypto';
import type { RedisConfig } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { errorMessage } from '../util/errors.js';
import type { OutboundMessage, Sink } from './sink.js';
import { quotedName, UndeliverableError } from './limits.js';
import { SIGNATURE_HEADER, type MessageKeys } from './signing.js';
import { redisErrorCode, type RedisLink } from './redis-client.js';

/** The entry's field holding the event's JSON body; every other field is a header. */
export const BODY_FIELD = 'body';

/** At most this many headers per message (each is two script arguments; Lua's stack is bounded). */
const MAX_HEADERS = 1000;

/** The append script (KEYS: de-duplication key, stream key; ARGV: window ms, trim kind, threshold, fields…). */
const APPEND_SCRIPT = `if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local args = { 'XADD', KEYS[2] }
if ARGV[2] ~= '' then
  args[#args + 1] = ARGV[2]
  args[#args + 1] = '~'
  args[#args + 1] = ARGV[3]
end
args[#args + 1] = '*'
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call(unpack(args))
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return id`;

const APPEND_SHA = createHash('sha1').update(APPEND_SCRIPT).digest('hex');

/** The stream key of a subject. */
export function streamKey(config: RedisConfig, subject: string): string {
  return config.stream_prefix + subject;
}

/** The de-duplication key of a message: `<stream_prefix>dedup:<event id>:<subject>`. */
function dedupKey(config: RedisConfig, eventId: string, subject: string): string {
  return `${config.stream_prefix}dedup:${eventId}:${subject}`;
}

/** Loads the append script into the server's script cache (EVALSHA finds it from then on). */
export async function loadAppendScript(redis: RedisLink): Promise<void> {
  const sha = await redis.sendCommand<string>(['SCRIPT', 'LOAD', APPEND_SCRIPT]);
  if (sha !== APPEND_SHA) throw new Error(`Redis answered SCRIPT LOAD with ${sha}, expected ${APPEND_SHA}`);
}

export interface RedisSinkOptions {
  maxInFlight: number;
  maxInFlightBytes: number;
  /** no answer within this long ends the session */
  timeoutMs: number;
  redis: RedisConfig;
  log: Logger;
  /** `[relay] signing_key_env`: every entry gets a `Fraiseql-Signature` field */
  keys?: MessageKeys | null;
}

interface Pending {
  done: (err?: Error, duplicate?: boolean) => void;
  sentAt: number;
  subject: string;
  bytes: number;
}

/**
 * Appends to Redis Streams with many commands outstanding, bounded in count and bytes. A message is
 * done when Redis answered its script: appended, or already held (`duplicate`). Knows nothing of
 * LSNs: the session confirms the slot once every message of a transaction is done.
 */
export class RedisSink implements Sink {
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private inFlightBytes = 0;
  private capacityWaiters: (() => void)[] = [];
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly redis: RedisLink,
    private readonly opts: RedisSinkOptions,
  ) {
    this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.floor(opts.timeoutMs / 4)));
    this.sweeper.unref();
  }

  get messagesInFlight(): number {
    return this.pending.size;
  }

  get bytesInFlight(): number {
    return this.inFlightBytes;
  }

  get hasCapacity(): boolean {
    return this.pending.size < this.opts.maxInFlight && this.inFlightBytes < this.opts.maxInFlightBytes;
  }

  waitForCapacity(): Promise<void> {
    if (this.hasCapacity) return Promise.resolve();
    return new Promise((r) => this.capacityWaiters.push(r));
  }

  /** A header that would collide with the body's field, or too many headers: never sendable. */
  check(msg: OutboundMessage): string | null {
    if (msg.refused !== undefined) return msg.refused;
    let n = 0;
    for (const k in msg.headers) {
      if (k === BODY_FIELD) return `header ${quotedName(k)} is reserved: the Redis entry's "${BODY_FIELD}" field holds the event`;
      n++;
    }
    if (n > MAX_HEADERS) return `${n} headers: a Redis entry of the relay carries at most ${MAX_HEADERS}`;
    if (msg.subject.length === 0) return 'an empty subject names no Redis stream';
    return null;
  }

  publish(msg: OutboundMessage, done: (err?: Error, duplicate?: boolean) => void): void {
    const r = this.opts.redis;
    const trim =
      r.max_len !== undefined
        ? ['MAXLEN', String(r.max_len)]
        : r.max_age !== undefined
          ? ['MINID', String(Date.now() - r.max_age)]
          : ['', ''];
    const args: (string | Buffer)[] = [
      'EVALSHA',
      APPEND_SHA,
      '2',
      dedupKey(r, msg.eventId, msg.subject),
      streamKey(r, msg.subject),
      String(r.duplicate_window),
      trim[0]!,
      trim[1]!,
      BODY_FIELD,
      msg.body,
    ];
    let bytes = msg.body.length;
    const h = msg.headers;
    const keys = this.opts.keys;
    for (const k in h) {
      if (keys && k === SIGNATURE_HEADER) continue; // the relay signs
      const v = h[k]!;
      args.push(k, v);
      bytes += k.length + v.length;
    }
    if (keys) {
      const id = h['Fraiseql-Event-Id'];
      args.push(SIGNATURE_HEADER, keys.sign(id === undefined ? msg.eventId : id.trim(), msg.subject, msg.body));
    }
    const n = ++this.seq;
    this.pending.set(n, { done, sentAt: Date.now(), subject: msg.subject, bytes });
    this.inFlightBytes += bytes;
    this.redis.sendCommand<string | null>(args).then(
      (reply) => this.finish(n, undefined, reply === null),
      (err: unknown) => this.finish(n, err instanceof Error ? err : new Error(String(err))),
    );
  }

  /** The session using this sink is over: stop timing its messages out (their answers still settle them). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
  }

  private finish(n: number, err: Error | undefined, duplicate?: boolean): void {
    const p = this.pending.get(n);
    if (!p) return; // timed out already
    this.pending.delete(n);
    this.inFlightBytes -= p.bytes;
    if (err === undefined) p.done(undefined, duplicate === true);
    else p.done(this.classify(err, p.subject));
    if (this.capacityWaiters.length > 0 && this.hasCapacity) {
      const w = this.capacityWaiters;
      this.capacityWaiters = [];
      for (const r of w) r();
    }
  }

  /**
   * An error the message will meet on every retry (its stream key holds another type) becomes an
   * UndeliverableError, which the session dead-letters; any other (the connection, OOM, LOADING,
   * READONLY, a script missing after a restart or SCRIPT FLUSH) ends the session, which re-reads in
   * order. A missing script is loaded again first: the next session finds it. It is not run with
   * EVAL at once, as a client library would: the commands pipelined behind this one would then be
   * appended before it, out of commit order.
   */
  private classify(err: Error, subject: string): Error {
    const code = redisErrorCode(err);
    if (code === 'WRONGTYPE') {
      return new UndeliverableError(
        `Redis key ${JSON.stringify(streamKey(this.opts.redis, subject))} holds a value that is not a stream ` +
          `(or its de-duplication key is not a string): ${errorMessage(err)}`,
        { cause: err },
      );
    }
    if (code === 'NOSCRIPT' && !this.closed) {
      this.opts.log.warn('the append script is missing from Redis (restarted, or SCRIPT FLUSH): loading it again');
      loadAppendScript(this.redis).catch(() => {});
    }
    return err;
  }

  private sweep(): void {
    const limit = Date.now() - this.opts.timeoutMs;
    for (const [n, p] of this.pending) {
      if (p.sentAt > limit) break; // insertion order = send order
      this.finish(n, new Error(`timeout: Redis did not answer the append to ${p.subject} within ${this.opts.timeoutMs} ms`));
    }
  }
}

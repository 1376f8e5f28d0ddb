/**
 * Webhook delivery: one HTTP request per event, signed by the Standard
 * Webhooks scheme (https://www.standardwebhooks.com), retried with full-jitter backoff on
 * transient failures, never retried on permanent ones.
 *
 * Outcomes:
 * - 2xx: delivered.
 * - 408, 429, 5xx, network errors and timeouts: transient, retried (`Retry-After` honoured
 *   on 429 and 503).
 * - any other 4xx, and 3xx (redirects are not followed: the signed request and its headers
 *   must not travel to another place than the one configured): permanent, dead-lettered.
 *
 * Error strings name the method, host and path and the status, nothing else: a webhook URL's
 * credentials and query string, and the signing secret, never appear in them.
 */
import { createHmac } from 'node:crypto';
import { setTimeout as sleepMs } from 'node:timers/promises';
import type { RuleAction } from '../config/types.js';
import { UsageError } from '../util/errors.js';

export interface WebhookTarget {
  /** http(s) URL; may carry credentials (sent as Basic authorization) and a query string */
  url: string;
  /** upper case */
  method: string;
  headers: Record<string, string>;
  timeoutMs: number;
  maxAttempts: number;
  /** HMAC-SHA256 key for `webhook-signature`; no signature when absent */
  secret?: Buffer;
}

/** What became of one event's webhook delivery (a retry is followed by another outcome). */
export type WebhookOutcome = 'delivered' | 'retried' | 'dead_lettered';

export type DeliveryResult =
  { ok: true; status: number } | { ok: false; permanent: boolean; status?: number; retryAfterMs?: number; error: string };

const SECRET_PREFIX = 'whsec_';
/** Backoff base and cap, and the cap on a server's Retry-After. */
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 60_000;
const RETRY_AFTER_CAP_MS = 10 * 60_000;
/** At most this much of a response body is read (to reuse the connection); the rest is dropped. */
const DRAIN_LIMIT = 64 * 1024;

/**
 * Resolves a configured action against the environment. Throws a {@link UsageError} naming the
 * variable when `url_env` or `signing_secret_env` names an unset or empty variable, and when the
 * URL or secret is unusable; never quotes the URL or the secret.
 */
export function resolveWebhookTarget(a: RuleAction, env: NodeJS.ProcessEnv): WebhookTarget {
  let url: string;
  let from: string;
  if (a.url !== undefined && a.url !== '') {
    url = a.url;
    from = 'the webhook url';
  } else if (a.url_env !== undefined && a.url_env !== '') {
    const v = env[a.url_env];
    if (v === undefined || v.trim() === '') {
      throw new UsageError(`environment variable ${a.url_env} (the webhook's url_env) is not set or empty`);
    }
    url = v.trim();
    from = `the webhook URL in ${a.url_env}`;
  } else {
    throw new UsageError('a webhook action needs url or url_env');
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`${from} is not a valid URL`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new UsageError(`${from} must be an http:// or https:// URL`);
  }

  const method = (a.method || 'POST').toUpperCase();
  if (!/^[A-Z]+$/.test(method)) throw new UsageError(`webhook method "${method}" is not an HTTP method`);
  if (method === 'GET' || method === 'HEAD') {
    throw new UsageError(`webhook method ${method} cannot carry the event body; use POST or PUT`);
  }

  const target: WebhookTarget = {
    url,
    method,
    headers: { ...a.headers },
    timeoutMs: a.timeout > 0 ? a.timeout : 30_000,
    maxAttempts: Math.max(1, Math.floor(a.max_attempts) || 1),
  };

  if (a.signing_secret_env !== undefined) {
    const name = a.signing_secret_env;
    const raw = env[name];
    if (raw === undefined || raw === '') {
      throw new UsageError(`environment variable ${name} (the webhook's signing_secret_env) is not set or empty`);
    }
    target.secret = decodeSecret(raw, name);
  }
  return target;
}

/** `whsec_<base64>` → the decoded bytes (Standard Webhooks); anything else → its UTF-8 bytes. */
function decodeSecret(raw: string, name: string): Buffer {
  if (!raw.startsWith(SECRET_PREFIX)) return Buffer.from(raw, 'utf8');
  const b64 = raw.slice(SECRET_PREFIX.length).trim();
  // Buffer.from(…, 'base64') skips garbage silently: check the alphabet first
  if (b64 === '' || !/^[A-Za-z0-9+/_-]+={0,2}$/.test(b64)) {
    throw new UsageError(`environment variable ${name} starts with "whsec_" but the rest is not base64`);
  }
  const key = Buffer.from(b64, 'base64');
  if (key.length === 0) {
    throw new UsageError(`environment variable ${name} starts with "whsec_" but the rest is not base64`);
  }
  return key;
}

/**
 * The Standard Webhooks signature of one request: `v1,<base64 HMAC-SHA256>` over
 * `${msgId}.${timestampSec}.${body}` (the body's raw bytes).
 */
export function signStandardWebhook(secret: Buffer, msgId: string, timestampSec: number, body: Buffer): string {
  const mac = createHmac('sha256', secret).update(`${msgId}.${timestampSec}.`, 'utf8').update(body).digest('base64');
  return `v1,${mac}`;
}

/**
 * How long to wait before the attempt after attempt number `attempt` (1 = the first attempt
 * failed): full jitter, a random delay in [0, min(60 s, 500 ms · 2^attempt)], but never less
 * than the result's Retry-After (itself capped at 10 minutes).
 */
export function retryDelayMs(attempt: number, result: DeliveryResult): number {
  const n = Math.max(0, Math.min(Math.floor(attempt) || 0, 30));
  const cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** n);
  const jitter = Math.floor(Math.random() * (cap + 1));
  const retryAfter = result.ok ? undefined : result.retryAfterMs;
  if (retryAfter === undefined || !(retryAfter > 0)) return jitter;
  return Math.max(jitter, Math.min(Math.ceil(retryAfter), RETRY_AFTER_CAP_MS));
}

/** `Retry-After`: delay-seconds or an HTTP date, in ms from `nowMs`; undefined when unusable. */
function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Math.min(Number(v) * 1000, RETRY_AFTER_CAP_MS);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(0, at - nowMs), RETRY_AFTER_CAP_MS);
}

/** Strips a URL's credentials into a Basic authorization value; the URL object is modified. */
function takeCredentials(u: URL): string | undefined {
  if (u.username === '' && u.password === '') return undefined;
  const dec = (s: string): string => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  const basic = Buffer.from(`${dec(u.username)}:${dec(u.password)}`, 'utf8').toString('base64');
  u.username = '';
  u.password = '';
  return `Basic ${basic}`;
}

/** Removes anything secret that a lower layer may have echoed into an error message. */
function scrubber(t: WebhookTarget, u: URL | undefined): (s: string) => string {
  const secrets: string[] = [t.url];
  if (u) {
    if (u.password) secrets.push(u.password, decodeSafe(u.password));
    if (u.username) secrets.push(u.username, decodeSafe(u.username));
    if (u.search.length > 1) secrets.push(u.search.slice(1), decodeSafe(u.search.slice(1)));
  }
  if (t.secret && t.secret.length > 0) {
    secrets.push(t.secret.toString('base64'));
    const utf8 = t.secret.toString('utf8');
    if (utf8.length >= 4) secrets.push(utf8);
  }
  const list = [...new Set(secrets.filter((s) => s.length > 0))].sort((a, b) => b.length - a.length);
  return (s) => {
    let out = s;
    for (const x of list) out = out.split(x).join('***');
    return out;
  };
}

function decodeSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The message of a fetch failure: undici hides the real reason in `cause` (maybe an AggregateError). */
function networkReason(err: unknown): string {
  let e: unknown = err;
  for (let depth = 0; depth < 5; depth++) {
    const c = (e as { cause?: unknown } | null)?.cause;
    if (c === undefined || c === null) break;
    e = c;
  }
  if (e instanceof AggregateError && e.errors.length > 0) e = e.errors[0];
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    const msg = e.message || (typeof code === 'string' ? code : e.name);
    return typeof code === 'string' && !msg.includes(code) ? `${code}: ${msg}` : msg;
  }
  return String(e);
}

/**
 * One delivery attempt. `extraHeaders` come after the target's headers; the `webhook-*` headers
 * come last and cannot be overridden. `now` (ms, default `Date.now`) gives `webhook-timestamp`
 * and resolves a `Retry-After` date. `signal` aborts the request (reported as transient).
 * Never throws.
 */
export async function deliverOnce(
  t: WebhookTarget,
  msgId: string,
  body: Buffer,
  extraHeaders?: Record<string, string>,
  now: () => number = Date.now,
  signal?: AbortSignal,
): Promise<DeliveryResult> {
  let u: URL | undefined;
  try {
    u = new URL(t.url);
  } catch {
    return { ok: false, permanent: true, error: `${t.method} webhook: the URL is not valid` };
  }
  // `scrub` cleans what lower layers or the server wrote; our own text never holds a secret
  const scrub = scrubber(t, u);
  const where = `${t.method} ${u.host}${u.pathname}`;
  const auth = takeCredentials(u); // the query string stays in the request, never in messages

  const timestamp = Math.floor(now() / 1000);
  const headers = new Headers();
  let current = '';
  try {
    current = 'content-type';
    headers.set('content-type', 'application/json');
    current = 'user-agent';
    headers.set('user-agent', 'fraiseql-relay');
    if (auth !== undefined) {
      current = 'authorization';
      headers.set('authorization', auth);
    }
    for (const [k, v] of Object.entries(t.headers)) {
      current = k;
      headers.set(k, v);
    }
    for (const [k, v] of Object.entries(extraHeaders ?? {})) {
      current = k;
      headers.set(k, v);
    }
    current = 'webhook-id';
    headers.set('webhook-id', msgId);
    headers.set('webhook-timestamp', String(timestamp));
    if (t.secret !== undefined) {
      headers.set('webhook-signature', signStandardWebhook(t.secret, msgId, timestamp, body));
    }
  } catch {
    // the value may be a token: name the header only
    return { ok: false, permanent: true, error: `${where}: header ${JSON.stringify(current)} has an invalid name or value` };
  }

  if (signal?.aborted) return { ok: false, permanent: false, error: `${where}: aborted` };
  const ctl = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ctl.abort();
  }, t.timeoutMs);
  const onAbort = (): void => ctl.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let res: Response;
    try {
      res = await fetch(u, { method: t.method, headers, body, redirect: 'manual', signal: ctl.signal });
    } catch (err) {
      const reason = timedOut ? `timed out after ${t.timeoutMs} ms` : signal?.aborted ? 'aborted' : scrub(networkReason(err));
      return { ok: false, permanent: false, error: `${where}: ${reason}` };
    }
    await drain(res);
    const status = res.status;
    if (status >= 200 && status < 300) return { ok: true, status };
    const reason = res.statusText ? scrub(res.statusText.slice(0, 100)) : '';
    const text = `${where}: HTTP ${status}${reason ? ` ${reason}` : ''}`;
    if (status >= 300 && status < 400) {
      return { ok: false, permanent: true, status, error: `${text} (redirects are not followed)` };
    }
    const transient = status === 408 || status === 429 || status >= 500 || status < 200;
    const result: DeliveryResult = { ok: false, permanent: !transient, status, error: text };
    if (status === 429 || status === 503) {
      const ra = parseRetryAfter(res.headers.get('retry-after'), now());
      if (ra !== undefined) result.retryAfterMs = ra;
    }
    return result;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Reads (and drops) a small response body so the connection can be reused; never throws. */
async function drain(res: Response): Promise<void> {
  const body = res.body;
  if (body === null) return;
  const reader: ReadableStreamDefaultReader<Uint8Array> = body.getReader();
  let seen = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      seen += value?.byteLength ?? 0;
      if (seen > DRAIN_LIMIT) {
        await reader.cancel().catch(() => undefined);
        return;
      }
    }
  } catch {
    // a body cut short (or the timeout) changes nothing: the status is what counts
  }
}

/**
 * Delivers with retries: stops at success, at a permanent failure, after `t.maxAttempts`
 * attempts, or when `signal` aborts (then `delivered` is false). The `webhook-id` is the same
 * on every attempt; the timestamp and signature are fresh.
 */
export async function deliverWithRetries(
  t: WebhookTarget,
  msgId: string,
  body: Buffer,
  opts: {
    signal?: AbortSignal;
    onAttempt?: (n: number, r: DeliveryResult) => void;
    sleep?: (ms: number) => Promise<void>;
  } = {},
): Promise<{ delivered: boolean; attempts: number; last: DeliveryResult }> {
  const { signal, onAttempt } = opts;
  const max = Math.max(1, Math.floor(t.maxAttempts) || 1);
  let last: DeliveryResult = { ok: false, permanent: false, error: 'aborted before the first attempt' };
  let attempts = 0;
  while (attempts < max) {
    if (signal?.aborted) break;
    attempts++;
    last = await deliverOnce(t, msgId, body, undefined, Date.now, signal);
    onAttempt?.(attempts, last);
    if (last.ok) return { delivered: true, attempts, last };
    if (last.permanent || attempts >= max) break;
    const ms = retryDelayMs(attempts, last);
    const slept = await sleepUnlessAborted(ms, signal, opts.sleep);
    if (!slept) break;
  }
  return { delivered: false, attempts, last };
}

/** false when the signal aborted before or during the sleep. */
async function sleepUnlessAborted(
  ms: number,
  signal: AbortSignal | undefined,
  sleep: ((ms: number) => Promise<void>) | undefined,
): Promise<boolean> {
  if (signal?.aborted) return false;
  if (sleep === undefined) {
    try {
      await sleepMs(ms, undefined, signal ? { signal } : undefined);
    } catch {
      return false;
    }
    return !signal?.aborted;
  }
  if (signal === undefined) {
    await sleep(ms);
    return true;
  }
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<void>((resolve) => {
    onAbort = () => resolve();
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    await Promise.race([sleep(ms), aborted]);
  } finally {
    if (onAbort) signal.removeEventListener('abort', onAbort);
  }
  return !signal.aborted;
}

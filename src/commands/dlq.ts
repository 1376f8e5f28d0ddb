import { Republisher } from '../outbound/republish.js';
import { deliverOnce, resolveWebhookTarget } from '../webhook/deliver.js';
import { webhookRoutes } from '../webhook/route.js';
import type { Config } from '../config/load.js';
import { parseDuration } from '../config/load.js';
import type { Logger } from '../util/log.js';
import { quoteIdent, withClient } from '../util/db.js';
import { UsageError, errorMessage } from '../util/errors.js';
import { InboxExecutor } from '../inbound/inbox.js';
import { formatTable } from '../util/table.js';

interface DeadLetterRow {
  id: string;
  direction: 'outbound' | 'inbound' | 'webhook';
  event_id: string | null;
  subject: string | null;
  consumer: string | null;
  handler: string | null;
  headers: Record<string, string> | null;
  body: string;
  /** the original bytes, when `body` had to be altered to be stored */
  body_raw: Buffer | null;
  /** keys stored shortened (event_id, subject, consumer) ▶ their whole value */
  original_keys: Record<string, string> | null;
  error: string;
  attempts: number;
  created_at: Date;
}

const table = (config: Config) => `${quoteIdent(config.relay.schema)}.dead_letter`;

export async function dlqList(config: Config, opts: { json: boolean; limit: number }): Promise<number> {
  const rows = await withClient(
    config.database.url,
    async (c) =>
      (
        await c.query<DeadLetterRow>(
          `SELECT id::text, direction, event_id, subject, consumer, handler, headers, body, error, attempts, created_at FROM ${table(config)} ORDER BY id LIMIT $1`,
          [opts.limit],
        )
      ).rows,
  );
  if (opts.json) {
    // header names are data, not keys: a list of { name, value }, so that every key is snake_case
    const deadLetters = rows.map((r) => ({
      id: Number(r.id),
      direction: r.direction,
      event_id: r.event_id,
      subject: r.subject,
      consumer: r.consumer,
      handler: r.handler,
      headers: Object.entries(r.headers ?? {}).map(([name, value]) => ({ name, value })),
      body: r.body,
      error: r.error,
      attempts: r.attempts,
      created_at: r.created_at.toISOString(),
    }));
    process.stdout.write(JSON.stringify({ dead_letters: deadLetters, count: deadLetters.length, limit: opts.limit }, null, 2) + '\n');
    return 0;
  }
  if (rows.length === 0) {
    process.stdout.write('no dead letters\n');
    return 0;
  }
  const cols = ['id', 'direction', 'subject', 'handler', 'attempts', 'time', 'error'];
  const data = rows.map((r) => [
    r.id,
    r.direction,
    r.subject ?? '',
    r.handler ?? '',
    String(r.attempts),
    r.created_at.toISOString(),
    r.error.replace(/\s+/g, ' ').slice(0, 120),
  ]);
  process.stdout.write(formatTable(cols, data));
  return 0;
}

/**
 * Re-drives dead letters the way they failed: an inbound one calls its handler again in the
 * exactly-once transaction (removing the row in the same transaction), an outbound one is
 * published again with its original message id.
 */
export async function dlqRetry(config: Config, log: Logger, opts: { ids: string[]; all: boolean }): Promise<number> {
  if (!opts.all && opts.ids.length === 0) throw new UsageError('dlq retry needs dead-letter ids (see `dlq list`) or --all');
  const ids = opts.ids.map((s) => {
    if (!/^\d+$/.test(s)) throw new UsageError(`dlq retry: "${s}" is not a dead-letter id (a number from \`dlq list\`)`);
    return s;
  });
  const rows = await withClient(
    config.database.url,
    async (c) =>
      (
        await c.query<DeadLetterRow>(
          `SELECT id::text, direction, event_id, subject, consumer, handler, headers, body, body_raw, original_keys, error, attempts, created_at
             FROM ${table(config)} WHERE $1::boolean OR id = ANY($2::bigint[]) ORDER BY id`,
          [opts.all, ids],
        )
      ).rows,
  );
  const missing = ids.filter((id) => !rows.some((r) => r.id === id));
  if (missing.length > 0) throw new UsageError(`dlq retry: no dead letter with id ${missing.join(', ')}`);
  const inbox = new InboxExecutor(config.database.url, config.relay.schema, 1);
  let publisher: Republisher | null = null;
  let ok = 0;
  let failed = 0;
  try {
    for (const r of rows) {
      try {
        // re-drive what was received, not the form it was stored in
        const subject = r.original_keys?.['subject'] ?? r.subject;
        const body = r.body_raw ?? r.body;
        if (r.direction === 'inbound') {
          const sub = config.observers.subscribe.find((s) => s.consumer === r.consumer);
          const handler = sub?.handler ?? r.handler;
          if (!handler || !r.consumer) throw new Error('no handler recorded for this dead letter');
          if (r.event_id?.startsWith('unverified:')) {
            throw new Error(
              'this message was refused because its signature did not verify ([relay] signing_key_env): it is not applied; ' +
                'delete it with `dlq purge` once it is understood',
            );
          }
          const outcome = await inbox.process(
            r.consumer,
            r.event_id ?? `dead-letter:${r.id}`,
            subject ?? '',
            handler,
            typeof body === 'string' ? body : body.toString('utf8'),
            Number(r.id),
          );
          log.info({ id: r.id, handler, outcome }, 'dead letter re-driven');
        } else if (r.direction === 'outbound') {
          publisher ??= await Republisher.open(config, log, 'dlq');
          const eventId = r.original_keys?.['event_id'] ?? r.event_id;
          if (!subject || !eventId) throw new Error('no subject or event id recorded for this dead letter');
          // the relay's own publisher: the same checks, signature and de-duplication as `run`
          const msg = { subject, eventId, headers: r.headers ?? {}, body: typeof body === 'string' ? Buffer.from(body, 'utf8') : body };
          const problem = await publisher.check(msg);
          if (problem !== null) throw new Error(`it can never be published: ${problem}`);
          await publisher.publish(msg);
          await withClient(config.database.url, (c) => c.query(`DELETE FROM ${table(config)} WHERE id = $1`, [r.id]).then(() => undefined));
          log.info({ id: r.id, subject: r.subject }, 'dead letter re-published');
        } else if (r.direction === 'webhook') {
          // delivered again straight to the endpoint (re-queued in JetStream, the same Nats-Msg-Id would be dropped)
          const route = webhookRoutes(config).find((w) => w.subject === subject);
          if (!route) throw new Error(`no webhook action of the configuration delivers ${subject ?? '(no subject)'} now`);
          const eventId = r.original_keys?.['event_id'] ?? r.event_id;
          if (!eventId) throw new Error('no event id recorded for this dead letter');
          const res = await deliverOnce(
            resolveWebhookTarget(route.action, process.env),
            eventId,
            typeof body === 'string' ? Buffer.from(body, 'utf8') : body,
          );
          if (!res.ok) throw new Error(`the endpoint did not accept it: ${res.error}`);
          await withClient(config.database.url, (c) => c.query(`DELETE FROM ${table(config)} WHERE id = $1`, [r.id]).then(() => undefined));
          log.info({ id: r.id, webhook: subject, status: res.status }, 'dead letter delivered');
        } else {
          throw new Error(`re-driving ${String(r.direction)} dead letters is not supported`);
        }
        ok++;
      } catch (err) {
        failed++;
        const msg = errorMessage(err);
        await withClient(config.database.url, (c) =>
          c
            .query(`UPDATE ${table(config)} SET attempts = attempts + 1, error = $2, updated_at = now() WHERE id = $1`, [r.id, msg])
            .then(() => undefined),
        );
        log.warn({ id: r.id, err: msg }, 'dead letter still failing');
      }
    }
  } finally {
    await publisher?.close();
    await inbox.close();
  }
  process.stdout.write(`retried ${rows.length}: ${ok} succeeded, ${failed} still failing\n`);
  return failed > 0 ? 1 : 0;
}

/**
 * Deletes dead letters: those given by id, those older than `--older-than`, or (with `--yes`) all.
 * Without a filter and without `--yes` it refuses (exit 2) and deletes nothing.
 */
export async function dlqPurge(config: Config, opts: { olderThan?: string; ids?: string[]; yes?: boolean }): Promise<number> {
  const ids = (opts.ids ?? []).map((s) => {
    if (!/^\d+$/.test(s)) throw new UsageError(`dlq purge: "${s}" is not a dead-letter id (a number from \`dlq list\`)`);
    return s;
  });
  let ms: number | null = null;
  if (opts.olderThan !== undefined) {
    try {
      ms = parseDuration(opts.olderThan);
    } catch (err) {
      throw new UsageError(`dlq purge --older-than: ${(err as Error).message}`);
    }
  }
  if (ids.length === 0 && ms === null && opts.yes !== true) {
    throw new UsageError(
      'dlq purge without ids or --older-than deletes every dead letter, and they cannot be re-driven afterwards. ' +
        'Run again with --yes to delete them all, or name what to delete: dead-letter ids (`dlq list`) or --older-than 7d. Nothing was deleted.',
    );
  }
  const n = await withClient(
    config.database.url,
    async (c) =>
      (
        await c.query(
          `DELETE FROM ${table(config)}
            WHERE (cardinality($2::bigint[]) = 0 OR id = ANY($2::bigint[]))
              AND ($1::bigint IS NULL OR created_at < now() - make_interval(secs => $1::bigint / 1000.0))`,
          [ms, ids],
        )
      ).rowCount ?? 0,
  );
  process.stdout.write(`purged ${n} dead letter${n === 1 ? '' : 's'}\n`);
  return 0;
}

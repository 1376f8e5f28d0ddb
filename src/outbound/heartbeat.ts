import pg from 'pg';
import { connectionConfig } from '../util/db.js';
import type { Logger } from '../util/log.js';
import { errorMessage } from '../util/errors.js';

const HEARTBEAT_PREFIX = 'fraiseql-relay/heartbeat';

/**
 * Every `[relay] heartbeat`, a transactional logical message (no table, no publication
 * change) that travels the whole outbound path: it is decoded in commit order with the events,
 * and counts as "back" once its transaction is confirmed. It keeps the slot moving on an idle
 * database and measures the end-to-end lag.
 */
export class HeartbeatEmitter {
  private readonly pool: pg.Pool;
  private timer: NodeJS.Timeout | null = null;
  lastEmittedAt = 0;

  constructor(
    url: string,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {
    this.pool = new pg.Pool({ ...connectionConfig(url, { application_name: 'fraiseql-relay heartbeat' }), max: 1 });
    this.pool.on('error', () => {});
  }

  start(): void {
    if (this.timer) return;
    void this.beat();
    this.timer = setInterval(() => void this.beat(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async beat(): Promise<void> {
    const at = Date.now();
    try {
      await this.pool.query(`SELECT pg_logical_emit_message(true, $1, $2)`, [HEARTBEAT_PREFIX, JSON.stringify({ at })]);
      this.lastEmittedAt = at;
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'heartbeat could not be written');
    }
  }

  async close(): Promise<void> {
    this.stop();
    await this.pool.end().catch(() => {});
  }
}

/** The emission time carried by a heartbeat message, or null for anything else. */
export function heartbeatTime(prefix: string, content: Buffer): number | null {
  if (prefix !== HEARTBEAT_PREFIX) return null;
  try {
    const v = (JSON.parse(content.toString('utf8')) as { at?: unknown }).at;
    return typeof v === 'number' ? v : null;
  } catch {
    return null;
  }
}

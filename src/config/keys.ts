/** Key paths, and the parts of fraiseql.toml that belong to FraiseQL itself (accepted, ignored). */
import type { KeyPath } from './scan.js';

/** FraiseQL's own top-level tables: the relay accepts and ignores them. */
export const FRAISEQL_SECTIONS = [
  'fraiseql',
  'server',
  'schema',
  'security',
  'auth',
  'changelog',
  'cdc_outbound',
  'cache',
  'federation',
  'subscriptions',
  'rate_limiting',
  'cors',
  'telemetry',
  'tracing',
  'logging',
  'query',
  'mutations',
  'types',
  'queries',
  'caching',
  'analytics',
  'observability',
  'websocket',
  'graphql',
  'build',
  'compile',
  'inventory',
  'audit',
  'mcp',
  'webhooks',
  'storage',
] as const;

/** FraiseQL's own `[observers]` keys: accepted, ignored, reported in `Config.ignoredKeys`. */
export const OBSERVERS_IGNORED_KEYS = [
  'enabled',
  'redis_url',
  'handlers',
  'runtime',
  'max_concurrency',
  'channel_capacity',
  'max_dlq_size',
  'checkpoint_strategy',
  'idempotency_table',
  'retry',
] as const;

const SECTIONS = new Set<string | number>(FRAISEQL_SECTIONS);
const OBSERVER_KEYS = new Set<string | number>(OBSERVERS_IGNORED_KEYS);

/**
 * True for a key path whose value the relay ignores, so it needs no interpolation (and the
 * relay's environment need not hold the service's other secrets).
 */
export function isIgnoredPath(path: KeyPath): boolean {
  const [first, second, third, fourth] = path;
  if (first === undefined) return false;
  if (SECTIONS.has(first)) return true;
  // FraiseQL's other [project] / [database] settings (version, pool sizes…)
  if (first === 'project') return second !== undefined && second !== 'name';
  if (first === 'database') return second !== undefined && second !== 'type' && second !== 'url';
  if (first !== 'observers') return false;
  if (second !== undefined && OBSERVER_KEYS.has(second)) return true;
  // a rule's [observers.retry] (top-level [[observers]] form) or [observers.rules.retry]
  if (typeof second === 'number' && third === 'retry') return true;
  return second === 'rules' && typeof third === 'number' && fourth === 'retry';
}

/** `observers.subscribe[0].handler`; keys that are not bare TOML keys are quoted. */
export function formatKeyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else {
      const s = String(seg);
      const part = /^[A-Za-z0-9_-]+$/.test(s) ? s : JSON.stringify(s);
      out += out === '' ? part : `.${part}`;
    }
  }
  return out;
}

/** How to name the table that holds a key, for "add … to <table>" hints. */
export function describeTable(path: readonly PropertyKey[]): string {
  if (path.length === 0) return 'the top level of the file';
  const last = path[path.length - 1];
  if (typeof last === 'number') {
    const names = path.slice(0, -1).filter((p): p is string => typeof p === 'string');
    return `the [[${names.join('.')}]] entry ${formatKeyPath(path)}`;
  }
  return `[${formatKeyPath(path)}]`;
}

/**
 * The benchmark's measurement settings, read from the environment once (documented in the header
 * of bench/run.ts), the fixed parameters shared by its sections, and its progress log.
 */
import { nowMs } from './util.js';

function intEnv(name: string, def: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v.replace(/_/g, ''));
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got ${v}`);
  return Math.round(n);
}

function numEnv(name: string, def: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got ${v}`);
  return n;
}

export const N = intEnv('BENCH_N', 200_000);
export const REPS = intEnv('BENCH_REPS', 3);
export const LAT_SECS = numEnv('BENCH_LAT_SECS', 10);
export const LAT_CONNS = intEnv('BENCH_LAT_CONNS', 4);
export const HANDLER_N = intEnv('BENCH_HANDLER_N', 50_000);
export const COMPARE_SECS = numEnv('BENCH_COMPARE_SECS', 25);
export const RUN_TIMEOUT_S = numEnv('BENCH_RUN_TIMEOUT', 120);
export const WINDOW = 1024;
/** connections committing a backlog of single-row or 10-row transactions */
export const BACKLOG_CONNS = 2;
export const REF_LATENCY = process.env['BENCH_REF_LATENCY'] !== '0';
/** extra node options for the relay process, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" */
export const RELAY_NODE_ARGS = (process.env['BENCH_RELAY_NODE_ARGS'] ?? '').split(' ').filter(Boolean);

export const T0 = nowMs();
export function log(msg: string): void {
  process.stdout.write(`[${((nowMs() - T0) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}

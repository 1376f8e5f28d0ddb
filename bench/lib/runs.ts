/**
 * One measured run of the relay or a contender as a child process: spawning it, timing it from
 * spawn to the last event, its peak RSS and the CPU of it, its walsender and nats-server.
 */
import { join } from 'node:path';
import { ROOT, type BenchEnv } from './env.js';
import { Child, cpuSeconds, errMsg, fmtInt, fmtMB } from './util.js';
import { type Series } from './series.js';
import { RELAY_NODE_ARGS, RUN_TIMEOUT_S, log } from './settings.js';

const TSX = ['--import', 'tsx'];

/** The relay runs as shipped: compiled to dist/ (built afresh by main()). */
export function spawnRelay(env: BenchEnv, configFile: string): Child {
  return new Child({
    args: [...RELAY_NODE_ARGS, join(ROOT, 'dist', 'cli.js'), 'run', '-c', configFile],
    cwd: ROOT,
    env: { ...env.env, LOG_LEVEL: 'warn', NO_PRETTY: '1' },
  });
}

export function spawnContender(name: string, args: Record<string, unknown>): Child {
  return new Child({
    args: [...TSX, join(ROOT, 'bench', 'contenders', `${name}.ts`)],
    cwd: ROOT,
    env: { ...process.env, BENCH_ARGS: JSON.stringify(args) },
  });
}

export interface RunOptions {
  /** the replication slot it reads (to find its walsender) */
  slot?: string;
  /** time cap, seconds */
  capS?: number;
  /** a capped run counts, measured on what it stored in time */
  allowPartial?: boolean;
  /** SIGTERM → SIGKILL grace */
  stopGraceMs?: number;
}

export async function walsenderPid(env: BenchEnv, slot: string | undefined): Promise<number | undefined> {
  if (!slot) return undefined;
  const rows = await env
    .sql<{ active_pid: number | null }>(`SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, [slot])
    .catch(() => []);
  return rows[0]?.active_pid ?? undefined;
}

/** CPU seconds of the contender, its walsender and nats-server over one run. */
function recordCpu(s: Series, env: BenchEnv, child: Child, wsPid: number | undefined, nats0: number | undefined, wallS: number): void {
  const nats1 = cpuSeconds(env.nats.pid);
  s.cpu.push({
    wall: wallS,
    proc: cpuSeconds(child.pid) ?? Number.NaN,
    ws: wsPid === undefined ? Number.NaN : (cpuSeconds(wsPid) ?? Number.NaN),
    nats: nats0 === undefined || nats1 === undefined ? Number.NaN : nats1 - nats0,
  });
}

/**
 * Runs a contender that publishes into STREAM until `n` messages are stored (or the cap);
 * records events/s from spawn to the last message, excluding start-up, start-up, peak RSS, CPU.
 */
export async function streamRun(env: BenchEnv, s: Series, n: number, start: () => Child, o: RunOptions = {}): Promise<void> {
  const capS = o.capS ?? RUN_TIMEOUT_S;
  await env.freshStream();
  const nats0 = cpuSeconds(env.nats.pid);
  const child = start();
  try {
    const w = await env.watchStream(n, {
      timeoutMs: capS * 1000,
      abort: () => (child.alive ? null : `exited: ${child.tail()}`),
    });
    const st = await env.streamState();
    const wsPid = await walsenderPid(env, o.slot);
    const wallS = (w.lastAt - child.spawnedAt) / 1000;
    recordCpu(s, env, child, wsPid, nats0, wallS);
    const rss = await child.stop(o.stopGraceMs ?? 15_000);
    if (w.abort) throw new Error(w.abort);
    if (w.count === 0) throw new Error(`no event reached the stream within ${capS} s (${child.tail()})`);
    if (!w.complete) {
      if (!o.allowPartial) throw new Error(`only ${w.count} of ${n} events within ${capS} s`);
      s.partial++;
    }
    s.values.push(w.count / wallS);
    if (w.lastAt > w.firstAt) s.excl.push((w.count - w.firstCount) / ((w.lastAt - w.firstAt) / 1000));
    s.startup.push((w.firstAt - child.spawnedAt) / 1000);
    s.rss.push(rss);
    if (st && st.messages > 0) s.msgBytes.push(st.bytes / st.messages);
    if (!w.complete) s.notes.push(`${fmtInt(w.count)} of ${fmtInt(n)} in ${capS} s`);
  } finally {
    child.kill();
    await child.exited;
  }
}

/** Runs a contender that reports `DONE {firstAt,lastAt,…}` itself (and waits for SIGTERM). */
export async function doneRun(
  env: BenchEnv,
  s: Series,
  n: number,
  start: () => Child,
  count: (d: Record<string, number>) => number,
  o: RunOptions = {},
): Promise<Record<string, number>> {
  const nats0 = cpuSeconds(env.nats.pid);
  const child = start();
  try {
    await child.waitFor(/^READY/, RUN_TIMEOUT_S * 1000);
    const wsPid = await walsenderPid(env, o.slot);
    const m = await child.waitFor(/^DONE (.*)$/, (o.capS ?? RUN_TIMEOUT_S) * 1000);
    const d = JSON.parse(m[1]!) as Record<string, number>;
    const wallS = (d['lastAt']! - child.spawnedAt) / 1000;
    recordCpu(s, env, child, wsPid, nats0, wallS);
    const rss = child.peakKb();
    await child.stop(o.stopGraceMs ?? 15_000);
    const got = count(d);
    if (got < n) throw new Error(`only ${got} of ${n}`);
    const first = d['firstAt'] ?? d['startAt']!;
    s.values.push(got / wallS);
    s.excl.push(got / ((d['lastAt']! - first) / 1000));
    s.startup.push((first - child.spawnedAt) / 1000);
    s.rss.push(rss);
    return d;
  } finally {
    child.kill();
    await child.exited;
  }
}

/** `n` split into `k` parts, each a multiple of `unit` (the last takes the rest). */
export function splitN(n: number, k: number, unit: number): number[] {
  const per = Math.max(unit, Math.floor(n / k / unit) * unit);
  const out: number[] = [];
  let left = n;
  while (left > 0) {
    const take = out.length === k - 1 ? left : Math.min(per, left);
    out.push(take);
    left -= take;
  }
  return out;
}

export async function attempt(s: Series, what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
    const i = s.values.length - 1;
    log(
      `  ${what}: ${fmtInt(s.values[i]!)} ev/s (excl. start-up ${fmtInt(s.excl[i] ?? Number.NaN)}, start-up ${(s.startup[i] ?? 0).toFixed(2)} s, peak RSS ${fmtMB(s.rss[i] ?? 0)})`,
    );
  } catch (err) {
    s.errors.push(errMsg(err));
    log(`  ${what}: failed: ${errMsg(err)}`);
  }
}

/**
 * Small helpers shared by the benchmark orchestrator (bench/run.ts and its modules) and its
 * child processes: statistics, formatting, child-process handling and peak-RSS sampling from /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Wall-clock time in ms with sub-ms precision (comparable across processes of this machine). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export function errMsg(err: unknown): string {
  const m = err instanceof Error ? err.message : String(err);
  return m.replace(/\s+/g, ' ').trim().slice(0, 300);
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile of an already sorted array (p in 0…100). */
export function percentileSorted(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  const rank = Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1));
  return sorted[rank]!;
}

/** Thousands separators, no decimals (e.g. 31,204). */
export function fmtInt(x: number): string {
  if (!Number.isFinite(x)) return '–';
  return Math.round(x).toLocaleString('en-US');
}

/** Adaptive precision for milliseconds. */
export function fmtMs(x: number): string {
  if (!Number.isFinite(x)) return '–';
  if (x < 10) return x.toFixed(2);
  if (x < 100) return x.toFixed(1);
  return Math.round(x).toLocaleString('en-US');
}

export function fmtMB(kb: number): string {
  if (!Number.isFinite(kb) || kb <= 0) return '–';
  return `${Math.round(kb / 1024)} MB`;
}

/** Whole percent (e.g. 85 %). */
export function fmtPct(x: number): string {
  return Number.isFinite(x) ? `${Math.round(x)} %` : '–';
}

/** "median (min–max)" of a set of repetitions. */
export function fmtSpread(xs: readonly number[], f: (x: number) => string = fmtInt): string {
  if (xs.length === 0) return '–';
  if (xs.length === 1) return f(xs[0]!);
  return `${f(median(xs))} (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
}

// ---------------------------------------------------------------------------------------------
// peak RSS

/** VmRSS and VmHWM of a process in kB, or undefined when it is gone. */
function readMem(pid: number): { rss: number; hwm: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+)/.exec(s);
    const hwm = /VmHWM:\s+(\d+)/.exec(s);
    if (!rss || !hwm) return undefined;
    return { rss: Number(rss[1]), hwm: Number(hwm[1]) };
  } catch {
    return undefined;
  }
}

/** Samples a process's memory every `everyMs`; `peakKb` is the highest VmHWM/VmRSS seen. */
export class RssSampler {
  peakKb = 0;
  private timer: NodeJS.Timeout;
  constructor(
    private readonly pid: number,
    everyMs = 100,
  ) {
    this.timer = setInterval(() => this.sample(), everyMs);
    this.timer.unref();
  }
  sample(): void {
    const m = readMem(this.pid);
    if (m) this.peakKb = Math.max(this.peakKb, m.hwm, m.rss);
  }
  /** Takes a last sample (call before the process exits) and stops. */
  stop(): number {
    this.sample();
    clearInterval(this.timer);
    return this.peakKb;
  }
}

// ---------------------------------------------------------------------------------------------
// child processes

export interface ChildOptions {
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** lines of output kept for error messages */
  keepLines?: number;
}

/**
 * A Node child process with its output captured line by line, a peak-RSS sampler, and a way to
 * wait for a line matching a pattern.
 */
export class Child {
  readonly proc: ChildProcess;
  readonly spawnedAt: number;
  readonly rss: RssSampler | null;
  readonly exited: Promise<number | null>;
  private lines: string[] = [];
  private partial = '';
  private waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void }[] = [];
  private exitCode: number | null | undefined = undefined;

  constructor(private readonly opts: ChildOptions) {
    this.spawnedAt = nowMs();
    this.proc = spawn(process.execPath, opts.args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.rss = this.proc.pid !== undefined ? new RssSampler(this.proc.pid) : null;
    const onData = (b: Buffer) => this.onData(b.toString('utf8'));
    this.proc.stdout!.on('data', onData);
    this.proc.stderr!.on('data', onData);
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        this.rss?.stop();
        resolve(code);
      });
      this.proc.on('error', (err) => {
        this.lines.push(`spawn error: ${err.message}`);
        this.exitCode = -1;
        resolve(-1);
      });
    });
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get alive(): boolean {
    return this.exitCode === undefined;
  }

  private onData(s: string): void {
    const text = this.partial + s;
    const parts = text.split('\n');
    this.partial = parts.pop() ?? '';
    for (const line of parts) {
      this.lines.push(line);
      const keep = this.opts.keepLines ?? 400;
      if (this.lines.length > keep) this.lines.splice(0, this.lines.length - keep);
      for (const w of [...this.waiters]) {
        const m = w.re.exec(line);
        if (m) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    }
  }

  /**
   * What went wrong, from the output: the last line naming an error (a stack's message line, a
   * `FAILED …` line, a log line at level error/fatal), else the last lines.
   */
  tail(n = 4): string {
    const lines = [...this.lines, this.partial].map((l) => l.trim()).filter((l) => l !== '' && !/^at /.test(l));
    const err = [...lines].reverse().find((l) => /^FAILED |^\w*Error\b|Error: |"level":(50|60)|^fraiseql-relay: /.test(l));
    return err ?? lines.slice(-n).join(' | ');
  }

  /** Resolves with the first output line (from now on, or already seen) matching `re`. */
  waitFor(re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    for (const line of this.lines) {
      const m = re.exec(line);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const w = {
        re,
        resolve: (m: RegExpExecArray) => {
          clearTimeout(timer);
          resolve(m);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${re} (output: ${this.tail()})`));
      }, timeoutMs);
      this.waiters.push(w);
      void this.exited.then((code) => {
        if (!this.waiters.includes(w)) return;
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(timer);
        reject(new Error(`process exited (code ${code}) before printing ${re}: ${this.tail()}`));
      });
    });
  }

  /** Peak RSS so far in kB (takes a sample now). */
  peakKb(): number {
    if (!this.rss) return 0;
    if (this.alive) this.rss.sample();
    return this.rss.peakKb;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the peak RSS in kB. */
  async stop(graceMs = 15_000): Promise<number> {
    const peak = this.peakKb();
    if (this.alive) {
      this.proc.kill('SIGTERM');
      const t = setTimeout(() => {
        if (this.alive) this.proc.kill('SIGKILL');
      }, graceMs);
      await this.exited;
      clearTimeout(t);
    }
    return Math.max(peak, this.rss?.peakKb ?? 0);
  }

  kill(): void {
    if (this.alive) this.proc.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------------------------
// CPU time

const CLK_TCK = 100;

/** User + system CPU seconds a process has used so far (Linux /proc), or undefined when it is gone. */
export function cpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // after the command name: state(3) … utime(14) stime(15) → indexes 11 and 12
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return undefined;
  }
}

/** Versions and machine facts for BENCHMARKS.md. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { findNatsServer } from '../../src/local/binaries.js';

export interface SysInfo {
  date: string;
  node: string;
  postgres: string;
  natsServer: string;
  packages: Record<string, string>;
  cpu: string;
  cores: number;
  ramGiB: number;
  kernel: string;
  commit: string;
}

const PACKAGES = [
  '@nats-io/transport-node',
  '@nats-io/jetstream',
  'pg',
  'pg-copy-streams',
  'pg-transactional-outbox',
  'pg-logical-replication',
  'tsx',
];

function pkgVersion(root: string, name: string): string {
  try {
    return (JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

function cpuModel(): string {
  try {
    const m = /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) return m[1]!.trim();
  } catch {
    // not Linux
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

function natsVersion(): string {
  try {
    return execFileSync(findNatsServer(), ['--version'], { encoding: 'utf8' })
      .trim()
      .replace(/^nats-server:\s*/, '');
  } catch {
    return 'unknown';
  }
}

function gitCommit(root: string): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'sql'], { cwd: root, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head} + uncommitted changes in src/ or sql/` : head;
  } catch {
    return 'unknown';
  }
}

export function sysInfo(root: string, postgresVersion: string): SysInfo {
  const self = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string; version: string };
  const packages: Record<string, string> = { [self.name]: self.version };
  for (const p of PACKAGES) packages[p] = pkgVersion(root, p);
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    node: process.version,
    postgres: postgresVersion,
    natsServer: natsVersion(),
    packages,
    cpu: cpuModel(),
    cores: os.cpus().length,
    ramGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    commit: gitCommit(root),
  };
}

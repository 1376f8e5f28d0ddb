/**
 * FraiseQL's docs show an `[observers]` table and, in the same file, the table rules as a
 * top-level `[[observers]]` array. TOML forbids that (a key is either a table or an array of
 * tables). When a parse fails on a file that does both, explain it and show the spelling the
 * relay reads: rules in `[[observers.rules]]`, their actions in `[[observers.rules.actions]]`.
 */
import type { ConfigProblem } from './errors.js';
import type { Header, ScanResult } from './scan.js';

const isRuleArray = (h: Header): boolean => h.array && h.parts.length === 1 && h.parts[0] === 'observers';

/** Undefined unless the file mixes an `[observers]` table with top-level `[[observers]]`. */
export function observersMixProblem(scan: ScanResult, parserSaid: string): ConfigProblem | undefined {
  const firstRule = scan.headers.find(isRuleArray);
  if (!firstRule) return undefined;
  // Before the first [[observers]], any [observers…] header makes `observers` a table; after it,
  // [[observers.actions]] / [observers.retry] are the rule's own sub-tables (valid TOML), while
  // [observers], [observers.publish|subscribe|rules] and their arrays still declare the table.
  const tableHeaders = scan.headers.filter(
    (h) =>
      h.parts[0] === 'observers' &&
      !isRuleArray(h) &&
      (h.line < firstRule.line ||
        h.parts.length === 1 ||
        ['publish', 'subscribe', 'rules', 'backend', 'nats_url'].includes(h.parts[1] ?? '')),
  );
  const firstTable = tableHeaders[0];
  if (!firstTable) return undefined;

  const rewrites: string[] = [];
  for (const h of scan.headers) {
    if (h.line < firstRule.line || h.parts[0] !== 'observers') continue;
    const written = h.array ? `[[${h.parts.join('.')}]]` : `[${h.parts.join('.')}]`;
    let fixed: string | undefined;
    if (isRuleArray(h)) fixed = '[[observers.rules]]';
    else if (h.parts.length === 2 && (h.parts[1] === 'actions' || h.parts[1] === 'retry')) {
      fixed = h.array ? `[[observers.rules.${h.parts[1]}]]` : `[observers.rules.${h.parts[1]}]`;
    }
    if (fixed) rewrites.push(`    line ${h.line}: ${written.padEnd(24)} ->  ${fixed}`);
  }

  const tableText = firstTable.array ? `[[${firstTable.parts.join('.')}]]` : `[${firstTable.parts.join('.')}]`;
  const message = [
    `TOML cannot have both an [observers] table (${tableText} at line ${firstTable.line}) and a top-level ` +
      `[[observers]] array of rules (line ${firstRule.line}): a key is either a table or an array of tables.`,
    '  The relay reads table rules from [[observers.rules]] and their actions from [[observers.rules.actions]]; rewrite:',
    ...rewrites,
    '  for example:',
    '    [observers]',
    '    backend = "nats"',
    '    nats_url = "${NATS_URL}"',
    '',
    '    [[observers.rules]]',
    '    table = "tb_order"',
    '    event = "INSERT"',
    '    subject = "fraiseql.order.created"',
    '    [[observers.rules.actions]]',
    '    type = "webhook"',
    '    url_env = "ORDER_WEBHOOK_URL"',
    `  (the TOML parser said: ${parserSaid})`,
  ].join('\n');
  return { line: firstRule.line, key: 'observers', message };
}

/**
 * A plain-text table for people: the header, then the rows, each column padded to its widest
 * cell and two spaces apart (the last column is not padded; no line ends in spaces).
 */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd() + '\n';
  return [header, ...rows].map(line).join('');
}

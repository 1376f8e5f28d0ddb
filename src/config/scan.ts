/**
 * A forgiving, position-keeping pass over TOML text. It does not build values (smol-toml does
 * that); it finds, with their lines:
 *
 * - table headers (`[a.b]`, `[[a.b]]`) and the key path each one opens,
 * - every key and its full path (so validation errors can point at a line),
 * - every `${NAME}` inside a *value*, with the kind of value it sits in (so interpolation can
 *   refuse an environment value that would break out of its string).
 *
 * It understands strings (all four kinds, with escapes), comments, arrays and inline tables, so
 * a `#` or `]` inside a string is not mistaken for a comment or the end of a header, and a
 * `${X}` in a comment or a key is not a placeholder. On malformed input it skips to the end of
 * the line and carries on: the TOML parser reports the real error.
 */

export type KeyPath = (string | number)[];

/** Where a placeholder sits: which kind of string, or a bare value (number, boolean, date). */
export type ValueContext = 'basic' | 'literal' | 'ml-basic' | 'ml-literal' | 'bare';

export interface Placeholder {
  /** the variable name */
  name: string;
  /** offsets of `${NAME}` in the text */
  start: number;
  end: number;
  line: number;
  column: number;
  context: ValueContext;
  /** path of the key whose value holds the placeholder */
  key: KeyPath;
}

/** `${NAME:-default}` and friends, which FraiseQL's docs show but nothing implements. */
interface UnsupportedPlaceholder {
  text: string;
  name: string;
  line: number;
  column: number;
  key: KeyPath;
}

export interface Header {
  /** dotted parts as written */
  parts: string[];
  /** resolved path, with the index of each array-of-tables element */
  path: KeyPath;
  array: boolean;
  line: number;
}

interface KeyDef {
  path: KeyPath;
  line: number;
}

export interface ScanResult {
  placeholders: Placeholder[];
  unsupported: UnsupportedPlaceholder[];
  headers: Header[];
  keys: KeyDef[];
}

type Frame =
  | { kind: 'array'; path: KeyPath; index: number; /** last index whose line is recorded */ seen: number }
  | { kind: 'inline'; path: KeyPath };

const PLACEHOLDER = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/y;
const UNSUPPORTED = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-=?+])[^}\n]*\}/y;
const BARE_KEY = /[A-Za-z0-9_-]+/y;

/** 1-based line and column of offsets in a text. */
export class LineIndex {
  private readonly starts: number[] = [0];

  constructor(text: string) {
    for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) this.starts.push(i + 1);
  }

  lineCol(offset: number): { line: number; column: number } {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((this.starts[mid] ?? 0) <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, column: offset - (this.starts[lo] ?? 0) + 1 };
  }

  offset(line: number, column: number): number {
    return (this.starts[line - 1] ?? 0) + column - 1;
  }
}

export function scanToml(text: string): ScanResult {
  return new Scanner(text).run();
}

class Scanner {
  private i = 0;
  private readonly lines: LineIndex;
  private readonly out: ScanResult = { placeholders: [], unsupported: [], headers: [], keys: [] };
  private readonly stack: Frame[] = [];
  private expect: 'key' | 'value' = 'key';
  private table: KeyPath = [];
  private valueKey: KeyPath = [];
  /** resolved path of each array of tables ▶ number of elements so far */
  private readonly arrays = new Map<string, number>();

  constructor(private readonly s: string) {
    this.lines = new LineIndex(s);
  }

  run(): ScanResult {
    const s = this.s;
    while (this.i < s.length) {
      const c = s[this.i];
      if (c === '\n') {
        this.i++;
        if (this.stack.length === 0) this.expect = 'key';
      } else if (c === ' ' || c === '\t' || c === '\r') {
        this.i++;
      } else if (c === '#') {
        this.skipToEol();
      } else if (this.expect === 'key') {
        this.keyToken();
      } else {
        this.valueToken();
      }
    }
    return this.out;
  }

  private line(offset = this.i): number {
    return this.lines.lineCol(offset).line;
  }

  private skipToEol(): void {
    const nl = this.s.indexOf('\n', this.i);
    this.i = nl < 0 ? this.s.length : nl;
  }

  private top(): Frame | undefined {
    return this.stack[this.stack.length - 1];
  }

  private keyToken(): void {
    const c = this.s[this.i];
    const top = this.top();
    if (!top && c === '[') {
      this.header();
      return;
    }
    if (top?.kind === 'inline' && c === '}') {
      this.stack.pop();
      this.expect = 'value';
      this.i++;
      return;
    }
    if (c === ',') {
      this.i++;
      return;
    }
    const line = this.line();
    const parts = this.keyParts('=');
    if (!parts) {
      this.recover();
      return;
    }
    const base = top?.kind === 'inline' ? top.path : this.table;
    const path = [...base, ...parts];
    this.out.keys.push({ path, line });
    this.valueKey = path;
    this.expect = 'value';
  }

  /** After malformed input: drop nesting and go on with the next line. */
  private recover(): void {
    this.skipToEol();
    this.stack.length = 0;
    this.expect = 'key';
  }

  private header(): void {
    const line = this.line();
    const array = this.s[this.i + 1] === '[';
    this.i += array ? 2 : 1;
    const parts = this.keyParts(']');
    if (!parts || (array && this.s[this.i] !== ']')) {
      this.recover();
      return;
    }
    if (array) this.i++;
    let path: KeyPath;
    if (array) {
      const base = [...this.resolve(parts.slice(0, -1)), parts[parts.length - 1] ?? ''];
      const k = JSON.stringify(base);
      const n = this.arrays.get(k) ?? 0;
      this.arrays.set(k, n + 1);
      path = [...base, n];
    } else {
      path = this.resolve(parts);
    }
    this.table = path;
    this.out.headers.push({ parts, path, array, line });
  }

  /** A dotted key path as written ▶ the path with array-of-tables indexes filled in. */
  private resolve(parts: string[]): KeyPath {
    const out: KeyPath = [];
    for (const p of parts) {
      out.push(p);
      const n = this.arrays.get(JSON.stringify(out));
      if (n !== undefined) out.push(n - 1);
    }
    return out;
  }

  /** Reads `a."b".c` up to and including the terminator; null when malformed. */
  private keyParts(terminator: '=' | ']'): string[] | null {
    const s = this.s;
    const parts: string[] = [];
    for (;;) {
      this.skipBlanks();
      const c = s[this.i];
      if (c === '"' || c === "'") {
        const start = this.i;
        const end = c === '"' ? this.endOfBasic(start + 1, null) : this.endOfLiteral(start + 1, null);
        if (end < start + 2 || s[end - 1] !== c) return null;
        parts.push(decodeQuotedKey(s.slice(start, end)));
        this.i = end;
      } else {
        BARE_KEY.lastIndex = this.i;
        const m = BARE_KEY.exec(s);
        if (!m) return null;
        parts.push(m[0]);
        this.i = BARE_KEY.lastIndex;
      }
      this.skipBlanks();
      const next = s[this.i];
      if (next === '.') {
        this.i++;
        continue;
      }
      if (next === terminator) {
        this.i++;
        return parts;
      }
      return null;
    }
  }

  private skipBlanks(): void {
    while (this.s[this.i] === ' ' || this.s[this.i] === '\t') this.i++;
  }

  private valuePath(): KeyPath {
    const top = this.top();
    return top?.kind === 'array' ? [...top.path, top.index] : this.valueKey;
  }

  private valueToken(): void {
    const s = this.s;
    const c = s[this.i];
    const top = this.top();
    const key = this.valuePath();
    if (top?.kind === 'array' && top.seen < top.index && c !== ',' && c !== ']') {
      // the line of each array element, for errors such as backoff[1]
      this.out.keys.push({ path: key, line: this.line() });
      top.seen = top.index;
    }
    if (c === '"') {
      if (s.startsWith('"""', this.i)) this.i = this.endOfMultiline(this.i + 3, '"""', key);
      else this.i = this.endOfBasic(this.i + 1, key);
    } else if (c === "'") {
      if (s.startsWith("'''", this.i)) this.i = this.endOfMultiline(this.i + 3, "'''", key);
      else this.i = this.endOfLiteral(this.i + 1, key);
    } else if (c === '[') {
      this.stack.push({ kind: 'array', path: key, index: 0, seen: -1 });
      this.i++;
    } else if (c === '{') {
      this.stack.push({ kind: 'inline', path: key });
      this.expect = 'key';
      this.i++;
    } else if (c === ']' || c === '}') {
      if (top && (top.kind === 'array') === (c === ']')) this.stack.pop();
      this.i++;
    } else if (c === ',') {
      if (top?.kind === 'array') top.index++;
      else if (top?.kind === 'inline') this.expect = 'key';
      this.i++;
    } else if (c === '$' && s.startsWith('${', this.i)) {
      this.i = this.placeholderAt(this.i, 'bare', key) ?? this.i + 1;
    } else {
      this.i++;
    }
  }

  /** Records a placeholder at `at`; returns the offset after it, or undefined if there is none. */
  private placeholderAt(at: number, context: ValueContext, key: KeyPath): number | undefined {
    PLACEHOLDER.lastIndex = at;
    const m = PLACEHOLDER.exec(this.s);
    const { line, column } = this.lines.lineCol(at);
    if (m) {
      this.out.placeholders.push({ name: m[1] ?? '', start: at, end: PLACEHOLDER.lastIndex, line, column, context, key });
      return PLACEHOLDER.lastIndex;
    }
    UNSUPPORTED.lastIndex = at;
    const u = UNSUPPORTED.exec(this.s);
    if (u) {
      this.out.unsupported.push({ text: u[0], name: u[1] ?? '', line, column, key });
      return UNSUPPORTED.lastIndex;
    }
    return undefined;
  }

  /** Offset after the closing `"` of a basic string whose content starts at `j` (or at the end of the line). */
  private endOfBasic(j: number, key: KeyPath | null): number {
    const s = this.s;
    while (j < s.length) {
      const c = s[j];
      if (c === '\\') j += 2;
      else if (c === '"') return j + 1;
      else if (c === '\n') return j;
      else if (c === '$' && key) j = this.placeholderAt(j, 'basic', key) ?? j + 1;
      else j++;
    }
    return j;
  }

  private endOfLiteral(j: number, key: KeyPath | null): number {
    const s = this.s;
    while (j < s.length) {
      const c = s[j];
      if (c === "'") return j + 1;
      if (c === '\n') return j;
      if (c === '$' && key) j = this.placeholderAt(j, 'literal', key) ?? j + 1;
      else j++;
    }
    return j;
  }

  private endOfMultiline(j: number, delimiter: '"""' | "'''", key: KeyPath): number {
    const s = this.s;
    const basic = delimiter === '"""';
    while (j < s.length) {
      const c = s[j];
      if (s.startsWith(delimiter, j)) {
        j += 3;
        // up to two quotes right before the delimiter belong to the content
        for (let extra = 0; extra < 2 && s[j] === delimiter[0]; extra++) j++;
        return j;
      }
      if (basic && c === '\\') j += 2;
      else if (c === '$') j = this.placeholderAt(j, basic ? 'ml-basic' : 'ml-literal', key) ?? j + 1;
      else j++;
    }
    return j;
  }
}

function decodeQuotedKey(quoted: string): string {
  if (quoted.startsWith("'")) return quoted.slice(1, -1);
  try {
    const v: unknown = JSON.parse(quoted);
    return typeof v === 'string' ? v : quoted.slice(1, -1);
  } catch {
    return quoted.slice(1, -1);
  }
}

function samePath(a: KeyPath, b: KeyPath): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Best-effort line of a key path: the key itself, else the table header that opens it, else
 * (for a missing key) the nearest enclosing table or key that does appear in the text.
 */
export function findLine(scan: ScanResult, path: KeyPath): number | undefined {
  // a table only opened through its sub-tables, e.g. `publish` in [[observers.publish]]
  const below = scan.headers.find((h) => h.path.length > path.length && samePath(h.path.slice(0, path.length), path));
  if (path.length > 0 && below && !scan.keys.some((k) => samePath(k.path, path))) {
    if (!scan.headers.some((h) => samePath(h.path, path))) return below.line;
  }
  for (let n = path.length; n > 0; n--) {
    const p = path.slice(0, n);
    const key = scan.keys.find((k) => samePath(k.path, p));
    if (key) return key.line;
    const header = scan.headers.find((h) => samePath(h.path, p));
    if (header) return header.line;
  }
  return undefined;
}

/**
 * The source tree is the architecture: a folder per stage of the data path, imports that point one
 * way. These checks read the import statements of src/ and fail with the offending lines.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { ROOT } from './fixture.js';

const SRC = join(ROOT, 'src');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [join(dir, e.name)] : [],
  );
}

interface Import {
  from: string;
  to: string;
  line: number;
}

/** Every relative import (static, re-export, dynamic) of every module under src/, resolved to a .ts path. */
function imports(): Import[] {
  const out: Import[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm;
  for (const file of sources(SRC)) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(re)) {
      const line = text.slice(0, m.index).split('\n').length;
      out.push({ from: file, to: resolve(dirname(file), m[1]!.replace(/\.js$/, '.ts')), line });
    }
  }
  return out;
}

const rel = (p: string) => relative(SRC, p).split(sep).join('/');
/** The folder a module belongs to (its first path segment under src/), or '' for the top level. */
const folderOf = (p: string) => (rel(p).includes('/') ? rel(p).split('/')[0]! : '');

test('src/ has no loose pipeline modules: only the entry points sit at the top', () => {
  const top = readdirSync(SRC, { withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => e.name)
    .sort();
  assert.deepEqual(top, ['cli.ts', 'daemon.ts', 'index.ts']);
});

test('no module imports from a folder above its own level', () => {
  const bad = imports()
    .filter((i) => {
      const fromDir = dirname(i.from);
      const toDir = dirname(i.to);
      return fromDir !== toDir && fromDir.startsWith(toDir + sep);
    })
    .map((i) => `src/${rel(i.from)}:${i.line} imports src/${rel(i.to)}`);
  assert.deepEqual(bad, []);
});

test('the folders import each other one way (no cycle between folders)', () => {
  const edges = new Map<string, Set<string>>();
  const where = new Map<string, string>();
  for (const i of imports()) {
    const a = folderOf(i.from);
    const b = folderOf(i.to);
    if (a === '' || a === b) continue;
    if (!edges.has(a)) edges.set(a, new Set());
    edges.get(a)!.add(b);
    where.set(`${a}>${b}`, `src/${rel(i.from)}:${i.line} → src/${rel(i.to)}`);
  }
  const cycles: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 'open');
    path.push(n);
    for (const m of edges.get(n) ?? []) {
      if (state.get(m) === 'open') {
        const loop = [...path.slice(path.indexOf(m)), m];
        cycles.push(
          loop
            .slice(1)
            .map((to, k) => where.get(`${loop[k]}>${to}`))
            .join('; '),
        );
      } else if (!state.has(m)) visit(m);
    }
    path.pop();
    state.set(n, 'done');
  };
  for (const n of [...edges.keys()].sort()) if (!state.has(n)) visit(n);
  assert.deepEqual(cycles, []);
});

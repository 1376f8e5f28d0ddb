#!/usr/bin/env node
// Runs the compiled CLI (dist/, built by `npm run build` or `npm ci`), or, in a development
// checkout without dist/, the TypeScript sources through tsx (a devDependency: an installed
// package and the container image always run dist/).
import { existsSync } from 'node:fs';

const dist = new URL('../dist/cli.js', import.meta.url);
if (existsSync(dist)) {
  await import(dist.href);
} else {
  let register;
  try {
    ({ register } = await import('tsx/esm/api'));
  } catch {
    process.stderr.write(
      'fraiseql-relay: dist/ is missing: build it with `npm run build` (tsx, which runs the TypeScript sources without it, is not installed)\n',
    );
    process.exit(1);
  }
  register();
  await import(new URL('../src/cli.ts', import.meta.url).href);
}

#!/usr/bin/env node
// Runs the compiled CLI (dist/, built by `npm run build` or `npm ci`), or the TypeScript
// sources through tsx when dist/ is absent.
import { existsSync } from 'node:fs';

const dist = new URL('../dist/cli.js', import.meta.url);
if (existsSync(dist)) {
  await import(dist.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL('../src/cli.ts', import.meta.url).href);
}

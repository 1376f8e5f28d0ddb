import { createRequire } from 'node:module';

/** The package's version (package.json is two levels up from src/util/ and from dist/util/). */
export const VERSION: string = (createRequire(import.meta.url)('../../package.json') as { version: string }).version;

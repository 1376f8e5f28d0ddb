/**
 * The zod schema of fraiseql.toml, assembled from its sections in `sections/`; the field
 * builders they are made of are in `fields.ts`. This module also answers report.ts's questions
 * about the schema: which keys a table allows and which are accepted only to be ignored.
 */
import { z } from 'zod';
import { ignored } from './fields.js';
import { FRAISEQL_SECTIONS, OBSERVERS_IGNORED_KEYS } from './keys.js';
import { actionShape } from './schema-actions.js';
import { legacyObserversSchema, observersSchema, observersShape, publishShape, ruleShape, subscribeShape } from './schema-observers.js';
import { natsShape, relaySchema, relayShape, streamShape } from './schema-relay.js';
import { databaseSchema, projectSchema } from './schema-top.js';

const topShape = {
  // both optional: FraiseQL's own service files have no [project]; load.ts derives the service name
  // from the database URL, and reads DATABASE_URL when there is no [database]
  project: projectSchema.optional(),
  database: databaseSchema.optional(),
  relay: relaySchema.prefault({}),
  ...ignored(FRAISEQL_SECTIONS),
};

export const configSchema = z.strictObject({ ...topShape, observers: observersSchema.prefault({}) });
export const legacyConfigSchema = z.strictObject({ ...topShape, observers: legacyObserversSchema });

export type ParsedConfig = z.output<typeof configSchema>;

/** In the top-level [[observers]] form, keys of the [observers] table that end up in a rule. */
export const TABLE_FORM_KEYS: readonly string[] = Object.keys(observersShape).filter(
  (k) => !(OBSERVERS_IGNORED_KEYS as readonly string[]).includes(k),
);

/**
 * The keys allowed in the table at a path (array indexes ignored), for "did you mean" hints;
 * undefined where any key is allowed.
 */
export function knownKeys(path: readonly PropertyKey[], legacy: boolean): readonly string[] | undefined {
  const p = path.filter((s) => typeof s === 'string').join('.');
  switch (p) {
    case '':
      return Object.keys(configSchema.shape);
    case 'observers':
      return Object.keys(legacy ? ruleShape : observersShape);
    case 'observers.publish':
      return Object.keys(publishShape);
    case 'observers.subscribe':
      return Object.keys(subscribeShape);
    case 'observers.rules':
      return Object.keys(ruleShape);
    case 'observers.actions':
    case 'observers.rules.actions':
    case 'observers.publish.actions':
      return Object.keys(actionShape);
    case 'relay':
      return Object.keys(relayShape);
    case 'relay.stream':
      return Object.keys(streamShape);
    case 'relay.nats':
      return Object.keys(natsShape);
    default:
      return undefined;
  }
}

/** Keys accepted only to be ignored: not listed among the allowed keys in messages. */
export const IGNORED_KEY_NAMES: ReadonlySet<string> = new Set<string>([...OBSERVERS_IGNORED_KEYS, ...FRAISEQL_SECTIONS]);

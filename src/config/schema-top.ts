/** `[project]` and `[database]`: their other keys are FraiseQL's own, accepted and ignored. */
import { z } from 'zod';
import { describeValue, type RawIssue, table, text } from './fields.js';

export const projectSchema = z.looseObject({ name: text('the service name, e.g. name = "inventory-service"') }, table('[project]'));

export const databaseSchema = z.looseObject(
  {
    type: z
      .enum(['postgresql', 'postgres'], {
        error: (iss: RawIssue) => `${describeValue(iss.input)} is not supported; the relay needs type = "postgresql"`,
      })
      .default('postgresql')
      .transform((): 'postgresql' => 'postgresql'),
    url: text('a PostgreSQL connection URL such as "${DATABASE_URL}"', true),
  },
  table('[database]'),
);

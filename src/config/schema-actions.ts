/** `[[….actions]]`: the webhook actions of a publish entry or a table rule. */
import { z } from 'zod';
import {
  arrayOfTables,
  checked,
  describeValue,
  duration,
  DURATION_LIMITS,
  envName,
  expected,
  int,
  MISSING,
  type RawIssue,
  str,
  table,
} from './fields.js';
import { isHeaderName } from './names.js';

const HTTP_URL = 'an http:// or https:// URL';

export const actionShape = {
  type: z.literal('webhook', {
    error: (iss: RawIssue) =>
      iss.input === undefined
        ? `${MISSING}; add type = "webhook"`
        : `${describeValue(iss.input)} is not a supported action type; the only type is "webhook"`,
  }),
  // a URL may carry a token: never quoted in messages
  url: z
    .string({ error: expected(HTTP_URL, true) })
    .refine(isHttpUrl, { error: `must be ${HTTP_URL} (or use url_env to keep the URL in the environment)` })
    .optional(),
  url_env: envName().optional(),
  method: checked('an HTTP method such as "POST"', (s) =>
    /^[A-Za-z]+$/.test(s) ? undefined : 'is not an HTTP method such as "POST" or "PUT"',
  )
    .transform((s) => s.toUpperCase())
    .default('POST'),
  headers: z.record(z.string(), str('a string'), table('header name = "value"')).default({}),
  // a setTimeout around each request
  timeout: duration({ positive: { zero: '' }, limit: DURATION_LIMITS.timer }).prefault('30s'),
  max_attempts: int(1).default(8),
  signing_secret_env: envName().optional(),
};

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}

const actionSchema = z.strictObject(actionShape, table('[[….actions]] with type = "webhook"')).superRefine((a, ctx) => {
  if (a.url !== undefined && a.url_env !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['url'],
      message: 'is set together with url_env; keep exactly one of them (url_env keeps the URL out of the file)',
      input: a,
    });
  } else if (a.url === undefined && a.url_env === undefined) {
    ctx.addIssue({
      code: 'custom',
      message:
        'a webhook action needs a URL: add url_env = "ORDER_WEBHOOK_URL" (the URL then stays in the environment) ' + 'or url = "https://…"',
      input: a,
    });
  }
  for (const [name, value] of Object.entries(a.headers)) {
    if (!isHeaderName(name)) {
      ctx.addIssue({ code: 'custom', path: ['headers', name], message: 'is not a valid HTTP header name', input: a });
    } else if (/[\r\n\u0000]/.test(value)) {
      ctx.addIssue({ code: 'custom', path: ['headers', name], message: 'must not contain line breaks', input: a });
    }
  }
});

/** The `actions` array of a table; `header` is its array-of-tables header, for messages. */
export const actions = (header: string) => z.array(actionSchema, arrayOfTables(header)).default([]);

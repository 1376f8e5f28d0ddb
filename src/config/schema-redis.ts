/** `[relay.redis]`: how backend = "redis" names, de-duplicates and trims its streams. */
import { z } from 'zod';
import { checked, duration, DURATION_LIMITS, int, table } from './fields.js';

const redisShape = {
  // stream key = stream_prefix + subject; the de-duplication keys are <stream_prefix>dedup:<event id>:<subject>
  stream_prefix: checked('a key prefix such as "fraiseql:"', (s) =>
    /^[\x21-\x7e]*$/.test(s) ? undefined : 'must be printable ASCII without spaces (it starts every stream key)',
  ).default(''),
  // XADD … MAXLEN ~ <max_len>: each stream keeps about this many entries
  max_len: int(1).optional(),
  // XADD … MINID ~ <now - max_age>: entries older than this are trimmed as new ones arrive
  max_age: duration({ positive: { zero: ': leave max_age out to keep every entry' }, limit: DURATION_LIMITS.retention }).optional(),
  // how long an event id is remembered, so a re-send after a crash is not appended twice (PX, in ms)
  duplicate_window: duration({ positive: { zero: ': a re-sent event would be appended again' }, limit: DURATION_LIMITS.timer }).prefault(
    '10m',
  ),
};

export const redisSchema = z.strictObject(redisShape, table('[relay.redis]')).superRefine((r, ctx) => {
  if (r.max_len !== undefined && r.max_age !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['max_age'],
      message: 'is set together with max_len; Redis trims a stream by one of them (XADD MAXLEN or MINID): keep one',
      input: r.max_age,
    });
  }
});

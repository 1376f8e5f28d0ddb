-- A dead letter keeps the message's original bytes when its text form had to be altered to fit a
-- text column (a NUL byte, bytes that are not UTF-8); keys too long for the unique index are
-- stored shortened with a hash of the whole value, and the whole value goes here too.
ALTER TABLE __SCHEMA__.dead_letter ADD COLUMN IF NOT EXISTS body_raw bytea;
ALTER TABLE __SCHEMA__.dead_letter ADD COLUMN IF NOT EXISTS original_keys jsonb;

-- A least-privilege role for `fraiseql-relay run`. Run it as the owner of the relay's schema
-- (the role that ran `fraiseql-relay migrate`), after migrate. Replace the password.
--
--   LOGIN REPLICATION : stream the slot (START_REPLICATION), write heartbeats (pg_logical_emit_message)
--   no ownership      : `migrate` (tables, publications, slot) stays with the owner/admin role
DO $$ BEGIN
  CREATE ROLE fraiseql_relay_app LOGIN REPLICATION;
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
-- ALTER ROLE fraiseql_relay_app PASSWORD '…';

GRANT USAGE ON SCHEMA fraiseql_relay TO fraiseql_relay_app;
-- outbox: read for replay, delete published rows after [relay] retention
GRANT SELECT, DELETE ON fraiseql_relay.outbox TO fraiseql_relay_app;
-- inbox (exactly-once handler calls), dead letters, the relay's own state
GRANT SELECT, INSERT, UPDATE, DELETE ON fraiseql_relay.inbox, fraiseql_relay.dead_letter, fraiseql_relay.relay_state TO fraiseql_relay_app;
GRANT SELECT ON fraiseql_relay.migrations, fraiseql_relay.owned_objects TO fraiseql_relay_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fraiseql_relay TO fraiseql_relay_app;
-- subscribed SQL handlers run as this role: grant EXECUTE on them (and what they touch), or
-- make them SECURITY DEFINER. FraiseQL's change log has row-level security: replay needs
-- BYPASSRLS there (ALTER ROLE fraiseql_relay_app BYPASSRLS) or ownership.

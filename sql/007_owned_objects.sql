-- The replication slot and publications this relay created (or adopted), by name. Slot names are
-- shared by every database of a PostgreSQL cluster, and publication names by every schema of a
-- database: migrate, run, teardown and reconcile act on a slot or publication only when it is
-- recorded here (and a slot only when it belongs to this database), so that one service's relay
-- never streams from, recreates or drops another's. migrate writes a row right after it creates
-- the object; teardown deletes the rows of what it drops.
CREATE TABLE IF NOT EXISTS __SCHEMA__.owned_objects (
  kind        text        NOT NULL CHECK (kind IN ('slot', 'publication')),
  name        text        NOT NULL,
  origin      text        NOT NULL DEFAULT 'created' CHECK (origin IN ('created', 'adopted')),
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (kind, name)
);
COMMENT ON TABLE __SCHEMA__.owned_objects IS
  'fraiseql-relay: the replication slot and publications this relay created (origin created) or, for an installation migrated before this table existed, proved its own (origin adopted). Destructive commands act only on what is recorded here.';

-- What the active relay last achieved, for `status`, `reconcile` and operators.
CREATE TABLE IF NOT EXISTS __SCHEMA__.relay_state (
  slot              text        PRIMARY KEY,
  holder            text,                 -- host/pid of the active relay
  confirmed_lsn     pg_lsn,               -- the slot position it last confirmed
  last_event_id     text,                 -- the newest event JetStream acknowledged
  last_event_subject text,
  last_published_at timestamptz,
  heartbeat_at      timestamptz,          -- when the last end-to-end heartbeat came back
  heartbeat_lag_ms  double precision,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

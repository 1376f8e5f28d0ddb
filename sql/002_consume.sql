-- Exactly-once handler call in one round trip: the inbox row and the handler's effects commit
-- together (the caller runs this as a single autocommit statement, or inside its transaction).
-- Returns true when the handler ran, false for an event this consumer already processed.
CREATE OR REPLACE FUNCTION __SCHEMA__.consume(p_consumer text, p_event_id text, p_subject text,
                                              p_handler regprocedure, p_event jsonb)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  INSERT INTO __SCHEMA__.inbox (consumer, event_id, subject) VALUES (p_consumer, p_event_id, p_subject)
    ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  EXECUTE format('SELECT %s($1)', p_handler::oid::regproc) USING p_event;
  RETURN true;
END $$;

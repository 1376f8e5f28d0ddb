-- Exactly-once handler calls for a batch of events in one transaction: for each event, in order,
-- the inbox row and the handler call commit together or not at all (a subtransaction per event),
-- so one failing event neither loses nor double-applies the others. Returns one row per event:
--   outcome 'applied'    the handler ran (its effects and the inbox row commit with the batch)
--           'duplicate'  the inbox already held the event: the handler was not called
--           'failed'     the handler (or the event's jsonb) raised: nothing of it was kept;
--                        error_code (its SQLSTATE) and error_message say why
--           'skipped'    an earlier event with the same key failed in this batch: not attempted,
--                        so that events of one key apply in order
-- micros is the time the event took. Keep batches at 64 events or fewer: a transaction with more
-- subtransactions than that makes other sessions' snapshots slower.
CREATE OR REPLACE FUNCTION __SCHEMA__.consume_batch(p_consumer text, p_handler regprocedure, p_event_ids text[],
                                                    p_subjects text[], p_events text[], p_keys text[])
RETURNS TABLE (outcome text, error_code text, error_message text, micros bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_call   text := format('SELECT %s($1)', p_handler::oid::regproc);
  v_failed text[] := '{}';
  v_start  timestamptz;
  v_key    text;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
    v_key := p_keys[i];
    v_start := clock_timestamp();
    IF v_key IS NOT NULL AND v_key = ANY (v_failed) THEN
      outcome := 'skipped'; error_code := NULL; error_message := NULL; micros := 0;
      RETURN NEXT;
      CONTINUE;
    END IF;
    BEGIN
      INSERT INTO __SCHEMA__.inbox (consumer, event_id, subject) VALUES (p_consumer, p_event_ids[i], p_subjects[i])
        ON CONFLICT DO NOTHING;
      IF FOUND THEN
        EXECUTE v_call USING p_events[i]::jsonb;
        outcome := 'applied';
      ELSE
        outcome := 'duplicate';
      END IF;
      error_code := NULL; error_message := NULL;
    EXCEPTION WHEN OTHERS THEN
      outcome := 'failed';
      error_code := SQLSTATE;
      error_message := SQLERRM;
      IF v_key IS NOT NULL THEN v_failed := v_failed || v_key; END IF;
    END;
    micros := (extract(epoch FROM clock_timestamp() - v_start) * 1000000)::bigint;
    RETURN NEXT;
  END LOOP;
END $$;

-- The same batch without a subtransaction per event, for when nothing fails (the usual case): the
-- inbox rows in one INSERT, then the handler once per new event, in order, in one statement (its
-- plan made once per batch, not per event). Returns the ids of the events applied; the others
-- were duplicates. The event ids must be distinct; p_events is a jsonb array of the events' bodies
-- (the relay joins the JSON texts it received: nothing to escape). Any error aborts the whole
-- transaction: the caller then runs consume_batch, which isolates the failing event.
CREATE OR REPLACE FUNCTION __SCHEMA__.consume_batch_fast(p_consumer text, p_handler regprocedure, p_event_ids text[],
                                                         p_subjects text[], p_events jsonb)
RETURNS text[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_new text[];
BEGIN
  WITH ins AS (
    INSERT INTO __SCHEMA__.inbox (consumer, event_id, subject)
    SELECT p_consumer, e.id, e.subject FROM unnest(p_event_ids, p_subjects) AS e(id, subject)
    ON CONFLICT DO NOTHING RETURNING event_id)
  SELECT coalesce(array_agg(event_id), '{}') INTO v_new FROM ins;
  IF cardinality(v_new) > 0 THEN
    EXECUTE format('SELECT count(*) FROM (SELECT %s(b.body) FROM jsonb_array_elements($2) WITH ORDINALITY AS b(body, i) '
                   'WHERE $1[b.i] = ANY ($3) ORDER BY b.i) s', p_handler::oid::regproc)
      USING p_event_ids, p_events, v_new;
  END IF;
  RETURN v_new;
END $$;

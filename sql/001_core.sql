-- fraiseql-relay core schema. __SCHEMA__ is replaced by the quoted [relay] schema name.

CREATE TABLE IF NOT EXISTS __SCHEMA__.outbox (
  id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  subject        text,                  -- explicit subject (emit); NULL: routed by mutation
  mutation       text,
  operation      text,
  entity_type    text,
  entity_id      text,
  entity         jsonb,
  entity_before  jsonb,
  updated_fields text[],
  metadata       jsonb,
  headers        jsonb,
  tenant_id      text,
  user_id        text,
  traceparent    text,
  created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS outbox_created_at_idx ON __SCHEMA__.outbox (created_at);
COMMENT ON TABLE __SCHEMA__.outbox IS
  'fraiseql-relay transactional outbox: rows are inserted by emit()/emit_mutation() and streamed to NATS JetStream by logical decoding; published rows are deleted after [relay] retention.';

CREATE TABLE IF NOT EXISTS __SCHEMA__.inbox (
  consumer     text        NOT NULL,
  event_id     text        NOT NULL,
  subject      text,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);

CREATE TABLE IF NOT EXISTS __SCHEMA__.dead_letter (
  id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  direction   text        NOT NULL CHECK (direction IN ('outbound', 'inbound', 'webhook')),
  event_id    text,
  subject     text,
  consumer    text,
  handler     text,
  headers     jsonb,
  body        text        NOT NULL,
  error       text        NOT NULL,
  attempts    integer     NOT NULL DEFAULT 1,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS dead_letter_event_idx
  ON __SCHEMA__.dead_letter (direction, event_id, subject, coalesce(consumer, ''));

-- Request context from the transaction's settings (fraiseql.tenant_id, fraiseql.user_id, fraiseql.traceparent).
CREATE OR REPLACE FUNCTION __SCHEMA__._setting(name text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting(name, true), '') $$;

-- A raw event to an explicit subject. Returns the event id.
CREATE OR REPLACE FUNCTION __SCHEMA__.emit(subject text, payload jsonb, headers jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_id uuid;
BEGIN
  IF subject IS NULL OR subject !~ '^[^.*>[:space:]]+(\.[^.*>[:space:]]+)*$' THEN
    RAISE EXCEPTION 'fraiseql_relay.emit: invalid NATS subject %', coalesce(quote_literal(subject), 'NULL')
      USING HINT = 'A subject is dot-separated tokens without spaces or wildcards, e.g. fraiseql.order.created';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION 'fraiseql_relay.emit: headers must be a JSON object of strings';
  END IF;
  INSERT INTO __SCHEMA__.outbox (subject, operation, entity_type, entity_id, entity, metadata, headers,
                                 tenant_id, user_id, traceparent)
  VALUES (emit.subject,
          coalesce(CASE WHEN jsonb_typeof(payload) = 'object' THEN payload->>'operation' END, 'CUSTOM'),
          CASE WHEN jsonb_typeof(payload) = 'object' THEN payload->>'entity_type' END,
          CASE WHEN jsonb_typeof(payload) = 'object' THEN payload->>'id' END,
          payload,
          CASE WHEN jsonb_typeof(payload) = 'object' THEN payload->'metadata' END,
          emit.headers,
          __SCHEMA__._setting('fraiseql.tenant_id'),
          __SCHEMA__._setting('fraiseql.user_id'),
          __SCHEMA__._setting('fraiseql.traceparent'))
  RETURNING id INTO v_id;
  RETURN v_id;
END $$;

-- Records a mutation's event and returns the response unchanged:
--   RETURN fraiseql_relay.emit_mutation('create_order', v_result);
-- Reads both mutation_response shapes: the 13-field v2 (succeeded, state_changed, ...) and the
-- 8-field legacy (status, message, entity_id, entity_type, entity, updated_fields, cascade, metadata).
-- Records nothing for a failed or no-op mutation.
CREATE OR REPLACE FUNCTION __SCHEMA__.emit_mutation(mutation text, response anyelement, operation text DEFAULT NULL)
RETURNS anyelement LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r      jsonb := to_jsonb(response);
  v_st   text;
  v_op   text := upper(nullif(operation, ''));
BEGIN
  IF mutation IS NULL OR mutation = '' THEN
    RAISE EXCEPTION 'fraiseql_relay.emit_mutation: the mutation name is required';
  END IF;
  IF r IS NULL OR jsonb_typeof(r) <> 'object' THEN
    RAISE EXCEPTION 'fraiseql_relay.emit_mutation(%): response must be a mutation_response row, got %',
      mutation, coalesce(jsonb_typeof(r), 'NULL');
  END IF;

  IF r ? 'succeeded' THEN                                  -- v2 shape
    IF NOT coalesce((r->>'succeeded')::boolean, false)
       OR NOT coalesce((r->>'state_changed')::boolean, false) THEN
      RETURN response;                                     -- failed or no-op
    END IF;
  ELSIF r ? 'status' THEN                                  -- legacy shape
    v_st := lower(coalesce(r->>'status', ''));
    IF v_st = '' OR v_st LIKE 'noop%' OR v_st LIKE 'failed%' OR v_st LIKE 'error%'
       OR v_st LIKE 'blocked%' OR v_st LIKE 'conflict%' OR v_st LIKE 'not_found%' THEN
      RETURN response;
    END IF;
    IF v_op IS NULL THEN
      v_op := CASE
        WHEN v_st IN ('new', 'created') OR v_st LIKE 'created:%' THEN 'CREATE'
        WHEN v_st IN ('updated') OR v_st LIKE 'updated:%' THEN 'UPDATE'
        WHEN v_st IN ('deleted') OR v_st LIKE 'deleted:%' THEN 'DELETE'
      END;
    END IF;
  ELSE
    RAISE EXCEPTION 'fraiseql_relay.emit_mutation(%): response has neither "succeeded" nor "status"', mutation
      USING HINT = 'Pass the function''s mutation_response row (v2: succeeded, state_changed, ...; legacy: status, message, ...)';
  END IF;

  IF v_op IS NULL THEN
    v_op := CASE
      WHEN mutation ~* '^(create|insert|add|register|new)_' THEN 'CREATE'
      WHEN mutation ~* '^(update|set|edit|change|modify|patch)_' THEN 'UPDATE'
      WHEN mutation ~* '^(delete|remove|archive|destroy)_' THEN 'DELETE'
      ELSE 'CUSTOM'
    END;
  END IF;

  INSERT INTO __SCHEMA__.outbox (mutation, operation, entity_type, entity_id, entity, entity_before,
                                 updated_fields, metadata, tenant_id, user_id, traceparent)
  VALUES (mutation, v_op,
          r->>'entity_type',
          r->>'entity_id',
          CASE WHEN jsonb_typeof(r->'entity') = 'null' THEN NULL ELSE r->'entity' END,
          CASE WHEN jsonb_typeof(r->'entity_before') = 'null' THEN NULL ELSE r->'entity_before' END,
          CASE WHEN jsonb_typeof(r->'updated_fields') = 'array'
               THEN ARRAY(SELECT jsonb_array_elements_text(r->'updated_fields')) END,
          CASE WHEN jsonb_typeof(r->'metadata') = 'null' THEN NULL ELSE r->'metadata' END,
          __SCHEMA__._setting('fraiseql.tenant_id'),
          __SCHEMA__._setting('fraiseql.user_id'),
          __SCHEMA__._setting('fraiseql.traceparent'));
  RETURN response;
END $$;

-- FraiseQL's mutation semantics for emit_mutation() and emit(): its status taxonomy as an allow-list,
-- and its operation vocabulary (INSERT, UPDATE, DELETE, CUSTOM; CREATE is an alias of INSERT).

-- The operation a mutation's name implies: create_order, createOrder and CreateOrder are INSERT, and
-- likewise for UPDATE and DELETE; a verb counts only as the name's first word (addressBook is CUSTOM).
CREATE OR REPLACE FUNCTION __SCHEMA__._operation_from_name(name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN name ~* '^(create|insert|add|register|new)(_|$)'
      OR name ~ '^([Cc]reate|[Ii]nsert|[Aa]dd|[Rr]egister|[Nn]ew)[A-Z0-9]' THEN 'INSERT'
    WHEN name ~* '^(update|set|edit|change|modify|patch)(_|$)'
      OR name ~ '^([Uu]pdate|[Ss]et|[Ee]dit|[Cc]hange|[Mm]odify|[Pp]atch)[A-Z0-9]' THEN 'UPDATE'
    WHEN name ~* '^(delete|remove|archive|destroy)(_|$)'
      OR name ~ '^([Dd]elete|[Rr]emove|[Aa]rchive|[Dd]estroy)[A-Z0-9]' THEN 'DELETE'
    ELSE 'CUSTOM'
  END $$;

-- An operation as written (any case), in the one vocabulary: CREATE → INSERT, everything upper-cased.
CREATE OR REPLACE FUNCTION __SCHEMA__._operation(op text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN upper(op) = 'CREATE' THEN 'INSERT' ELSE upper(op) END $$;

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
          coalesce(__SCHEMA__._operation(nullif(CASE WHEN jsonb_typeof(payload) = 'object' THEN payload->>'operation' END, '')),
                   'CUSTOM'),
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
-- Reads both mutation_response shapes and records an event only for a mutation that changed state:
--   v2 (succeeded, state_changed, ...): succeeded AND state_changed;
--   legacy (status, message, entity_id, ...): status success, new, created, updated or deleted, alone or
--   with a ":detail" (created:imported). FraiseQL's error classes (validation, conflict, not_found,
--   unauthorized, forbidden, internal, transaction_failed, timeout, rate_limited, service_unavailable),
--   failed, error and noop record nothing; so does any other status, with a WARNING naming it.
-- The operation: the argument, else the legacy status (new/created → INSERT, updated → UPDATE,
-- deleted → DELETE), else the mutation's name (snake_case or camelCase), else CUSTOM.
CREATE OR REPLACE FUNCTION __SCHEMA__.emit_mutation(mutation text, response anyelement, operation text DEFAULT NULL)
RETURNS anyelement LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r      jsonb := to_jsonb(response);
  v_st   text;
  v_kind text;
  v_op   text := __SCHEMA__._operation(nullif(operation, ''));
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
      RETURN response;                                     -- failed, or a no-op
    END IF;
  ELSIF r ? 'status' THEN                                  -- legacy shape
    v_st := lower(btrim(coalesce(r->>'status', '')));
    v_kind := split_part(v_st, ':', 1);
    IF v_kind IN ('validation', 'conflict', 'not_found', 'unauthorized', 'forbidden', 'internal',
                  'transaction_failed', 'timeout', 'rate_limited', 'service_unavailable',
                  'failed', 'error', 'noop') THEN
      RETURN response;                                     -- an error or a no-op
    END IF;
    IF v_kind NOT IN ('success', 'new', 'created', 'updated', 'deleted') THEN
      RAISE WARNING 'fraiseql_relay.emit_mutation(%): unknown status %: no event recorded', mutation,
        coalesce(quote_literal(r->>'status'), 'NULL')
        USING HINT = 'Success statuses are success, new, created, updated and deleted (optionally with ":detail"); '
                     'FraiseQL''s error classes, failed, error and noop record nothing.';
      RETURN response;
    END IF;
    IF v_op IS NULL THEN
      v_op := CASE v_kind WHEN 'new' THEN 'INSERT' WHEN 'created' THEN 'INSERT'
                          WHEN 'updated' THEN 'UPDATE' WHEN 'deleted' THEN 'DELETE' END;
    END IF;
  ELSE
    RAISE EXCEPTION 'fraiseql_relay.emit_mutation(%): response has neither "succeeded" nor "status"', mutation
      USING HINT = 'Pass the function''s mutation_response row (v2: succeeded, state_changed, ...; legacy: status, message, ...)';
  END IF;

  INSERT INTO __SCHEMA__.outbox (mutation, operation, entity_type, entity_id, entity, entity_before,
                                 updated_fields, metadata, tenant_id, user_id, traceparent)
  VALUES (mutation, coalesce(v_op, __SCHEMA__._operation_from_name(mutation)),
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

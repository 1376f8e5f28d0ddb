-- emit() refuses the headers the application may not set: Nats-* (NATS JetStream interprets them:
-- Nats-Msg-Id is the relay's de-duplication id, Nats-Expected-* make the stream refuse the message
-- forever, Nats-Rollup purges the stream) and Fraiseql-* (the relay's own, which subscribers trust),
-- in any case. Otherwise the definition of 004_fraiseql_semantics.sql.

-- A raw event to an explicit subject. Returns the event id.
CREATE OR REPLACE FUNCTION __SCHEMA__.emit(subject text, payload jsonb, headers jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_id       uuid;
  v_reserved text;
BEGIN
  IF subject IS NULL OR subject !~ '^[^.*>[:space:]]+(\.[^.*>[:space:]]+)*$' THEN
    RAISE EXCEPTION 'fraiseql_relay.emit: invalid NATS subject %', coalesce(quote_literal(subject), 'NULL')
      USING HINT = 'A subject is dot-separated tokens without spaces or wildcards, e.g. fraiseql.order.created';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION 'fraiseql_relay.emit: headers must be a JSON object of strings';
  END IF;
  IF headers IS NOT NULL THEN
    SELECT k INTO v_reserved FROM jsonb_object_keys(emit.headers) AS k
     WHERE k ~* '^(nats|fraiseql)-' ORDER BY k LIMIT 1;
    IF v_reserved IS NOT NULL THEN
      RAISE EXCEPTION 'fraiseql_relay.emit: header % is reserved',
        quote_literal(CASE WHEN length(v_reserved) > 100 THEN left(v_reserved, 100) || '…' ELSE v_reserved END)
        USING ERRCODE = 'invalid_parameter_value',
              DETAIL = CASE WHEN v_reserved ~* '^nats-'
                            THEN 'NATS JetStream interprets Nats-* headers: Nats-Msg-Id is the relay''s de-duplication id, '
                                 'Nats-Expected-* make the stream refuse the message, Nats-Rollup purges the stream.'
                            ELSE 'The relay sets the Fraiseql-* headers (event id, mutation, entity type, operation, tenant), '
                                 'which subscribers trust.' END,
              HINT = 'Give the header another name (e.g. X-Request-Id); names starting with Nats- or Fraiseql- '
                     '(in any case) are reserved. The tenant, user and trace context come from the settings '
                     'fraiseql.tenant_id, fraiseql.user_id and fraiseql.traceparent.';
    END IF;
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

-- The order service's own schema, FraiseQL style: tables, mutation functions returning
-- app.mutation_response, and the SQL handler of the payment events it subscribes to.
-- Apply it before `fraiseql-relay migrate` (the table rule's table must exist); the functions
-- call fraiseql_relay.emit_mutation, which migrate installs (PL/pgSQL resolves it at call time).

CREATE SCHEMA IF NOT EXISTS app;

-- FraiseQL's mutation_response (v2)
DO $$ BEGIN
  CREATE TYPE app.mutation_response AS (
    succeeded boolean, state_changed boolean, error_class text, status_detail text, http_status smallint,
    message text, entity_id uuid, entity_type text, entity jsonb, updated_fields text[], cascade jsonb,
    error_detail jsonb, metadata jsonb);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE TABLE IF NOT EXISTS app.tb_order (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  customer   text NOT NULL,
  total      numeric(10, 2) NOT NULL,
  status     text NOT NULL DEFAULT 'new',
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS app.tb_payment (
  payment_id  text PRIMARY KEY,
  order_id    uuid NOT NULL REFERENCES app.tb_order,
  amount      numeric(10, 2) NOT NULL,
  captured_at timestamptz NOT NULL DEFAULT now()
);

-- createOrder: the event is recorded in the same transaction (fraiseql.order.created)
CREATE OR REPLACE FUNCTION app.fn_create_order(p_customer text, p_total numeric)
RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE
  v_order app.tb_order;
BEGIN
  INSERT INTO app.tb_order (customer, total) VALUES (p_customer, p_total) RETURNING * INTO v_order;
  RETURN fraiseql_relay.emit_mutation('create_order',
    ROW(true, true, NULL, 'created', 201, 'order created', v_order.id, 'Order', to_jsonb(v_order),
        NULL, NULL, NULL, jsonb_build_object('channel', 'web'))::app.mutation_response);
END $$;

-- shipOrder: no emit_mutation; the table rule on app.tb_order publishes the change (and the webhook)
CREATE OR REPLACE FUNCTION app.fn_ship_order(p_id uuid)
RETURNS app.mutation_response LANGUAGE plpgsql AS $$
DECLARE
  v_order app.tb_order;
BEGIN
  UPDATE app.tb_order SET status = 'shipped' WHERE id = p_id AND status = 'paid' RETURNING * INTO v_order;
  IF NOT FOUND THEN
    RETURN ROW(false, false, 'conflict', 'not_paid', 409, 'only a paid order ships', p_id, 'Order',
               NULL, NULL, NULL, NULL, NULL)::app.mutation_response;
  END IF;
  RETURN ROW(true, true, NULL, 'updated', 200, 'order shipped', v_order.id, 'Order', to_jsonb(v_order),
             ARRAY['status'], NULL, NULL, NULL)::app.mutation_response;
END $$;

-- [[observers.subscribe]] handler for fraiseql.payment.captured: the relay calls it in the same
-- transaction as the inbox row, so it runs once per event however often the event is delivered
CREATE OR REPLACE FUNCTION app.fn_apply_payment(p_event jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO app.tb_payment (payment_id, order_id, amount)
  VALUES (p_event->>'id', (p_event->'entity'->>'order_id')::uuid, (p_event->'entity'->>'amount')::numeric);
  UPDATE app.tb_order SET status = 'paid' WHERE id = (p_event->'entity'->>'order_id')::uuid AND status = 'new';
END $$;

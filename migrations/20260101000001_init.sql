-- Orders and their status history.
CREATE TABLE orders (
    id              uuid PRIMARY KEY,
    -- Insertion order: the tie-break when two orders share a created_at.
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    user_id         text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 64),
    value           numeric(14, 2) NOT NULL CHECK (value > 0),
    installment     integer NOT NULL CHECK (installment >= 1),
    method          text NOT NULL CHECK (method IN ('credit_card', 'debit_card', 'transfer', 'cash')),
    status          text NOT NULL CHECK (status IN ('PROCESSING', 'APPROVED', 'CANCELED')),
    cancel_reason   text CHECK ((status = 'CANCELED') = (cancel_reason IS NOT NULL)),
    correlation_id  text NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX orders_by_user_newest ON orders (user_id, created_at DESC, seq DESC);
CREATE INDEX orders_processing ON orders (created_at) WHERE status = 'PROCESSING';

CREATE TABLE order_status_transitions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id        uuid NOT NULL REFERENCES orders (id),
    from_status     text,
    to_status       text NOT NULL,
    cancel_reason   text,
    at              timestamptz NOT NULL
);
CREATE INDEX order_status_transitions_by_order ON order_status_transitions (order_id, id);

-- The order state machine, enforced here whatever the client: an order is
-- created PROCESSING and may then become APPROVED or CANCELED, once. Every
-- transition is recorded.
CREATE FUNCTION orders_record_creation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'PROCESSING' THEN
        RAISE EXCEPTION 'order % must be created PROCESSING, not %', NEW.id, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO order_status_transitions (order_id, from_status, to_status, cancel_reason, at)
    VALUES (NEW.id, NULL, NEW.status, NULL, NEW.created_at);
    RETURN NEW;
END $$;

CREATE FUNCTION orders_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT (OLD.status = 'PROCESSING' AND NEW.status IN ('APPROVED', 'CANCELED')) THEN
            RAISE EXCEPTION 'order % cannot go from % to %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        INSERT INTO order_status_transitions (order_id, from_status, to_status, cancel_reason, at)
        VALUES (NEW.id, OLD.status, NEW.status, NEW.cancel_reason, NEW.updated_at);
    ELSIF OLD.status <> 'PROCESSING' AND NEW.cancel_reason IS DISTINCT FROM OLD.cancel_reason THEN
        RAISE EXCEPTION 'order % is % and can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_record_creation AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_record_creation();
CREATE TRIGGER orders_guard_transition BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_guard_transition();

-- One saga per order: the state machine's state as JSON, and when it next needs attention.
CREATE TABLE sagas (
    order_id        uuid PRIMARY KEY REFERENCES orders (id),
    state           jsonb NOT NULL,
    next_deadline   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sagas_due ON sagas (next_deadline) WHERE next_deadline IS NOT NULL;

-- Message ids each consumer has already handled: redelivery is a no-op.
CREATE TABLE processed_messages (
    consumer        text NOT NULL,
    message_id      uuid NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX processed_messages_age ON processed_messages (processed_at);

-- Transactional outbox: messages written with the state change that caused
-- them; the relay publishes and deletes them.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      uuid NOT NULL UNIQUE,
    topic           text NOT NULL,
    message_key     text NOT NULL,
    message_type    text NOT NULL,
    correlation_id  text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL
);

-- Every saga event, kept; logged_at says when the relay copied it to the MongoDB event log.
CREATE TABLE saga_events (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    order_id        uuid NOT NULL REFERENCES orders (id),
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    occurred_at     timestamptz NOT NULL,
    logged_at       timestamptz
);
CREATE INDEX saga_events_pending ON saga_events (seq) WHERE logged_at IS NULL;
CREATE INDEX saga_events_by_order ON saga_events (order_id, seq);

-- Idempotency-Key of POST /api/orders: the request it was first used with and its order.
CREATE TABLE idempotency_keys (
    key             text PRIMARY KEY,
    request         jsonb NOT NULL,
    order_id        uuid NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Wake the relay as soon as a transaction that wrote to an outbox commits.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ordersaga_outbox', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
CREATE TRIGGER saga_events_notify AFTER INSERT ON saga_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

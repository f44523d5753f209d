-- A lean data path (docs/performance.md, "the saga log"):
--
-- * One append-only saga log replaces the outbox and the saga_events table.
--   Each saga event is a row, written once and never updated; the Kafka
--   message an event sends (the order's `order-created`, a command, the
--   settlement) rides on the same row. Relays keep a position per feed
--   (messages to Kafka, events to MongoDB) in `relay_feeds` instead of
--   deleting or marking rows. Rows are ordered by (txid, seq): a relay reads
--   only rows of transactions older than every transaction still running
--   (pg_snapshot_xmin), so a row committed late can never fall behind a
--   position already passed. Old rows are trimmed in batches, off the hot path.
-- * The saga's state lives on its order row (`saga`, `next_deadline`), updated
--   in place; duplicate replies are recognised by that state, so
--   processed_messages goes.
-- * Status transitions are the log's `order_created` and `status_changed`
--   events (view `order_status_transitions`, the old table's name); the
--   trigger still refuses any change the state machine does not allow, but
--   writes no row of its own.
--
-- The upgrade keeps every order in whatever state it is in: sagas move onto
-- their orders, events and unsent messages into the log, and the feeds start
-- where the old relays had got to (events not yet in MongoDB are copied again,
-- MongoDB dropping the ones it has by event id).

CREATE TABLE saga_log (
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    order_id        uuid NOT NULL,
    occurred_at     timestamptz NOT NULL,
    -- The saga event, for the event log (absent on a message-only row).
    event_id        uuid,
    event_type      text,
    payload         jsonb,
    -- The Kafka message the event sends, keyed by order_id (absent on most rows).
    message_id      uuid,
    topic           text,
    message_type    text,
    correlation_id  text,
    message         jsonb,
    PRIMARY KEY (txid, seq),
    CHECK (event_id IS NOT NULL OR message_id IS NOT NULL),
    CHECK ((event_id IS NULL) = (event_type IS NULL) AND (event_id IS NULL) = (payload IS NULL)),
    CHECK ((message_id IS NULL) = (topic IS NULL)
       AND (message_id IS NULL) = (message_type IS NULL)
       AND (message_id IS NULL) = (correlation_id IS NULL)
       AND (message_id IS NULL) = (message IS NULL))
);

-- Where each feed's relay has got to, and which relay holds the feed now.
CREATE TABLE relay_feeds (
    feed            text PRIMARY KEY CHECK (feed IN ('messages', 'events')),
    after_txid      xid8 NOT NULL,
    after_seq       bigint NOT NULL,
    holder          uuid,
    held_until      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The saga on its order. Room on each page for the in-place updates to stay
-- heap-only (no index touches `saga` or `next_deadline`).
ALTER TABLE orders ADD COLUMN saga jsonb, ADD COLUMN next_deadline timestamptz;
ALTER TABLE orders SET (fillfactor = 70);
UPDATE orders o SET saga = s.state, next_deadline = s.next_deadline
  FROM sagas s WHERE s.order_id = o.id;

-- Every event so far, in its old order (their seq orders an order's timeline).
INSERT INTO saga_log (order_id, occurred_at, event_id, event_type, payload)
SELECT order_id, occurred_at, event_id, event_type, payload
  FROM saga_events ORDER BY seq;

-- The events feed starts before the first event MongoDB had not taken yet.
INSERT INTO relay_feeds (feed, after_txid, after_seq)
SELECT 'events', pg_current_xact_id(),
       coalesce((SELECT min(l.seq) - 1 FROM saga_log l JOIN saga_events e USING (event_id)
                  WHERE e.logged_at IS NULL),
                (SELECT max(seq) FROM saga_log),
                0);

-- Every message already sent had left the outbox: the messages feed starts
-- after the events, and the messages still waiting come next.
INSERT INTO relay_feeds (feed, after_txid, after_seq)
SELECT 'messages', pg_current_xact_id(), coalesce((SELECT max(seq) FROM saga_log), 0);
INSERT INTO saga_log (order_id, occurred_at, message_id, topic, message_type, correlation_id, message)
SELECT message_key::uuid, created_at, message_id, topic, message_type, correlation_id, payload
  FROM outbox ORDER BY id;

DROP TABLE outbox;
DROP TABLE saga_events;
DROP TABLE processed_messages;
DROP TABLE sagas;

-- The state machine of an order, still enforced whatever the client; the
-- history is the log's (see order_status_transitions below).
DROP TRIGGER orders_record_creation ON orders;
DROP FUNCTION orders_record_creation();
CREATE FUNCTION orders_guard_creation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'PROCESSING' THEN
        RAISE EXCEPTION 'order % must be created PROCESSING, not %', NEW.id, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER orders_guard_creation BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_guard_creation();

CREATE OR REPLACE FUNCTION orders_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT (OLD.status = 'PROCESSING' AND NEW.status IN ('APPROVED', 'CANCELED')) THEN
            RAISE EXCEPTION 'order % cannot go from % to %', OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF OLD.status <> 'PROCESSING' AND NEW.cancel_reason IS DISTINCT FROM OLD.cancel_reason THEN
        RAISE EXCEPTION 'order % is % and can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- The transitions are the log's `order_created` and `status_changed` events
-- (every order's were also written there before this upgrade, so nothing is
-- lost); a view keeps the table's name and columns for those who query it.
-- The log's trim keeps these two events of every order.
DROP TABLE order_status_transitions;
CREATE VIEW order_status_transitions AS
SELECT seq AS id, order_id,
       CASE event_type WHEN 'order_created' THEN NULL ELSE payload->>'from' END AS from_status,
       CASE event_type WHEN 'order_created' THEN 'PROCESSING' ELSE payload->>'to' END AS to_status,
       payload->>'cancel_reason' AS cancel_reason,
       occurred_at AS at
  FROM saga_log WHERE event_type IN ('order_created', 'status_changed');

-- The sweeper looks among PROCESSING orders (orders_processing) for due deadlines.
DROP INDEX IF EXISTS sagas_due;

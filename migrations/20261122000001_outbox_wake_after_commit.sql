-- The relays are now woken after commit by the writers themselves
-- (PgStore::outbox_written and announce_outbox). A NOTIFY inside the writing
-- transaction took a database-wide lock from commit until flush, which
-- serialized every order insert and saga step (no group commit).
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP TRIGGER IF EXISTS saga_events_notify ON saga_events;
DROP FUNCTION IF EXISTS outbox_notify();

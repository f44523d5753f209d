-- A process that runs a relay hands the messages its writers commit straight
-- to that relay (PgStore::with_hand_off). The row is still written, as the
-- fallback, with a lease: until handed_until passes, no relay's scan of the
-- table sends it. The hand-off deletes the row once the broker has it; if
-- the process dies first, the lease ends and any relay sends it.
ALTER TABLE outbox ADD COLUMN handed_until timestamptz;

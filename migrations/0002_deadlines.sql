-- Version 2: what the deadline pass needs on courier_orders.
--
-- IF NOT EXISTS because a database made by schema.sql between c89eef4 and 48988f2 has
-- `completed_by` but not `assigned_on`. Both columns are added by one ALTER TABLE (one
-- ACCESS EXCLUSIVE lock, taken under the migrator's lock_timeout); a column added with a
-- constant or now() as its default costs no table rewrite. The backfill then updates every
-- completed delivery under that lock: on a very large table, run `service-courier migrate`
-- at a quiet time.

-- completed_by: what ended a completed delivery: 'event' (a completed or delivered event) or
-- 'deadline' (the deadline pass, DEADLINE_POLICY=complete). NULL while active.
-- assigned_on: when the service made the assignment, by the database's clock (`assigned_at` is
-- the event's time). The deadline pass completes a delivery only once the courier has also held
-- it for its whole window by this clock: when a backlog is drained, `assigned_at` may be long
-- past, and the order's own `cancelled` or `completed` is still on its way.
ALTER TABLE courier_orders
    ADD COLUMN IF NOT EXISTS completed_by TEXT CHECK (completed_by IN ('event', 'deadline')),
    ADD COLUMN IF NOT EXISTS assigned_on  TIMESTAMPTZ NOT NULL DEFAULT now();

-- Deliveries completed before `completed_by` existed were all completed by events.
UPDATE courier_orders SET completed_by = 'event'
WHERE completed_at IS NOT NULL AND completed_by IS NULL;

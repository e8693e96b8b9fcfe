-- pgbench script: the service's own SQL for one order's life, one transaction per event
-- (created, then completed), prepared like the service's statements. The per-event ceiling
-- the service's throughput is compared with. Each run of the script is two events.
\set n random(1, 2000000000)
BEGIN;
SELECT state, courier_id FROM orders WHERE order_id = 'pb-' || :n FOR UPDATE;
INSERT INTO orders (order_id, state) VALUES ('pb-' || :n, 'unseen') ON CONFLICT (order_id) DO NOTHING RETURNING state, courier_id;
SELECT id AS courier FROM couriers WHERE status = 'available' ORDER BY completed_deliveries, available_since, id LIMIT 1 FOR UPDATE SKIP LOCKED \gset
WITH delivery AS (INSERT INTO courier_orders (order_id, courier_id, assigned_at, deadline) VALUES ('pb-' || :n, :courier, now(), now() + interval '5 minutes')), courier AS (UPDATE couriers SET status = 'busy', updated_at = now() WHERE id = :courier) UPDATE orders SET state = 'assigned', courier_id = :courier, waiting_seq = NULL, updated_at = now() WHERE order_id = 'pb-' || :n;
COMMIT;
BEGIN;
SELECT state, courier_id FROM orders WHERE order_id = 'pb-' || :n FOR UPDATE;
WITH delivery AS (UPDATE courier_orders SET completed_at = now() WHERE order_id = 'pb-' || :n AND courier_id = :courier AND completed_at IS NULL RETURNING courier_id), courier AS (UPDATE couriers SET completed_deliveries = completed_deliveries + 1, updated_at = now() WHERE id IN (SELECT courier_id FROM delivery)), done AS (UPDATE orders SET state = 'completed', courier_id = :courier, waiting_seq = NULL, updated_at = now() WHERE order_id = 'pb-' || :n AND EXISTS (SELECT 1 FROM delivery) RETURNING 1) SELECT count(*) FROM done;
SELECT c.id, c.status, c.transport_type, (SELECT co.order_id FROM courier_orders co WHERE co.courier_id = c.id AND co.completed_at IS NULL) FROM couriers c WHERE c.id = :courier FOR UPDATE OF c;
SELECT order_id FROM orders WHERE waiting_seq IS NOT NULL ORDER BY waiting_seq LIMIT 1 FOR UPDATE SKIP LOCKED;
UPDATE couriers SET status = 'available', available_since = now(), updated_at = now() WHERE id = :courier;
COMMIT;

-- The status guards of orders (20261203000001_saga_log.sql) fire only on a
-- row that breaks their rule. A trigger's WHEN condition is evaluated by the
-- executor without calling PL/pgSQL, so every insert and update that keeps the
-- rules (all of ordersaga's own: one insert and two or three updates per
-- order) no longer pays a function call per row. The functions are unchanged
-- and still raise the same errors; the conditions below are exactly theirs.

DROP TRIGGER orders_guard_creation ON orders;
CREATE TRIGGER orders_guard_creation BEFORE INSERT ON orders
    FOR EACH ROW WHEN (NEW.status <> 'PROCESSING')
    EXECUTE FUNCTION orders_guard_creation();

DROP TRIGGER orders_guard_transition ON orders;
CREATE TRIGGER orders_guard_transition BEFORE UPDATE ON orders
    FOR EACH ROW WHEN (
        (NEW.status IS DISTINCT FROM OLD.status
         AND NOT (OLD.status = 'PROCESSING' AND NEW.status IN ('APPROVED', 'CANCELED')))
        OR (NEW.status IS NOT DISTINCT FROM OLD.status
            AND OLD.status <> 'PROCESSING'
            AND NEW.cancel_reason IS DISTINCT FROM OLD.cancel_reason))
    EXECUTE FUNCTION orders_guard_transition();

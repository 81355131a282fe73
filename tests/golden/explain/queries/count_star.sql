-- dataset: shifts
-- epsilon: 1.0
SELECT COUNT(*) FROM shifts

-- dataset: shifts
-- epsilon: 5.0
SELECT COUNT(*) FROM shifts

-- dataset: shifts
-- epsilon: 1.0
SELECT member_id, COUNT(*) FROM shifts GROUP BY member_id

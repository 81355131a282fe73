-- dataset: shifts
-- epsilon: 1.0
SELECT DATE_TRUNC('month', day) AS month, SUM(hours) AS total_hours FROM shifts GROUP BY month

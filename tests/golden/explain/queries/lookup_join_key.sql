-- dataset: shifts
-- epsilon: 1.0
SELECT climate, SUM(hours) AS total_hours FROM shifts JOIN regions USING (region) GROUP BY climate

-- dataset: shifts
-- epsilon: 1.0
SELECT MEDIAN(hours) AS median_hours, PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY age) AS p90_age FROM shifts

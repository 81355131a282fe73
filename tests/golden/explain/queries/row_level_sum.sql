-- dataset: shifts_rows
-- epsilon: 1.0
SELECT region, SUM(age) AS total_age, STDDEV_SAMP(hours) AS sd_hours FROM shifts_rows GROUP BY region

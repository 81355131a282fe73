-- dataset: shifts
-- epsilon: 1.0
SELECT region, VAR_SAMP(hours) AS var_hours, STDDEV_POP(age) AS sd_age FROM shifts GROUP BY region

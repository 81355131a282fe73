-- dataset: shifts_zcdp
-- epsilon: 1.0
-- delta: 1e-6
-- buyer: uni_lab
SELECT city, MIN(hours) AS low_hours, SUM(hours) AS total_hours FROM shifts_zcdp GROUP BY city

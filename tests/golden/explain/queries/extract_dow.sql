-- dataset: shifts
-- epsilon: 1.0
SELECT EXTRACT(DOW FROM day) AS weekday, COUNT(*) AS n FROM shifts GROUP BY weekday

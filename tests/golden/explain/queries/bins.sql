-- dataset: shifts
-- epsilon: 1.0
SELECT FLOOR(age / 10) * 10 AS decade, COUNT(*) AS n FROM shifts GROUP BY decade

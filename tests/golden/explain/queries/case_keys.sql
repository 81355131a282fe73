-- dataset: shifts
-- epsilon: 1.0
SELECT CASE WHEN age < 30 THEN 'young' WHEN age < 60 THEN 'middle' ELSE 'older' END AS band, COUNT(*) AS n
FROM shifts GROUP BY band

-- dataset: shifts
-- epsilon: 1.0
SELECT region, COUNT(*) AS n, AVG(hours) AS avg_hours FROM shifts WHERE age > 30
GROUP BY region HAVING COUNT(*) > 5 ORDER BY n DESC LIMIT 3 OFFSET 1

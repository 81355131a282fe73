-- dataset: shifts
-- epsilon: 1.0
SELECT COUNT(hours) AS n FROM shifts
WHERE region IN ('north', 'south') AND (hours > 2 OR city LIKE 'a%') AND age IS NOT NULL

-- dataset: shifts
-- epsilon: 1.0
SELECT MIN(age) AS youngest, MAX(hours) AS longest FROM shifts

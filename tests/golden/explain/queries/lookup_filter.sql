-- dataset: shifts
-- epsilon: 1.0
SELECT COUNT(*) AS n FROM shifts JOIN regions USING (region) WHERE population > 100

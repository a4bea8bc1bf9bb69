DROP TABLE plan_step_refs;
DROP TABLE plan_versions;
DROP TABLE plans;
DROP TABLE steps;

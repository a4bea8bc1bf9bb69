DROP TABLE step_logs;
DROP TABLE execution_events;
DROP TABLE step_runs;
DROP TABLE executions;

ALTER TABLE executions DROP COLUMN auto_cleanup_secs;
DROP TABLE recoveries;
DROP TABLE providers;

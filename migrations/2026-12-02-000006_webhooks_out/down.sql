DROP TRIGGER execution_events_webhook_outbox ON execution_events;
DROP FUNCTION webhook_outbox();
DROP TABLE webhook_delivery_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_subscriptions;

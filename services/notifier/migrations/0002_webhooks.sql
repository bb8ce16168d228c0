-- Webhooks: a subscription may be told by an HTTP POST to its receiver's URL instead of an email. The body is
-- signed with the subscription's own secret (shown once, when the subscription is made); the attempts go to the
-- same ledger as the emails', with the HTTP status. See services/notifier/README.md ("Webhooks").

ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_channel_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_channel_check CHECK (channel IN ('email', 'webhook'));
ALTER TABLE subscriptions ADD COLUMN webhook_url text;
-- Kept as it is, not hashed: the notifier needs it to sign every body it sends.
ALTER TABLE subscriptions ADD COLUMN webhook_secret text;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_webhook_check CHECK (
    (channel = 'webhook') = (webhook_url IS NOT NULL AND webhook_secret IS NOT NULL)
);

-- A webhook delivery is one subscription's notices (each subscription has its own receiver).
ALTER TABLE deliveries ADD COLUMN channel text NOT NULL DEFAULT 'email' CHECK (channel IN ('email', 'webhook'));

-- 'rejected': a webhook receiver's 4xx other than 410 and 429. The delivery fails; the channel goes on.
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_outcome_check;
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_outcome_check
    CHECK (outcome IN ('accepted', 'temporary', 'permanent', 'rejected'));
ALTER TABLE delivery_attempts ADD COLUMN channel text NOT NULL DEFAULT 'email' CHECK (channel IN ('email', 'webhook'));
-- The receiver's HTTP status (NULL: no answer); its answer, shortened, is in smtp_response.
ALTER TABLE delivery_attempts ADD COLUMN http_status integer;

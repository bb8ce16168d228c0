"""The notifier: subscriptions to programs and datasets, and the notices that tell subscribers what changed."""

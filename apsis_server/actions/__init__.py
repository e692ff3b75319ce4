"""Job actions fired when runs finish: schedule, retry, webhook, email, plugin types."""

"""Alerts: rules as data, evaluation, grouping and inhibition, channels, durable delivery.

Data flows one way, as everywhere in the collector:

    store (fleet, tickets)  ->  evaluate.firing (pure: rules + fleet + clock -> alerts)
                            ->  evaluate.inhibit -> evaluate.plan (groups -> notifications)
                            ->  recipients.address (who gets which items, quiet hours)
                            ->  render (Vietnamese / English text)
                            ->  store outbox (one row per notification, recipient, channel)
                            ->  worker (claim, send through a channel, mark sent / retry)

``service`` is the thin shell that runs these in the collector's app
(``cleanup_ctx``); ``report`` builds and schedules the monthly B2 email;
``web`` holds the dashboard pages; ``cli`` the ``loa-collector`` commands.
"""

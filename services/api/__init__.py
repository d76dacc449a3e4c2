"""The status API: reads PostgreSQL, accepts operator commands and publishes them as
events through the outbox (DESIGN §1.5). ``python -m services.api`` serves it."""

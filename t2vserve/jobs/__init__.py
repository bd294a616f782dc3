"""The async jobs service: the /v1/videos API, job records in Redis, Dramatiq workers, storage, webhooks."""

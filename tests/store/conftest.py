from .backends import postgres_database, postgres_url, repo, store_url  # noqa: F401

"""The /recommend service: FastAPI over a bundle's item index, user codes cached in Redis."""

"""Search indexes, derived from the database and rebuilt or replayed from it."""

"""Knowledge bases: collections of versioned documents, parsed, chunked, embedded, indexed
lexically and by vectors, searched with hybrid retrieval, and cited by RAG answers."""

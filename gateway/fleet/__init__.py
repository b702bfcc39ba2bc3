"""Several serving processes on the same ports: the supervisor, its workers, and the link between them."""

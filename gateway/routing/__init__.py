"""Routing: which model version serves a request (champion, challenger, pinned) and what is mirrored."""

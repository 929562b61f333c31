"""`make demo`: one process tree that runs a real model fleet end to end on this machine."""

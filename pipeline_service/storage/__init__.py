"""State dirs on object stores: the client (store), snapshots, checkpoints and the lease."""

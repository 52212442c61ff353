"""Subspace diagnostics of federated rounds (docs/methods.md, Subspace-Reg): the maths on plain
tensors (maths.py) and its wiring to a round's uploads and server state (rounds.py)."""

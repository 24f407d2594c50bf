"""Toy problems: the CAGrad toy and the loss-scale invariance toy."""

"""Representations: ``nn.Module``s owning the optimizable 3D state. They know nothing of priors or guidance."""

"""2D diffusion priors behind one contract (:class:`dreamcore.priors.base.Prior`)."""

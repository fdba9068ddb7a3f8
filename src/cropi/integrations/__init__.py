"""Trainers and engines that drive cropi's stages: TRL, verl and Ray.  Each needs its own extra."""

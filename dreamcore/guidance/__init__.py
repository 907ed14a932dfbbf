"""Guidance losses (one file per method) and their shared pieces (:mod:`dreamcore.guidance.common`)."""

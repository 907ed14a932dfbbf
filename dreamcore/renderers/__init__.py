"""Renderers: pure functions of (representation, cameras, background) -> RenderOutput."""

from dreamcore.renderers.output import RenderOutput

__all__ = ["RenderOutput"]

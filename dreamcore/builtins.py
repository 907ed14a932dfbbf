"""Imports every module that registers one of dreamcore's own parts, and the named systems."""

import dreamcore.export.exporters  # noqa: F401
import dreamcore.guidance.csd  # noqa: F401
import dreamcore.guidance.ism  # noqa: F401
import dreamcore.guidance.nfsd  # noqa: F401
import dreamcore.guidance.sdi  # noqa: F401
import dreamcore.guidance.sds  # noqa: F401
import dreamcore.guidance.sjc  # noqa: F401
import dreamcore.guidance.vsd  # noqa: F401
import dreamcore.priors.deepfloyd  # noqa: F401
import dreamcore.priors.reference  # noqa: F401
import dreamcore.priors.sdxl  # noqa: F401
import dreamcore.priors.stable_diffusion  # noqa: F401
import dreamcore.renderers.background  # noqa: F401
import dreamcore.renderers.mesh  # noqa: F401
import dreamcore.renderers.volume  # noqa: F401
import dreamcore.representations.dmtet  # noqa: F401
import dreamcore.representations.mesh  # noqa: F401
import dreamcore.representations.nerf  # noqa: F401
import systems  # noqa: F401
import dreamcore.renderers.splat  # noqa: F401
import dreamcore.representations.gaussians  # noqa: F401
import dreamcore.export.ply  # noqa: F401

"""Where dreamcore's own parts are registered: kind → name → the module whose import registers it.

A table, as entry points would be, so that nothing here imports the parts: :func:`dreamcore.registry.lookup`
imports a part's module the first time its name is asked for (start-up stays light and the registry, at the
bottom of the layers, depends on none of them). ``tests/test_layers.py`` checks that the table and the
``@register`` decorators in the code agree.
"""

BUILTINS: dict[str, dict[str, str]] = {
    "background": {
        "learned": "dreamcore.renderers.background",
        "solid": "dreamcore.renderers.background",
    },
    "exporter": {
        "glb": "dreamcore.export.exporters",
        "obj": "dreamcore.export.exporters",
        "ply": "dreamcore.export.ply",
        "turntable": "dreamcore.export.exporters",
    },
    "guidance": {
        "asd-adv": "dreamcore.guidance.asd_adv",
        "asd-async": "dreamcore.guidance.asd_async",
        "bsd": "dreamcore.guidance.bsd",
        "cds": "dreamcore.guidance.cds",
        "cfd": "dreamcore.guidance.cfd",
        "coupled": "dreamcore.guidance.coupled",
        "csd": "dreamcore.guidance.csd",
        "dds": "dreamcore.guidance.dds",
        "dsd": "dreamcore.guidance.dsd",
        "esd": "dreamcore.guidance.vsd",
        "gcs": "dreamcore.guidance.gcs",
        "ism": "dreamcore.guidance.ism",
        "nfsd": "dreamcore.guidance.nfsd",
        "pds": "dreamcore.guidance.pds",
        "reward": "dreamcore.guidance.reward",
        "rsd": "dreamcore.guidance.rsd",
        "sdi": "dreamcore.guidance.sdi",
        "sir": "dreamcore.guidance.sir",
        "sds": "dreamcore.guidance.sds",
        "sjc": "dreamcore.guidance.sjc",
        "stein": "dreamcore.guidance.stein",
        "vsd": "dreamcore.guidance.vsd",
    },
    "prior": {
        "deepfloyd-if": "dreamcore.priors.deepfloyd",
        "pixel-diffusion": "dreamcore.priors.pixel",
        "multiview": "dreamcore.priors.multiview",
        "reference": "dreamcore.priors.reference",
        "sdxl": "dreamcore.priors.sdxl",
        "stable-diffusion": "dreamcore.priors.stable_diffusion",
    },
    "renderer": {
        "mesh": "dreamcore.renderers.mesh",
        "splat": "dreamcore.renderers.splat",
        "volume": "dreamcore.renderers.volume",
    },
    "representation": {
        "dmtet": "dreamcore.representations.dmtet",
        "gaussians": "dreamcore.representations.gaussians",
        "mesh": "dreamcore.representations.mesh",
        "nerf": "dreamcore.representations.nerf",
    },
    "reward": {
        "clip": "dreamcore.guidance.rewards",
        "constant": "dreamcore.guidance.rewards",
        "linear": "dreamcore.guidance.rewards",
        "reference": "dreamcore.guidance.rewards",
    },
    "system": {
        "dreamfusion": "dreamcore.systems.dreamfusion",
        "edit": "dreamcore.systems.edit",
        "gaussian": "dreamcore.systems.gaussian",
        "mesh": "dreamcore.systems.mesh",
    },
}

"""What diffusers' loaders need to find SnapGen's classes, which live outside the diffusers package.

``diffusers.AutoModel`` and ``DiffusionPipeline`` look a class name up inside ``diffusers`` unless the
saved directory ships a module file for it and the caller passes ``trust_remote_code=True``:
``AutoModel`` follows ``auto_map`` in config.json (written by ``register_for_auto_class``), a
pipeline follows ``_class_name: [module, class]`` in model_index.json. SnapGen writes those module
files as one import line each: the class always comes from the installed ``snapgen`` package,
never from code in the directory.
"""
from __future__ import annotations

from pathlib import Path


def reexport_source(cls: type) -> str:
    return (f"from {cls.__module__} import {cls.__name__}  # noqa: F401  (written by snapgen: the class "
            "comes from the installed package)\n")


def reexport_path(directory, cls: type) -> Path:
    return Path(directory) / f"{cls.__module__.rsplit('.', 1)[-1]}.py"


def write_reexport(directory, cls: type) -> Path:
    path = reexport_path(directory, cls)
    path.write_text(reexport_source(cls))
    return path


def is_reexport(directory, cls: type) -> bool:
    """Whether ``directory`` holds exactly the module file :func:`write_reexport` writes for ``cls``."""
    p = reexport_path(directory, cls)
    return p.is_file() and p.read_text() == reexport_source(cls)


class DiffusersModel:
    """Mixin (before diffusers' ``ModelMixin``) for SnapGen models saved with ``save_pretrained``.

    * ``derived_config``: config keys computed from ``arch`` in ``__init__`` under diffusers' usual
      names (``in_channels``, ``latent_channels``, ...), so pipelines can read them; written to
      config.json, not ``__init__`` arguments (on load they are recomputed, not warned about).
    * ``save_pretrained`` also writes the module file ``AutoModel.from_pretrained(dir,
      trust_remote_code=True)`` needs (the class is registered with ``register_for_auto_class``).
    """

    derived_config: tuple[str, ...] = ()

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        skip = set(cls.derived_config) | {"auto_map"}  # auto_map: AutoModel's, not an init argument
        return super().extract_init_dict({k: v for k, v in config_dict.items() if k not in skip}, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if Path(save_directory).is_dir():  # not on the ranks that save nothing (is_main_process=False)
            write_reexport(save_directory, type(self))

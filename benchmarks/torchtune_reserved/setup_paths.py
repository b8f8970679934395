"""Where torchtune@fef3ed10d and torchao 0.1 are, and stand-ins for the data-only imports.

TORCHTUNE_SRC: a checkout of pytorch/torchtune at fef3ed10d (2024-04-16, the commit the
published figures name); TORCHAO_SRC: a folder holding the ``torchao`` package of pytorch/ao at
tag v0.1 (torchtune's pin, ``pyproject.toml``: ``torchao==0.1``). Neither is installed: they
are put first on ``sys.path``. datasets, sentencepiece and omegaconf are only imported, never
used here: stand-ins take their place when missing.
"""
import os
import sys
import types


class _Dummy:
    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Dummy()

    def __getattr__(self, n):
        return _Dummy()

    def __class_getitem__(cls, k):
        return cls


def _stand_in(name):
    module = types.ModuleType(name)

    def getattr_(n):
        if n.startswith("__"):
            raise AttributeError(n)
        return _Dummy

    module.__getattr__ = getattr_
    module.__path__ = []
    return module


for _name in ["datasets", "sentencepiece", "omegaconf", "omegaconf.errors", "omegaconf.dictconfig"]:
    try:
        __import__(_name)
    except Exception:
        sys.modules[_name] = _stand_in(_name)
for _var in ("TORCHAO_SRC", "TORCHTUNE_SRC"):
    if not os.environ.get(_var):
        sys.exit(f"{_var}: set it to the source folder (see README.md)")
    sys.path.insert(0, os.environ[_var])

import importlib.metadata

import torch  # noqa: F401  (imported, so its __version__ is what package_versions reads)

from adaptermerge import provenance


def test_package_versions_match_installed_metadata():
    got = provenance.package_versions(("torch", "safetensors", "numpy", "peft"))
    for name in ("torch", "safetensors", "numpy", "peft"):
        assert got[name] == importlib.metadata.version(name), name
    assert got["python"].count(".") == 2


def test_package_versions_of_a_missing_package_is_none():
    assert provenance.package_versions(("surely-not-an-installed-package",))["surely-not-an-installed-package"] is None

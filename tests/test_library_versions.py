"""Every run records the installed library versions (transformer_lens was once recorded as 'unknown')."""

import importlib.metadata

from mechgrok.store import library_versions


def test_versions_come_from_the_installed_package_metadata():
    versions = library_versions()
    for key, dist in {
        "torch": "torch",
        "transformer_lens": "transformer-lens",
        "numpy": "numpy",
        "einops": "einops",
        "safetensors": "safetensors",
    }.items():
        assert versions[key] == importlib.metadata.version(dist), key
    assert "unknown" not in versions.values()


def test_a_missing_package_says_so():
    from mechgrok.store import _installed_version

    assert _installed_version("surely-not-a-mechgrok-dependency") == "not installed"

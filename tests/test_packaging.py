"""The npe2 manifest lives at the top level and is found in an editable install and in a wheel."""
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_valid_and_found_in_this_install():
    from npe2 import PluginManager, PluginManifest

    top = PluginManifest.from_file(ROOT / "napari.yaml")
    assert top.name == "napari-diffinfinite"
    pm = PluginManager()
    pm.discover()
    found = pm.get_manifest("napari-diffinfinite")
    assert found.name == top.name
    assert found.contributions == top.contributions
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-diffinfinite"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_manifest_is_inside_the_built_wheel(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("napari_diffinfinite-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "napari-diffinfinite = napari_diffinfinite:napari.yaml" in entry
        assert "diffinfinite = src_models.cli.main:main" in entry
        packed = z.read("napari_diffinfinite/napari.yaml")
        assert any(n.startswith("src_models/") for n in names)
    assert yaml.safe_load(packed) == yaml.safe_load((ROOT / "napari.yaml").read_bytes())
    from npe2 import PluginManifest

    (tmp_path / "napari.yaml").write_bytes(packed)
    assert PluginManifest.from_file(tmp_path / "napari.yaml").name == "napari-diffinfinite"


def test_plugin_import_keeps_torch_out():
    code = "import sys, napari_diffinfinite; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

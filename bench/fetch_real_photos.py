"""Fetch real photographs for the QC calibration (bench only, never a runtime dependency).

The QC gate (nano_banana_aug.qc) is calibrated on real photographs in
addition to the sample pasture images.  They come from package registries
only (no other network access is needed):

* PyPI wheels, downloaded with ``pip download --no-deps`` and read as zip
  files (nothing is installed): scikit-image's bundled ``skimage/data``
  images and scikit-learn's two sample images;
* Debian packages, downloaded with ``apt-get download`` (no install, no root
  needed once the package lists exist) and read with a small .deb reader:
  wallpaper photographs from ``mate-backgrounds``, ``lomiri-wallpapers-16.04``
  and ``plasma-workspace-wallpapers``.

Every photo is centre-cropped to 2:1 and resized to 2000x1000 (the sample
images' size), then saved as JPEG q95 to ``bench/out/real_photos/`` (git-ignored),
with ``MANIFEST.tsv`` naming the package, version and member path of each.

    python bench/fetch_real_photos.py               # all sources that are reachable
    python bench/fetch_real_photos.py --no-debian   # PyPI wheels only
    python bench/qc_calibration.py --real           # calibrate on them

Sources that cannot be fetched (no apt-get, registry unreachable) are skipped
with a warning; the downloads are cached in ``bench/out/real_photos/downloads``.
"""

from __future__ import annotations

import argparse
import glob
import io
import lzma
import posixpath
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "bench" / "out" / "real_photos"
SIZE = (2000, 1000)

#: PyPI wheels (pinned) -> {output name: member path inside the wheel}.
WHEELS = {
    "scikit-image==0.26.0": {
        "skimage_astronaut": "skimage/data/astronaut.png",
        "skimage_chelsea": "skimage/data/chelsea.png",
        "skimage_coffee": "skimage/data/coffee.png",
        "skimage_rocket": "skimage/data/rocket.jpg",
        "skimage_motorcycle": "skimage/data/motorcycle_left.png",
        "skimage_camera": "skimage/data/camera.png",  # greyscale, smooth sky
        "skimage_grass": "skimage/data/grass.png",  # greyscale texture
    },
    "scikit-learn==1.9.1": {
        "sklearn_china": "sklearn/datasets/images/china.jpg",
        "sklearn_flower": "sklearn/datasets/images/flower.jpg",
    },
}

#: Debian packages -> {output name: member path inside the package}.
DEBS = {
    "mate-backgrounds": {
        "mate_greenmeadow": "usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
        "mate_dune": "usr/share/backgrounds/mate/nature/Dune.jpg",
        "mate_blinds": "usr/share/backgrounds/mate/nature/Blinds.jpg",
        "mate_raindrops": "usr/share/backgrounds/mate/nature/RainDrops.jpg",
        "mate_garden": "usr/share/backgrounds/mate/nature/Garden.jpg",
        "mate_storm": "usr/share/backgrounds/mate/nature/Storm.jpg",
        "mate_wood": "usr/share/backgrounds/mate/nature/Wood.jpg",
        "mate_yellowflower": "usr/share/backgrounds/mate/nature/YellowFlower.jpg",
        "mate_ladybird": "usr/share/backgrounds/mate/nature/LadyBird.jpg",
    },
    "lomiri-wallpapers-16.04": {
        "lomiri_aitzgorri": "usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
        "lomiri_picosdeeuropa": "usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "lomiri_seeding": "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
        "lomiri_life": "usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg",
        "lomiri_dragonfly": "usr/share/backgrounds/Dragonfly_by_Bolly.jpg",
        "lomiri_sunset": "usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
        "lomiri_bridge": "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg",
    },
    "plasma-workspace-wallpapers": {
        "plasma_onestandsout": "usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
        "plasma_path": "usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
        "plasma_fallenleaf": "usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg",
        "plasma_eveningglow": "usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg",
        "plasma_summer1am": "usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg",
        "plasma_kite": "usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",
        "plasma_coldripple": "usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg",
    },
}


def to_2to1(img: Image.Image, size=SIZE) -> Image.Image:
    """Centre crop to the aspect of ``size`` and resize (Lanczos) to it; RGB."""
    img = img.convert("RGB")
    w, h = img.size
    target = size[0] / size[1]
    if w / h > target:
        cw, ch = round(h * target), h
    else:
        cw, ch = w, round(w / target)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.Resampling.LANCZOS)


# ------------------------------------------------------------------ PyPI wheels


def fetch_wheel(spec: str, downloads: Path) -> Path | None:
    name = spec.split("==")[0]
    pattern = name.replace("-", "_") + "-" + spec.split("==")[1] + "-*.whl"
    found = sorted(downloads.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(downloads), spec]
        print("+", " ".join(cmd), file=sys.stderr)
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"warning: could not download {spec}; skipped", file=sys.stderr)
            return None
        found = sorted(downloads.glob(pattern))
    return found[0] if found else None


# ------------------------------------------------------------------ Debian packages


def _ar_members(data: bytes):
    """(name, bytes) of the members of an ar archive (the .deb container)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        pos += 60
        yield name, data[pos : pos + size]
        pos += size + (size % 2)


def _deb_tar(deb: Path) -> tarfile.TarFile:
    for name, body in _ar_members(deb.read_bytes()):
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:")
            if name.endswith(".zst"):
                raise ValueError(f"{deb.name}: zstd-compressed data is not supported")
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
    raise ValueError(f"{deb.name}: no data.tar member")


def fetch_deb(package: str, downloads: Path) -> Path | None:
    found = sorted(downloads.glob(f"{package}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            print(f"warning: no apt-get; {package} skipped", file=sys.stderr)
            return None
        cmd = ["apt-get", "download", package]
        print("+", " ".join(cmd), f"(in {downloads})", file=sys.stderr)
        if subprocess.run(cmd, cwd=downloads, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"warning: could not download {package} (run 'apt-get update' first?); skipped", file=sys.stderr)
            return None
        found = sorted(downloads.glob(f"{package}_*.deb"))
    return found[0] if found else None


def _tar_read(tar: tarfile.TarFile, member: str) -> bytes:
    """Read a member (path without leading './'), following symbolic links inside the archive."""
    infos = {i.name.removeprefix("./"): i for i in tar.getmembers()}
    for _ in range(8):
        info = infos[member]
        if not info.issym():
            return tar.extractfile(info).read()
        link = info.linkname
        member = (
            link.lstrip("/")
            if link.startswith("/")
            else posixpath.normpath(posixpath.join(posixpath.dirname(member), link))
        )
    raise ValueError(f"too many links at {member}")


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(DEFAULT_DIR), help="output directory (default: %(default)s)")
    ap.add_argument("--no-debian", action="store_true", help="PyPI wheels only")
    ap.add_argument("--no-pypi", action="store_true", help="Debian packages only")
    args = ap.parse_args(argv)

    out = Path(args.dir)
    downloads = out / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    manifest = []

    def save(name: str, data: bytes, origin: str, member: str):
        img = to_2to1(Image.open(io.BytesIO(data)))
        img.save(out / f"{name}.jpg", quality=95)
        manifest.append((name, origin, member))

    if not args.no_pypi:
        for spec, members in WHEELS.items():
            whl = fetch_wheel(spec, downloads)
            if whl is None:
                continue
            with zipfile.ZipFile(whl) as z:
                for name, member in members.items():
                    save(name, z.read(member), f"pypi:{spec}", member)
    if not args.no_debian:
        for package, members in DEBS.items():
            deb = fetch_deb(package, downloads)
            if deb is None:
                continue
            version = deb.stem.split("_")[1].replace("%3a", ":")
            with _deb_tar(deb) as tar:
                for name, member in members.items():
                    save(name, _tar_read(tar, member), f"debian:{package}={version}", member)

    (out / "MANIFEST.tsv").write_text("name\tsource\tmember\n" + "".join(f"{n}\t{s}\t{m}\n" for n, s, m in manifest))
    print(f"wrote {len(manifest)} photos ({SIZE[0]}x{SIZE[1]} JPEG q95) to {out}")
    stale = sorted(set(Path(p).stem for p in glob.glob(str(out / "*.jpg"))) - {n for n, _, _ in manifest})
    if stale:
        print(f"note: {len(stale)} other .jpg files in {out}: {', '.join(stale)}", file=sys.stderr)
    return 0 if manifest else 1


if __name__ == "__main__":
    sys.exit(main())

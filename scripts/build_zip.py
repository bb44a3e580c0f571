"""Build the plugin zip for "Install from ZIP" / the plugin repository, or deploy it into a QGIS profile.

The zip holds one top-level folder, `building_footprints/`, with only what QGIS needs at run time
(no tests, caches or virtual environments). What goes in is read from pb_tool.cfg (the plugin name,
[files] python_files/extras and extra_dirs), so pb_tool and `make zip` ship the same files.
"""

from __future__ import annotations

import argparse
import configparser
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PB_TOOL_CFG = ROOT / "pb_tool.cfg"
# [files] keys whose values are top-level files of the plugin (pb_tool's names for them).
FILE_KEYS = ("python_files", "main_dialog", "compiled_ui_files", "resource_files", "extras")


def read_pb_tool(path: Path = PB_TOOL_CFG) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(plugin folder name, top-level files, folders) from a pb_tool.cfg."""
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(path, encoding="utf-8"):
        raise SystemExit(f"{path} not found: it lists what the plugin zip contains.")
    try:
        name = parser["plugin"]["name"].strip()
        files = parser["files"]
    except KeyError as exc:
        raise SystemExit(f"{path} lacks {exc}; it needs [plugin] name and a [files] section.") from None
    names = tuple(item for key in FILE_KEYS for item in files.get(key, "").split())
    return name, names, tuple(files.get("extra_dirs", "").split())


PLUGIN_NAME, INCLUDE_FILES, INCLUDE_DIRS = read_pb_tool()
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "tests"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".tmp", ".partial"}


def plugin_files() -> list[Path]:
    files = [ROOT / name for name in INCLUDE_FILES if (ROOT / name).exists()]
    for folder in INCLUDE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT)
            if path.is_file() and not (set(relative.parts) & EXCLUDED_PARTS) and path.suffix not in EXCLUDED_SUFFIXES:
                if not path.name.startswith("."):
                    files.append(path)
    return files


def build_zip(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in plugin_files():
            archive.write(path, f"{PLUGIN_NAME}/{path.relative_to(ROOT).as_posix()}")
    tmp.replace(out)
    return out


def enable_in_profile(profile_dir: Path) -> None:
    """Mark the plugin enabled in the profile's QGIS3.ini (a Qt INI file; edited textually to keep it intact)."""
    ini = profile_dir / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    text = ini.read_text(encoding="utf-8") if ini.exists() else ""
    line = f"{PLUGIN_NAME}=true"
    section = re.search(r"^\[PythonPlugins\]\s*$", text, flags=re.MULTILINE)
    if section is None:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"[PythonPlugins]\n{line}\n"
    elif re.search(rf"^{PLUGIN_NAME}=.*$", text, flags=re.MULTILINE):
        text = re.sub(rf"^{PLUGIN_NAME}=.*$", line, text, flags=re.MULTILINE)
    else:
        text = text[: section.end()] + f"\n{line}" + text[section.end() :]
    ini.write_text(text, encoding="utf-8")


def deploy(zip_path: Path, profile_dir: Path) -> Path:
    plugins_dir = profile_dir / "python" / "plugins"
    plugins_dir.mkdir(parents=True, exist_ok=True)
    target = plugins_dir / PLUGIN_NAME
    with tempfile.TemporaryDirectory(dir=plugins_dir) as staging:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(Path(staging) / PLUGIN_NAME), str(target))
    enable_in_profile(profile_dir)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / f"{PLUGIN_NAME}.zip")
    parser.add_argument("--deploy", type=Path, metavar="PROFILE_DIR", help="also install into this QGIS profile")
    args = parser.parse_args(argv)
    zip_path = build_zip(args.out)
    size_mb = zip_path.stat().st_size / 1e6
    print(f"Built {zip_path} ({size_mb:.1f} MB, {len(plugin_files())} files)")
    if args.deploy:
        target = deploy(zip_path, args.deploy)
        print(f"Deployed to {target} and enabled it in {args.deploy / 'QGIS' / 'QGIS3.ini'}; restart QGIS.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

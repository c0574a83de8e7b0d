#!/usr/bin/env bash
# Installs the Debian packages Veil builds against, if missing: oneDNN 2.6 (libdnnl-dev) and
# the image codecs (libpng, libjpeg-turbo, and zlib for gzip-compressed IDX files). Runs apt-get
# only when something is missing; uses sudo when not root. dataset-fashion-mnist (IDX files in
# /usr/share/datasets/fashion-mnist) is what the classifier training test learns from; darknet and
# opencv-doc ship the photos of the privacy attacks (scripts/prepare_photos.py); chromium renders
# report.html headless in the report test. Packages named as arguments are installed too (`make
# python-torchvision` names python3-torch and python3-torchvision).
set -euo pipefail
pkgs=(libdnnl-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev dataset-fashion-mnist darknet opencv-doc chromium "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${missing[@]}"
fi
command -v swift >/dev/null || { echo "error: swift is not on PATH; install Swift 6 from swift.org first" >&2; exit 1; }

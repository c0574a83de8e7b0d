"""Imported first by the scripts that need PyTorch: without torch it prints why and exits with
status 3, which the Swift test running the script turns into a visible skip (`make
python-torch` installs torch)."""
import sys

try:
    import torch  # noqa: F401
except ImportError as e:
    print(f"torch is not importable ({e}); install it with `make python-torch`")
    sys.exit(3)

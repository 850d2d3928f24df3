#!/usr/bin/env python
"""Thin entry point: see nano_banana_aug.targets."""
import sys

from nano_banana_aug.targets import main

if __name__ == "__main__":
    sys.exit(main())

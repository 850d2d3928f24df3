#!/usr/bin/env python
"""Thin entry point: see nano_banana_aug.report."""
import sys

from nano_banana_aug.report import main

if __name__ == "__main__":
    sys.exit(main())

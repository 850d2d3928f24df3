"""nano_banana_aug: the logic behind the Nano Banana Pro augmentation workflow.

The Snakemake rules and the thin entry points in ``scripts/`` call into this
package; every module is importable and testable on its own.
"""

__version__ = "0.1.0"

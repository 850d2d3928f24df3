"""docs/configuration.md, generated from the schema (the one source of every key and default).

    python -m nano_banana_aug.schema_doc > docs/configuration.md

``tests/test_docs.py`` checks that the file is what this prints.
"""

from __future__ import annotations

import json
import sys

from . import config as config_mod

USER_KEYS = {  # shown in configs/nano_banana_pro_augment.yaml
    "api.provider",
    "api.model",
    "api.api_key_file",
    "api.concurrency",
    "api.max_cost_usd",
    "api.max_total_cost_usd",
    "api.match_aspect",
    "data.data_root",
    "data.train_csv",
    "data.primary_targets",
    "data.output_dir",
    "data.output_ext",
    "postprocess.mode",
    "qc.enabled",
    "limit",
    "prompt_prefix",
    "augmentations",
}

HEADER = """# Configuration reference

Generated from `configs/schema/config.schema.yaml` by
`python -m nano_banana_aug.schema_doc > docs/configuration.md`; the schema
is the one source of every key and its default. A bad key or value stops a run
before anything is paid for, with one line naming the key and what is allowed.

Keys marked **set** are the ones the shipped `configs/nano_banana_pro_augment.yaml`
shows; the others are advanced (their defaults are meant to be kept).
Paths are absolute or relative to the working directory (the repository root).
Any key can be given on the command line: `--config limit=10 'api={"concurrency": 4}'`.

Keys of earlier releases still work, each with a one-line note when used:
{deprecated}

"""


def _default(spec: dict) -> str:
    if "default" not in spec:
        return "(required)" if spec.get("required_marker") else ""
    value = spec["default"]
    if value == {} and spec.get("type") == "object":
        return ""
    return f"`{json.dumps(value)}`"


def _type(spec: dict) -> str:
    if "enum" in spec:
        return " \\| ".join(f"`{v}`" for v in spec["enum"])
    t = spec.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    if t:
        return t
    if "oneOf" in spec:
        return " or ".join(_type(s) for s in spec["oneOf"])
    if "$ref" in spec:
        return "object" if spec["$ref"].endswith("local_recipe") else "number or [low, high]"
    return ""


def _rows(props: dict, prefix: str = ""):
    for name, spec in props.items():
        key = f"{prefix}{name}"
        if spec.get("type") == "object" and "properties" in spec:
            yield key, spec, True
            yield from _rows(spec["properties"], f"{key}.")
        else:
            yield key, spec, False
            items = spec.get("items") or {}
            if items.get("type") == "object" and "properties" in items:
                yield from _rows(items["properties"], f"{key}[].")


def render(schema: dict | None = None) -> str:
    schema = schema or config_mod.load_schema()
    deprecated = "\n".join(f"- `{k}`: {v}" for k, v in config_mod.DEPRECATED.items())
    out = [HEADER.replace("{deprecated}", deprecated)]
    sections = [
        (
            "Top level",
            {k: v for k, v in schema["properties"].items() if not (v.get("type") == "object" and "properties" in v)},
        )
    ]
    sections += [
        (f"`{k}`", v["properties"])
        for k, v in schema["properties"].items()
        if v.get("type") == "object" and "properties" in v
    ]
    for title, props in sections:
        prefix = "" if title == "Top level" else title.strip("`") + "."
        out.append(f"## {title}\n\n| key | type | default | meaning |\n|---|---|---|---|")
        for key, spec, is_group in _rows(props, prefix):
            if is_group:
                continue
            mark = " **set**" if key.split("[]")[0] in USER_KEYS else ""
            desc = " ".join(str(spec.get("description", "")).split()).replace("|", "\\|")
            out.append(f"| `{key}`{mark} | {_type(spec)} | {_default(spec)} | {desc} |")
        out.append("")
    recipe = schema["$defs"]["local_recipe"]
    out.append("## `augmentations[].local` (the offline engine's recipe)\n")
    out.append(" ".join(recipe["description"].split()) + "\n")
    out.append("| key | meaning |\n|---|---|")
    for name, spec in recipe["properties"].items():
        out.append(f"| `{name}` | {spec.get('description', '')} |")
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

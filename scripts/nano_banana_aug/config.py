"""Configuration: schema check with one-line errors, provider defaults, paths.

The Snakefile validates the user's YAML (plus ``--config`` overrides) with
:func:`check_config` before any job runs, then fills defaults with
``snakemake.utils.validate``.  The run that holds Snakemake's lock writes the
result once, as JSON private to that run (:mod:`nano_banana_aug.runs`), so
every job of the run reads the same settings without re-parsing YAML, and no
other invocation can change them.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import keys
from .errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "configs" / "schema" / "config.schema.yaml"

DEFAULT_MODELS = {**keys.DEFAULT_MODEL, "local": "recipes-v1"}
DEFAULT_BASE_URLS = {**keys.DEFAULT_BASE_URL, "local": None}
PAID_PROVIDERS = ("gemini", "openrouter")


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _key_path(error) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _describe(error, schema: dict) -> str:
    """Turn a jsonschema ValidationError into one actionable line."""
    key = _key_path(error)
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = f"{key}." if key != "(top level)" else ""
        names = ", ".join(f"'{where}{x}'" for x in extra)
        import difflib

        hints = [f"'{where}{m[0]}'" for x in extra for m in [difflib.get_close_matches(str(x), allowed, n=1, cutoff=0.6)] if m]
        hint = f"; did you mean {' / '.join(hints)}?" if hints else ""
        return f"unknown config key {names}{hint} (allowed keys here: {', '.join(allowed)})"
    if v == "enum":
        allowed = ", ".join(str(x) for x in error.validator_value)
        return f"config key '{key}' = {error.instance!r} is not allowed; allowed values: {allowed}"
    if v == "required":
        return f"config is missing the required key {error.message.split(' ')[0]} (under {key})"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"config key '{key}' = {error.instance!r} has the wrong type; expected {want}"
    if v == "pattern":
        desc = error.schema.get("description", f"must match {error.validator_value}")
        return f"config key '{key}' = {error.instance!r} is not allowed: {desc}"
    if v in ("oneOf", "anyOf"):
        desc = error.schema.get("description", "")
        return f"config key '{key}' = {error.instance!r} is not allowed" + (f": {desc}" if desc else "")
    return f"config key '{key}': {error.message}"


_NULLS = ("null", "Null", "NULL", "~")


def _types(schema: dict) -> list[str]:
    t = schema.get("type")
    return [t] if isinstance(t, str) else list(t or [])


def _resolve(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part, {})
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _coerce(value, schema: dict, root: dict):
    """``value`` converted to what ``schema`` asks for when it arrived as text (``--config``)."""
    import yaml

    schema = _resolve(schema, root)
    types = _types(schema)
    if isinstance(value, str) and types and "string" not in types:
        if "null" in types and value.strip() in _NULLS:
            return None
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        wanted = {"integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}
        if any(isinstance(parsed, wanted[t]) and not (t in ("integer", "number") and isinstance(parsed, bool))
               for t in types if t in wanted):
            value = parsed
        elif parsed is None and "null" in types:
            return None
        else:
            return value
    elif isinstance(value, str) and "null" in types and value.strip() in _NULLS:
        return None
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in list(value.items()):
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[k] = _coerce(v, sub, root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [_coerce(v, schema["items"], root) for v in value]
    return value


def coerce_command_line(cfg: dict, schema: dict | None = None) -> dict:
    """Values given with ``--config`` arrive as text, also inside nested values
    (``'api={"concurrency": 4}'`` gives ``{"concurrency": "4"}``): convert them
    to the types the schema asks for, so they validate as if written in YAML."""
    schema = schema or load_schema()
    return _coerce(cfg, schema, schema)


def check_config(cfg: dict, schema: dict | None = None) -> None:
    """Raise ConfigError with one line naming the first bad key and what is allowed."""
    from jsonschema import Draft202012Validator

    schema = schema or load_schema()
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(list(e.absolute_path)), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(errors[0], schema))
    api = cfg.get("api") or {}
    if api.get("mode") == "batch" and api.get("provider", "gemini") != "gemini":
        raise ConfigError(f"config key 'api.mode': batch needs api.provider gemini, not {api.get('provider')!r} "
                          "(OpenRouter's batch API returns text only, no images)")
    names = [a["name"] for a in cfg["augmentations"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"config key 'augmentations': duplicate name(s) {', '.join(dupes)}; names must be unique")


def finalise(cfg: dict) -> dict:
    """Fill the values whose default depends on the provider (in place)."""
    api = cfg["api"]
    provider = api["provider"]
    if not api.get("model"):
        api["model"] = DEFAULT_MODELS[provider]
    if provider == "openrouter" and "/" not in api["model"]:
        api["model"] = "google/" + api["model"]
    if not api.get("base_url"):
        api["base_url"] = DEFAULT_BASE_URLS[provider]
    if isinstance(cfg.get("regenerate"), str):
        cfg["regenerate"] = [cfg["regenerate"]] if cfg["regenerate"] else []
    known = {a["name"] for a in cfg["augmentations"]}
    unknown = [n for n in cfg["regenerate"] if n not in ("all", "stale") and n not in known]
    if unknown:
        raise ConfigError(
            f"config key 'regenerate': unknown augmentation(s) {', '.join(unknown)}; "
            f"allowed: all, stale, {', '.join(sorted(known))}"
        )
    if "all" in cfg["regenerate"]:
        cfg["regenerate"] = sorted(known) + (["stale"] if "stale" in cfg["regenerate"] else [])
    return cfg


def is_paid(cfg: dict) -> bool:
    return cfg["api"]["provider"] in PAID_PROVIDERS


def full_prompt(cfg: dict, aug: dict) -> str:
    """prompt_prefix + blank line + the augmentation's prompt (as the original tool)."""
    prefix = (cfg.get("prompt_prefix") or "").strip()
    prompt = aug["prompt"].strip()
    return f"{prefix}\n\n{prompt}" if prefix else prompt


def augmentation(cfg: dict, name: str) -> dict:
    for aug in cfg["augmentations"]:
        if aug["name"] == name:
            return aug
    raise ConfigError(f"augmentation '{name}' is not in the config (augmentations[].name)")


def data_root(cfg: dict) -> Path:
    return Path(cfg["data"]["data_root"])


def train_csv_path(cfg: dict) -> Path:
    p = Path(cfg["data"]["train_csv"])
    return p if p.is_absolute() else data_root(cfg) / p


def output_dir(cfg: dict) -> Path:
    return Path(cfg["data"]["output_dir"])


def read_effective_config(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: effective config not found; run the pipeline through snakemake") from None


def generation_key(cfg: dict, aug: dict) -> str:
    """``<made>/<post>``: hashes of what made an output's answer (provider, model, prompt, image
    config, match_aspect) and of how it was turned into the file (postprocess, output type).
    An output whose first part differs from the config's is stale (another model or prompt:
    ``regenerate=stale`` pays for it); one whose second part differs is rebuilt for free by
    ``rederive=true``."""
    import hashlib
    import json

    api = cfg["api"]
    made = {"provider": api["provider"], "model": api["model"], "prompt": full_prompt(cfg, aug),
            "image_config": api.get("image_config"), "match_aspect": bool(api.get("match_aspect")),
            "local": aug.get("local") if api["provider"] == "local" else None}
    pp = cfg.get("postprocess") or {}
    post = {k: pp.get(k) for k in ("enforce_aspect_ratio", "mode", "pad_mode", "pad_color", "target_size", "resample")}
    post["ext"] = cfg["data"]["output_ext"]

    def h(obj):
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]

    return f"{h(made)}/{h(post)}"


def staleness(key: str, current: str) -> str:
    """"" (current or unknown), "model/prompt" (made otherwise: pay to refresh) or "postprocess" (free)."""
    if not key or not current or key == current:
        return ""
    return "model/prompt" if key.split("/")[0] != current.split("/")[0] else "postprocess"

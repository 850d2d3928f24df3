"""Configuration: one source of defaults (the schema), one-line errors, and the
few values derived from it.

The Snakefile runs :func:`prepare` on the merged config (``configfile`` plus
``--config``) before anything else: values given on the command line are
typed, keys of earlier releases are mapped with a one-line deprecation note,
the schema checks every key (a bad value stops the run naming the key and
what is allowed) and ``snakemake.utils.validate`` fills the defaults.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from . import keys
from .errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "configs" / "schema" / "config.schema.yaml"

DEFAULT_MODELS = {**keys.DEFAULT_MODEL, "local": "recipes-v1"}
DEFAULT_BASE_URLS = {**keys.DEFAULT_BASE_URL, "local": None}
PAID_PROVIDERS = ("gemini", "openrouter")
REQUESTS = ("all", "stale", "rejected")  # regenerate= values besides augmentation names

# Keys of earlier releases: accepted, mapped (or ignored) with one line each.
DEPRECATED = {
    "plan_only": "use `snakemake -n` or the target `snakemake plan` (they call nothing)",
    "rederive": "outputs are rebuilt from their answers (0 calls) whenever postprocess, qc or output_ext change; "
    "`--forcerun generate` forces it",
    "redo_rejected": "use regenerate=rejected",
    "retry_blocked": "raise api.max_total_attempts instead (this run retries blocked outputs)",
    "batch_cancel": "use the target `snakemake cancel_batches`",
    "prune_mode": "`snakemake prune_answers` deletes superseded answer images and keeps each output's own",
    "api.concurrency_scope": "every output is its own job: api.concurrency caps the calls in flight in any case",
    "api.batch.max_file_bytes": "batch input files are cut below the Files API's 2 GB limit automatically",
    "api.batch.lock_timeout_s": "a second run in the same directory waits for the first one's batch job",
}


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# ---------------------------------------------------------------- errors in one line


def _key_path(error) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in error.absolute_path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _describe(error) -> str:
    """A jsonschema ValidationError as one actionable line."""
    import difflib

    key = _key_path(error)
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = f"{key}." if key != "(top level)" else ""
        names = ", ".join(f"'{where}{x}'" for x in extra)
        hints = [
            f"'{where}{m[0]}'"
            for x in extra
            for m in [difflib.get_close_matches(str(x), allowed, n=1, cutoff=0.6)]
            if m
        ]
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


# ---------------------------------------------------------------- --config values arrive as text

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
    """``value`` converted to what ``schema`` asks for when it arrived as text."""
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
        if ":" in value and isinstance(parsed, (int, float)):
            return value  # YAML 1.1 reads "2:1" as 2*60+1 = 121: left as text for the schema to refuse
        wanted = {"integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}
        if any(
            isinstance(parsed, wanted[t]) and not (t in ("integer", "number") and isinstance(parsed, bool))
            for t in types
            if t in wanted
        ):
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
    """``--config 'api={"concurrency": 4}'`` gives ``{"concurrency": "4"}``: typed as in YAML."""
    schema = schema or load_schema()
    return _coerce(cfg, schema, schema)


# ---------------------------------------------------------------- keys of earlier releases


def _pop(cfg: dict, dotted: str):
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return None, False
    if last not in node:
        return None, False
    return node.pop(last), True


def _truthy(value) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"))


def map_deprecated(cfg: dict, say=None) -> dict:
    """Take the keys of earlier releases out of ``cfg``, say once what replaces each, and map
    them onto ``cfg["_asked"]`` (what this invocation asks for beyond the settings)."""
    say = say or (lambda m: print(m, file=sys.stderr))
    asked = cfg.setdefault("_asked", {})
    for dotted, instead in DEPRECATED.items():
        value, present = _pop(cfg, dotted)
        if not present:
            continue
        say(f"note: config key '{dotted}' is deprecated: {instead}")
        if dotted == "plan_only" and _truthy(value):
            asked["plan"] = True
        elif dotted == "redo_rejected" and _truthy(value):
            asked["rejected"] = True
        elif dotted == "retry_blocked" and _truthy(value):
            asked["retry_blocked"] = True
        elif dotted == "batch_cancel" and _truthy(value):
            asked["cancel_batches"] = True
    return cfg


def check(cfg: dict, schema: dict | None = None) -> None:
    """ConfigError naming the first bad key and what is allowed."""
    from jsonschema import Draft202012Validator

    schema = schema or load_schema()
    plain = {k: v for k, v in cfg.items() if not k.startswith("_")}
    errors = sorted(
        Draft202012Validator(schema).iter_errors(plain),
        key=lambda e: (len(list(e.absolute_path)), list(map(str, e.absolute_path))),
    )
    if errors:
        raise ConfigError(_describe(errors[0]))
    api = cfg.get("api") or {}
    if api.get("mode") == "batch" and api.get("provider", "gemini") != "gemini":
        raise ConfigError(
            f"config key 'api.mode': batch needs api.provider gemini, not {api.get('provider')!r} "
            "(OpenRouter's batch API returns text only, no images)"
        )
    names = [a["name"] for a in cfg["augmentations"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"config key 'augmentations': duplicate name(s) {', '.join(dupes)}; names must be unique")


def finalise(cfg: dict) -> dict:
    """Values whose default depends on the provider; ``regenerate`` as a list (in place)."""
    api = cfg["api"]
    provider = api["provider"]
    if not api.get("model"):
        api["model"] = DEFAULT_MODELS[provider]
    if provider == "openrouter" and "/" not in api["model"]:
        api["model"] = "google/" + api["model"]
    if not api.get("base_url"):
        api["base_url"] = DEFAULT_BASE_URLS[provider]
    regen = cfg.get("regenerate") or []
    regen = [regen] if isinstance(regen, str) else list(regen)
    known = {a["name"] for a in cfg["augmentations"]}
    unknown = [n for n in regen if n not in REQUESTS and n not in known]
    if unknown:
        raise ConfigError(
            f"config key 'regenerate': unknown augmentation(s) {', '.join(unknown)}; "
            f"allowed: all, stale, {', '.join(sorted(known))}, rejected"
        )
    if cfg.get("_asked", {}).get("rejected"):
        regen.append("rejected")
    if "all" in regen:
        regen = sorted(known) + [r for r in regen if r in ("stale", "rejected")]
    cfg["regenerate"] = sorted(set(regen))
    return cfg


def prepare(cfg: dict, validate, say=None) -> dict:
    """The whole start-up check: command-line types, old keys, schema, defaults, provider defaults.

    ``validate`` is ``snakemake.utils.validate`` (fills the schema's defaults)."""
    say = say or (lambda m: print(m, file=sys.stderr))
    schema = load_schema()
    coerce_command_line(cfg, schema)
    map_deprecated(cfg, say)
    check(cfg, schema)
    asked = cfg.pop("_asked", {})
    validate(cfg, str(SCHEMA_PATH))
    cfg["_asked"] = asked
    pp = cfg["postprocess"]
    if pp["enforce_aspect_ratio"] is not None and pp["mode"] == "resize":
        say(
            f"note: postprocess.enforce_aspect_ratio={pp['enforce_aspect_ratio']} is not applied with "
            "postprocess.mode resize (the default: each output takes its source's size); "
            "set postprocess.mode: pad or crop for the original tool's geometry"
        )
    return finalise(cfg)


# ---------------------------------------------------------------- derived values


def is_paid(cfg: dict) -> bool:
    return cfg["api"]["provider"] in PAID_PROVIDERS


def matches_aspect(cfg: dict) -> bool:
    """``api.match_aspect`` applies: a paid provider, and no aspect ratio of the user's own in
    ``api.image_config`` (which is passed through as it is, as by the original tool)."""
    api = cfg["api"]
    own = any(k in (api.get("image_config") or {}) for k in ("aspectRatio", "aspect_ratio"))
    return bool(api.get("match_aspect")) and api["provider"] != "local" and not own


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


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request_settings(cfg: dict, aug: dict) -> dict:
    """What the config says an answer of ``aug`` is asked with (provider, model, prompt, image
    config, geometry of the request; the recipe and seed for the local engine)."""
    api = cfg["api"]
    local = api["provider"] == "local"
    return {
        "provider": api["provider"],
        "model": api["model"],
        "prompt_sha256": sha256_text(full_prompt(cfg, aug)),
        "image_config": api.get("image_config"),
        "match_aspect": matches_aspect(cfg),
        "local": {"recipe": aug.get("local") or {}, "seed": int(cfg.get("seed", 0))} if local else None,
    }


def request_key(settings: dict) -> str:
    """A short hash of :func:`request_settings`: an answer whose key differs from the config's is stale."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def derive_settings(cfg: dict) -> dict:
    """What turns an answer into the output: when any of these changes, every output is rebuilt
    from its answer (free)."""
    return {"postprocess": cfg["postprocess"], "qc": cfg["qc"], "output_ext": cfg["data"]["output_ext"]}


def data_settings(cfg: dict, train_csv_sha256: str) -> dict:
    """What decides the targets table: the checkpoint reruns when any of these changes
    (``limit`` selects from the table when the DAG is built)."""
    d = cfg["data"]
    return {
        "data_root": d["data_root"],
        "train_csv": d["train_csv"],
        "primary_targets": list(d["primary_targets"]),
        "train_csv_sha256": train_csv_sha256,
    }


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""Config validation: one line naming the key and what is allowed."""

import copy

import pytest
import yaml
from snakemake.utils import validate

from nano_banana_aug import config as cfgmod
from nano_banana_aug.errors import ConfigError

from .helpers import ROOT

SHIPPED = yaml.safe_load((ROOT / "configs" / "nano_banana_pro_augment.yaml").read_text())


def checked(cfg, say=None):
    return cfgmod.prepare(cfg, validate, say=say or (lambda m: None))


def test_shipped_configs_are_valid():
    for name in ("nano_banana_pro_augment.yaml", "sample.yaml"):
        cfg = copy.deepcopy(SHIPPED)
        override = yaml.safe_load((ROOT / "configs" / name).read_text())
        for key, value in override.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
        checked(cfg)


def test_original_defaults_filled():
    cfg = checked({"augmentations": [{"name": "a", "prompt": "p"}]})
    api, data = cfg["api"], cfg["data"]
    assert (api["provider"], api["model"], api["concurrency"]) == ("gemini", "gemini-3-pro-image-preview", 1)
    assert (api["timeout_s"], api["max_retries"], api["retry_backoff_s"], api["modalities"]) == (
        120,
        3,
        5.0,
        ["image", "text"],
    )
    assert api["base_url"] == "https://generativelanguage.googleapis.com/v1beta"
    assert (data["data_root"], data["train_csv"], data["primary_targets"]) == ("data", "train.csv", ["Dry_Total_g"])
    assert (data["output_dir"], data["output_ext"], data["manifest"], data["log_file"]) == (
        "data/nano_banana_pro/train",
        "png",
        "manifest.csv",
        "augment.log",
    )
    pp = cfg["postprocess"]
    assert (pp["resample"], pp["png_compress_level"], pp["jpeg_quality"], pp["webp_quality"]) == ("bicubic", 6, 95, 90)
    assert cfg["augmentations"][0]["num_images"] == 1


def test_openrouter_defaults():
    cfg = checked(
        {
            "api": {"provider": "openrouter", "model": "gemini-2.5-flash-image"},
            "augmentations": [{"name": "a", "prompt": "p"}],
        }
    )
    assert cfg["api"]["model"] == "google/gemini-2.5-flash-image"
    assert cfg["api"]["base_url"] == "https://openrouter.ai/api/v1/chat/completions"


@pytest.mark.parametrize(
    "patch, expected",
    [
        (
            {"api": {"provder": "gemini"}},
            "unknown config key 'api.provder'; did you mean 'api.provider'? (allowed keys here: api_key_file",
        ),
        ({"api": {"concurency": 2}}, "unknown config key 'api.concurency'; did you mean 'api.concurrency'?"),
        (
            {"api": {"provider": "gemni"}},
            "config key 'api.provider' = 'gemni' is not allowed; allowed values: gemini, openrouter, local",
        ),
        (
            {"postprocess": {"mode": "stretch"}},
            "'postprocess.mode' = 'stretch' is not allowed; allowed values: pad, crop",
        ),
        ({"api": {"concurrency": 0}}, "config key 'api.concurrency': 0 is less than the minimum of 1"),
        ({"data": {"output_ext": "gif"}}, "allowed values: png, jpg, jpeg, webp"),
        (
            {"augmentations": [{"name": "a__b", "prompt": "p"}]},
            "'augmentations[0].name' = 'a__b' is not allowed: letters, digits",
        ),
        (
            {"augmentations": [{"name": "a", "prompt": "p", "local": {"blurr": 1}}]},
            "unknown config key 'augmentations[0].local.blurr'",
        ),
        ({"augmentations": [{"name": "a", "prompt": "p"}, {"name": "a", "prompt": "q"}]}, "duplicate name(s) a"),
        ({"limit": "ten"}, "config key 'limit' = 'ten' has the wrong type; expected integer"),
        # YAML 1.1 reads "2:1" as 2*60+1 = 121: was accepted and made 121000x1000 outputs
        (
            {"postprocess": {"mode": "pad", "enforce_aspect_ratio": "2:1"}},
            "config key 'postprocess.enforce_aspect_ratio' = '2:1' has the wrong type; expected number",
        ),
        (
            {"postprocess": {"mode": "pad", "enforce_aspect_ratio": 121}},  # an unquoted 2:1
            "config key 'postprocess.enforce_aspect_ratio': 121 is greater than the maximum of 10",
        ),
        ({"api": {"timeout_s": "1:30"}}, "config key 'api.timeout_s' = '1:30' has the wrong type"),
    ],
)
def test_bad_values_one_line(patch, expected):
    cfg = {"augmentations": [{"name": "a", "prompt": "p"}]}
    cfg.update(patch)
    with pytest.raises(ConfigError) as err:
        checked(cfg)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_regenerate_names_checked():
    cfg = checked({"regenerate": "a", "augmentations": [{"name": "a", "prompt": "p"}]})
    assert cfg["regenerate"] == ["a"]
    with pytest.raises(ConfigError, match="unknown augmentation.*allowed: all, stale, a"):
        checked({"regenerate": ["zzz"], "augmentations": [{"name": "a", "prompt": "p"}]})


def test_full_prompt_prefix_blank_line():
    assert cfgmod.full_prompt({"prompt_prefix": "Keep it.\n"}, {"prompt": "Darker."}) == "Keep it.\n\nDarker."


def test_schema_qc_defaults_are_the_qc_modules():
    from nano_banana_aug.qc import DEFAULT_THRESHOLDS

    cfg = checked({"augmentations": [{"name": "a", "prompt": "p"}], "qc": {}})
    assert cfg["qc"] == DEFAULT_THRESHOLDS
    with pytest.raises(ConfigError, match=r"unknown config key 'qc\.max_ssim_drop' \(allowed keys here: .*min_ssim"):
        checked({"augmentations": [{"name": "a", "prompt": "p"}], "qc": {"max_ssim_drop": 0.1}})


def test_label_safe_geometry_is_the_one_default():
    """The schema is the one source of defaults: the label-safe geometry without a config saying otherwise."""
    cfg = checked({"augmentations": [{"name": "a", "prompt": "p"}]})
    assert (cfg["api"]["match_aspect"], cfg["postprocess"]["mode"], cfg["postprocess"]["enforce_aspect_ratio"]) == (
        True,
        "resize",
        None,
    )
    shipped = yaml.safe_load((ROOT / "configs" / "nano_banana_pro_augment.yaml").read_text())
    assert (shipped["api"]["match_aspect"], shipped["postprocess"]["mode"]) == (True, "resize")
    assert "enforce_aspect_ratio" not in shipped["postprocess"]


@pytest.mark.parametrize(
    "old, asked",
    [
        ({"plan_only": True}, {"plan": True}),
        ({"redo_rejected": "true"}, {"rejected": True}),
        ({"retry_blocked": True}, {"retry_blocked": True}),
        ({"batch_cancel": True}, {"cancel_batches": True}),
        ({"rederive": True}, {}),
        ({"prune_mode": "used"}, {}),
        ({"api": {"concurrency_scope": "global"}}, {}),
        ({"api": {"batch": {"max_file_bytes": 10**9, "lock_timeout_s": 60}}}, {}),
    ],
)
def test_keys_of_earlier_releases_still_work_with_one_line_each(old, asked):
    said = []
    cfg = checked({"augmentations": [{"name": "a", "prompt": "p"}], **copy.deepcopy(old)}, say=said.append)
    assert cfg["_asked"] == asked
    assert said and all(
        line.startswith("note: config key '") and "deprecated" in line and "\n" not in line for line in said
    )
    if "redo_rejected" in old:
        assert cfg["regenerate"] == ["rejected"]


def test_shipped_config_shows_the_keys_a_user_sets():
    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "local":
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    keys = list(leaves(SHIPPED))
    assert len(keys) <= 22, keys


def test_an_aspect_ratio_the_default_mode_does_not_apply_is_said_once():
    said = []
    cfg = {"augmentations": [{"name": "a", "prompt": "p"}], "postprocess": {"enforce_aspect_ratio": 1.5}}
    checked(cfg, say=said.append)
    assert said == [
        "note: postprocess.enforce_aspect_ratio=1.5 is not applied with postprocess.mode resize (the default: "
        "each output takes its source's size); set postprocess.mode: pad or crop for the original tool's geometry"
    ]
    said.clear()
    checked(
        {"augmentations": [{"name": "a", "prompt": "p"}], "postprocess": {"enforce_aspect_ratio": 1.5, "mode": "pad"}},
        say=said.append,
    )
    assert said == []


def test_match_aspect_applies_only_to_paid_calls_without_an_aspect_ratio_of_the_users_own():
    base = {"augmentations": [{"name": "a", "prompt": "p"}]}
    assert cfgmod.matches_aspect(checked({**base, "api": {"provider": "gemini"}}))
    assert not cfgmod.matches_aspect(checked({**base, "api": {"provider": "local"}}))
    assert not cfgmod.matches_aspect(checked({**base, "api": {"provider": "gemini", "match_aspect": False}}))
    for own in ({"aspectRatio": "4:3"}, {"aspect_ratio": "4:3", "image_size": "1K"}):
        cfg = checked({**base, "api": {"provider": "openrouter", "image_config": own}})
        assert not cfgmod.matches_aspect(cfg)
        assert cfgmod.request_settings(cfg, cfg["augmentations"][0])["match_aspect"] is False
    assert cfgmod.matches_aspect(checked({**base, "api": {"provider": "gemini", "image_config": {"imageSize": "4K"}}}))

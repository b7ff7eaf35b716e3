"""The routing parts of the config: [[models]] aliases, probes, [[alerts]]; each bad value is one clear line."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_config
from app.config_routing import AlertConfig, ModelAlias, ProbeConfig, Target

UPSTREAMS = """
[[upstreams]]
name = "openai"
base_url = "http://127.0.0.1:9100/v1"
tokens = ["tok-a"]
models = ["gpt-*"]
probe = "models"

[[upstreams]]
name = "local"
base_url = "http://127.0.0.1:9101/v1"
models = ["qwen*"]
probe = { model = "qwen3-0.6b", max_tokens = 2 }
"""

GOOD = (
    UPSTREAMS
    + """
[gateway]
probe_interval = 15
auto_disable_after = 5

[[models]]
name = "smart"
strategy = "weighted"
targets = [
  { upstream = "openai", model = "gpt-4.1", weight = 3 },
  { upstream = "local", model = "qwen3-32b", weight = 1 },
]
fallbacks = ["cheap"]
context_fallbacks = ["long"]

[[models]]
name = "cheap"
targets = [{ upstream = "local", model = "qwen3-8b" }]
fallbacks = ["gpt-4o-mini"]

[[models]]
name = "long"
strategy = "latency"
targets = [{ upstream = "openai", model = "gpt-4.1-long" }]

[[alerts]]
url = "https://hooks.example.com/services/T000/B000/XXXX"
events = ["pool_exhausted", "breaker_open", "pool_exhausted"]
secret = "0123456789abcdef0123"
repeat_after = 600
"""
)


def load(tmp_path, text):
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return load_config(str(path), env={})


def test_full_routing_schema(tmp_path):
    config = load(tmp_path, GOOD)
    assert config.gateway.probe_interval == 15 and config.gateway.auto_disable_after == 5
    assert config.upstreams[0].probe == ProbeConfig("models")
    assert config.upstreams[1].probe == ProbeConfig("completion", "qwen3-0.6b", 2)
    smart = config.alias("smart")
    assert smart == ModelAlias(
        "smart",
        (Target("openai", "gpt-4.1", 3.0), Target("local", "qwen3-32b", 1.0)),
        "weighted",
        ("cheap",),
        ("long",),
    )
    assert smart.targets[0].key == "openai/gpt-4.1"
    assert config.alias("cheap").strategy == "ordered" and config.alias("nope") is None
    assert config.alerts == (
        AlertConfig(
            "https://hooks.example.com/services/T000/B000/XXXX",
            ("pool_exhausted", "breaker_open"),
            "0123456789abcdef0123",
            600.0,
        ),
    )
    assert config.loaded_at > 0


def test_defaults_without_routing_tables(tmp_path):
    config = load(tmp_path, UPSTREAMS)
    assert config.models == () and config.alerts == ()
    assert config.gateway.probe_interval == 60 and config.gateway.auto_disable_after == 3


def alias(body: str) -> str:
    return UPSTREAMS + "\n[[models]]\n" + body


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (alias('name = "a"\ntargets = [{ upstream = "nope", model = "m" }]'), "models[0].targets[0].upstream",
         "'nope' is not a configured upstream"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m", weight = 0 }]'),
         "models[0].targets[0].weight", "greater than 0"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m", weight = -1 }]'),
         "models[0].targets[0].weight", "greater than 0"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m", weight = true }]'),
         "models[0].targets[0].weight", "greater than 0"),
        (alias('name = "a"\ntargets = []'), "models[0].targets", "at least one"),
        (alias('name = "a"'), "models[0].targets", "at least one"),
        (alias('targets = [{ upstream = "local", model = "m" }]'), "models[0].name", "is required"),
        (alias('name = "a b"\ntargets = [{ upstream = "local", model = "m" }]'), "models[0].name", "without spaces"),
        (alias('name = "a"\nstrategy = "fastest"\ntargets = [{ upstream = "local", model = "m" }]'),
         "models[0].strategy", "must be one of"),
        (alias('name = "a"\ntargets = [{ upstream = "local" }]'), "models[0].targets[0].model", "is required"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m", region = "eu" }]'),
         "models[0].targets[0].region", "unknown key"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m" }]\nfallbacks = ["claude-9"]'),
         "models[0].fallbacks", "'claude-9' is no alias and no upstream serves it"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m" }]\ncontext_fallbacks = "long"'),
         "models[0].context_fallbacks", "list of non-empty strings"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m" }]\nfallbacks = ["b"]\n'
               '[[models]]\nname = "b"\ntargets = [{ upstream = "local", model = "n" }]\ncontext_fallbacks = ["a"]'),
         "models", "fallbacks form a cycle: a -> b -> a"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m" }]\nfallbacks = ["a"]'),
         "models", "fallbacks form a cycle: a -> a"),
        (alias('name = "a"\ntargets = [{ upstream = "local", model = "m" }]\n'
               '[[models]]\nname = "a"\ntargets = [{ upstream = "local", model = "n" }]'),
         "models[0].name", "'a' is used more than once"),
        ('models = "smart"\n' + UPSTREAMS, "models", "array of tables"),
        (UPSTREAMS.replace('probe = "models"', 'probe = "chat"'), "upstreams[0].probe", "must be \"models\""),
        (UPSTREAMS.replace('max_tokens = 2', 'max_tokens = 0'), "upstreams[1].probe.max_tokens", "between 1 and 64"),
        (UPSTREAMS.replace('max_tokens = 2', 'tokens = 2'), "upstreams[1].probe.tokens", "unknown key"),
        (UPSTREAMS + "\n[gateway]\nprobe_interval = 0", "gateway.probe_interval", "positive number"),
        (UPSTREAMS + "\n[gateway]\nauto_disable_after = -1", "gateway.auto_disable_after", "at least 0"),
        (UPSTREAMS + '\n[[alerts]]\nurl = "ftp://x"\nevents = ["breaker_open"]', "alerts[0].url", "http://"),
        (UPSTREAMS + '\n[[alerts]]\nurl = "https://x"\nevents = []', "alerts[0].events", "at least one"),
        (UPSTREAMS + '\n[[alerts]]\nurl = "https://x"\nevents = ["fire"]', "alerts[0].events", "unknown event 'fire'"),
        (UPSTREAMS + '\n[[alerts]]\nurl = "https://x"\nevents = ["breaker_open"]\nsecret = "short"',
         "alerts[0].secret", "at least 16"),
        (UPSTREAMS + '\n[[alerts]]\nurl = "https://x"\nevents = ["breaker_open"]\nrepeat_after = 0',
         "alerts[0].repeat_after", "positive number"),
        (UPSTREAMS + '\n[[alerts]]\nurl = "https://x"\nevents = ["breaker_open"]\nchannel = "#ops"',
         "alerts[0].channel", "unknown key"),
    ],
)  # fmt: skip
def test_invalid_routing_tables_stop_start_up_with_one_line(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'sluice.toml'}: {key}: ")
    assert problem in message and "\n" not in message


def test_a_fallback_may_name_a_model_an_upstream_serves(tmp_path):
    text = alias('name = "a"\ntargets = [{ upstream = "local", model = "m" }]\nfallbacks = ["gpt-4o", "qwen3"]')
    assert load(tmp_path, text).alias("a").fallbacks == ("gpt-4o", "qwen3")


def test_an_alert_secret_never_appears_in_errors(tmp_path):
    text = UPSTREAMS + '\n[[alerts]]\nurl = "https://x"\nevents = ["nope"]\nsecret = "s3cret-value-0123456789"'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert "s3cret" not in str(caught.value)


def test_accept_config_remembers_the_text_only_when_valid(tmp_path):
    from app.config import ACCEPTED_CONFIG, accept_config

    path = tmp_path / "sluice.toml"
    path.write_text(GOOD)
    env: dict[str, str] = {}
    assert accept_config(str(path), env).alias("smart") is not None
    assert env[ACCEPTED_CONFIG] == GOOD
    path.write_text(GOOD + "\nbogus = 1\n")
    with pytest.raises(ConfigError):
        accept_config(str(path), env)
    assert env[ACCEPTED_CONFIG] == GOOD  # a refused file leaves the accepted text alone


def test_a_worker_loads_the_accepted_text_not_the_file(tmp_path):
    from app.config import ACCEPTED_CONFIG

    path = tmp_path / "sluice.toml"
    path.write_text("this is not TOML")
    env = {ACCEPTED_CONFIG: GOOD}
    config = load_config(str(path), env, accepted=True)
    assert config.alias("smart") is not None and config.source == str(path)
    with pytest.raises(ConfigError):
        load_config(str(path), env)  # a reload reads the file itself

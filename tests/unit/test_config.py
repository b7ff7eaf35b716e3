"""Config file and environment: the schema, its defaults, and errors that name file and key."""

from __future__ import annotations

import pytest

from app.config import DEMO_SOURCE, ConfigError, load_config, load_settings

GOOD = """
[gateway]
max_attempts = 2
max_body_bytes = 2048
trust_env = true

[[upstreams]]
name = "primary"
base_url = "http://127.0.0.1:9100/v1/"
tokens = ["tok-a", "tok-b"]
models = ["gpt-*", "claude-3"]
user_agent = "my-gateway/1.0"
headers = { "X-Team" = "research" }
proxy = "http://proxy.internal:3128"
connect_timeout = 2
read_timeout = 30.5

[[upstreams]]
name = "local"
base_url = "http://127.0.0.1:8001/v1"
tokens = []
"""


def write(tmp_path, text):
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return str(path)


def test_full_schema(tmp_path):
    config = load_config(write(tmp_path, GOOD), env={})
    assert config.gateway.max_attempts == 2
    assert config.gateway.max_body_bytes == 2048
    assert config.gateway.trust_env is True
    primary, local = config.upstreams
    assert primary.base_url == "http://127.0.0.1:9100/v1"
    assert primary.tokens == ("tok-a", "tok-b")
    assert primary.models == ("gpt-*", "claude-3")
    assert primary.user_agent == "my-gateway/1.0"
    assert dict(primary.headers) == {"X-Team": "research"}
    assert primary.proxy == "http://proxy.internal:3128"
    assert (primary.connect_timeout, primary.read_timeout) == (2.0, 30.5)
    assert local.tokens == ()
    assert local.models == ("*",)
    assert local.user_agent.startswith("sluice/")


def test_tokens_from_environment(tmp_path):
    text = '[[upstreams]]\nname = "p"\nbase_url = "https://api.example/v1"\ntokens_env = "P_TOKENS"\n'
    config = load_config(write(tmp_path, text), env={"P_TOKENS": " tok-1 , tok-2,, "})
    assert config.upstreams[0].tokens == ("tok-1", "tok-2")


def test_no_file_means_demo_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.source == DEMO_SOURCE
    assert config.upstreams[0].base_url == "http://127.0.0.1:9100/v1"
    assert load_config(None, env={"SLUICE_DEMO_MOCK_PORT": "9200"}).upstreams[0].base_url.endswith(":9200/v1")


def test_sluice_toml_in_working_directory_is_used(tmp_path, monkeypatch):
    write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    assert load_config(None, env={}).source == "sluice.toml"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[gateway]\nmax_attempts = 0\n", "gateway.max_attempts", "between 1 and 20"),
        ("[gateway]\nmax_atempts = 3\n", "gateway.max_atempts", "unknown key"),
        ("[gateway]\ntrust_env = 1\n", "gateway.trust_env", "true or false"),
        ("[gateway]\nbreaker_failures = 0\n", "gateway.breaker_failures", "at least 1"),
        ("[gateway]\nqueue_timeout = -1\n", "gateway.queue_timeout", "or 0"),
        ("[gateway]\nbreaker_cooldown = 0\n", "gateway.breaker_cooldown", "positive"),
        ("", "upstreams", "at least one"),
        ('[[upstreams]]\nbase_url = "http://x"\n', "upstreams[0].name", "is required"),
        ('[[upstreams]]\nname = "a b"\nbase_url = "http://x"\n', "upstreams[0].name", "letters"),
        ('[[upstreams]]\nname = "p"\nbase_url = "ftp://x"\n', "upstreams[0].base_url", "http://"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\ntokens = "t"\n', "upstreams[0].tokens", "list"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\ntokens = ["a b"]\n', "upstreams[0].tokens[0]", "printable"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\ntokens = ["a", "a"]\n', "upstreams[0].tokens", "twice"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\ntokens_env = "NOPE"\n', "tokens_env", "NOPE is not set"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\nmodels = []\n', "upstreams[0].models", "at least one"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\nread_timeout = -1\n', "read_timeout", "positive"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\nproxy = "x"\n', "upstreams[0].proxy", "http://"),
        (
            '[[upstreams]]\nname = "p"\nbase_url = "http://x"\nproxy = "socks5://p:1"\n',
            "upstreams[0].proxy",
            "https://",
        ),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\nuser_agent = "研究"\n', "user_agent", "ASCII"),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\nheaders = { "X-A" = "✓" }\n', "headers.X-A", "ASCII"),
        (
            '[[upstreams]]\nname = "p"\nbase_url = "http://x"\n[[upstreams]]\nname = "p"\nbase_url = "http://y"\n',
            "upstreams",
            "more than once",
        ),
        ('[[upstreams]]\nname = "p"\nbase_url = "http://x"\nuser_agent = "a\\nb"\n', "user_agent", "CR, LF"),
    ],
)
def test_invalid_values_name_file_and_key(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(path + ": ")
    assert key in message
    assert problem in message


@pytest.mark.parametrize("name", ["Authorization", "Host", "Content-Length", "accept", "User-Agent", "Connection"])
def test_extra_headers_may_not_replace_reserved_ones(tmp_path, name):
    text = f'[[upstreams]]\nname = "p"\nbase_url = "http://x"\nheaders = {{ "{name}" = "v" }}\n'
    with pytest.raises(ConfigError, match=f"upstreams\\[0\\].headers.{name}: may not be set"):
        load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize("value", ["a\\r\\nX-Evil: 1", "a\\nb", "a\\u0000b"])
def test_extra_header_values_may_not_contain_line_breaks(tmp_path, value):
    text = f'[[upstreams]]\nname = "p"\nbase_url = "http://x"\nheaders = {{ "X-Team" = "{value}" }}\n'
    with pytest.raises(ConfigError, match="CR, LF or NUL"):
        load_config(write(tmp_path, text), env={})


def test_token_values_never_appear_in_errors(tmp_path):
    text = '[[upstreams]]\nname = "p"\nbase_url = "http://x"\ntokens = ["secret value"]\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert "secret" not in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config(str(tmp_path / "nope.toml"), env={})
    with pytest.raises(ConfigError, match="sluice.toml: invalid TOML"):
        load_config(write(tmp_path, "[[upstreams]\n"), env={})


def test_settings_from_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-a-file-0123456789\n")
    settings = load_settings(
        {
            "SLUICE_CONFIG": "/etc/sluice.toml",
            "SLUICE_MASTER_KEY_FILE": str(key_file),
            "SLUICE_DEBUG": "1",
            "SLUICE_BIND": "0.0.0.0:9000",
            "SLUICE_WORKERS": "4",
            "SLUICE_DATA_DIR": "/var/lib/sluice",
            "SLUICE_TRUSTED_PROXIES": "1",
        }
    )
    assert settings.config_path == "/etc/sluice.toml"
    assert settings.master_key == "sk-from-a-file-0123456789"
    assert settings.log_level == "DEBUG"
    assert (settings.bind, settings.workers, settings.trusted_proxies) == ("0.0.0.0:9000", 4, 1)
    assert settings.data_dir == "/var/lib/sluice"


def test_settings_defaults():
    settings = load_settings({})
    assert (settings.bind, settings.workers, settings.data_dir) == ("127.0.0.1:8000", 1, "./data")
    assert settings.master_key is None and settings.log_level == "INFO" and settings.trusted_proxies == 0


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SLUICE_WORKERS": "many"}, "SLUICE_WORKERS"),
        ({"SLUICE_WORKERS": "0"}, "SLUICE_WORKERS"),
        ({"SLUICE_TRUSTED_PROXIES": "-1"}, "SLUICE_TRUSTED_PROXIES"),
        ({"SLUICE_LOG_LEVEL": "LOUD"}, "SLUICE_LOG_LEVEL"),
        ({"SLUICE_MASTER_KEY": "short"}, "SLUICE_MASTER_KEY"),
        ({"SLUICE_MASTER_KEY_FILE": "/nonexistent/key"}, "SLUICE_MASTER_KEY_FILE"),
    ],
)
def test_invalid_settings_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        load_settings(env)

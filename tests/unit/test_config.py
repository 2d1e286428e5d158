"""Settings: flag > env > default, coercion and errors, argparse wiring, topic prefix, Kafka security kwargs."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from streamrec.config import ENV_PREFIX, Settings, add_arguments, env_name, from_args


@pytest.fixture
def clean_env(monkeypatch):
    import os
    for k in list(os.environ):
        if k.startswith(ENV_PREFIX):
            monkeypatch.delenv(k)
    return monkeypatch


def test_defaults_without_env():
    assert Settings.from_env({}) == Settings()


def test_env_name():
    assert env_name("history_size") == "STREAMREC_HISTORY_SIZE"


def test_env_values_are_coerced():
    s = Settings.from_env({"STREAMREC_HISTORY_SIZE": "7", "STREAMREC_MAX_WAIT_MS": "2.5",
                           "STREAMREC_APP_ID": "x", "STREAMREC_TOP_K": " 3 "})
    assert (s.history_size, s.max_wait_ms, s.app_id, s.top_k) == (7, 2.5, "x", 3)
    assert type(s.history_size) is int and type(s.max_wait_ms) is float


def test_empty_env_value_means_default():
    assert Settings.from_env({"STREAMREC_HISTORY_SIZE": "", "STREAMREC_APP_ID": ""}) == Settings()


def test_unrelated_env_ignored():
    assert Settings.from_env({"HISTORY_SIZE": "1", "STREAMREC_NOT_A_FIELD": "1"}) == Settings()


@pytest.mark.parametrize("var, value, kind", [
    ("STREAMREC_HISTORY_SIZE", "lots", "int"), ("STREAMREC_HISTORY_SIZE", "1.5", "int"),
    ("STREAMREC_WEB_PORT", "80a", "int"), ("STREAMREC_MAX_WAIT_MS", "fast", "float"),
])
def test_bad_env_value_is_a_clear_error(var, value, kind):
    with pytest.raises(ValueError) as info:
        Settings.from_env({var: value})
    msg = str(info.value)
    assert var in msg and repr(value) in msg and kind in msg


def test_precedence_override_beats_env_beats_default():
    env = {"STREAMREC_HISTORY_SIZE": "7", "STREAMREC_TOP_K": "3"}
    s = Settings.from_env(env, history_size=9, top_k=None)
    assert s.history_size == 9          # override
    assert s.top_k == 3                 # None override = not given: env
    assert s.dedupe_window == Settings().dedupe_window   # default


def test_override_hides_a_bad_env_value():
    assert Settings.from_env({"STREAMREC_HISTORY_SIZE": "oops"}, history_size=4).history_size == 4


def test_every_field_round_trips_through_its_env_var():
    for f in dataclasses.fields(Settings):
        default = getattr(Settings(), f.name)
        s = Settings.from_env({env_name(f.name): str(default) if default != "" else "v"})
        assert getattr(s, f.name) == (default if default != "" else "v"), f.name
        assert type(getattr(s, f.name)) is type(default), f.name


def parser_with(names=None):
    p = argparse.ArgumentParser()
    add_arguments(p, names)
    return p


def test_flags_exist_for_every_setting_and_parse_types(clean_env):
    p = parser_with()
    args = p.parse_args(["--history-size", "5", "--max-wait-ms", "1.5", "--topic-prefix", "t-"])
    s = from_args(args)
    assert (s.history_size, s.max_wait_ms, s.topic_prefix) == (5, 1.5, "t-")
    for f in dataclasses.fields(Settings):
        assert getattr(p.parse_args([]), f.name) is None       # absent flag = None, so env/default can win


def test_from_args_precedence(clean_env):
    clean_env.setenv("STREAMREC_HISTORY_SIZE", "11")
    clean_env.setenv("STREAMREC_TOP_K", "4")
    s = from_args(parser_with().parse_args(["--history-size", "2"]))
    assert s.history_size == 2                    # flag > env
    assert s.top_k == 4                           # env > default
    assert s.app_id == "streamrec"                # default


def test_add_arguments_subset_and_bad_flag_value(clean_env, capsys):
    p = parser_with(["top_k", "app_id"])
    assert p.parse_args(["--top-k", "3"]).top_k == 3
    with pytest.raises(SystemExit):
        p.parse_args(["--history-size", "3"])     # not added
    with pytest.raises(SystemExit):
        p.parse_args(["--top-k", "three"])
    assert from_args(p.parse_args(["--app-id", "a"])).app_id == "a"   # missing attributes fall back


def test_topic_prefix():
    assert Settings().topic("interactions") == "interactions"
    assert Settings(topic_prefix="test1.").topic("interactions") == "test1.interactions"


def test_security_plaintext():
    assert Settings().kafka_python_security() == {"security_protocol": "PLAINTEXT"}


def test_security_sasl_ssl():
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="me", kafka_sasl_password="pw",
                 kafka_ssl_cafile="/ca.pem")
    assert s.kafka_python_security() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "me",
        "sasl_plain_password": "pw", "ssl_cafile": "/ca.pem", "ssl_certfile": None, "ssl_keyfile": None}
    s2 = dataclasses.replace(s, kafka_sasl_mechanism="SCRAM-SHA-512")
    assert s2.kafka_python_security()["sasl_mechanism"] == "SCRAM-SHA-512"


def test_security_ssl_and_sasl_plaintext():
    ssl = Settings(kafka_security_protocol="SSL", kafka_ssl_certfile="c", kafka_ssl_keyfile="k").kafka_python_security()
    assert ssl == {"security_protocol": "SSL", "ssl_cafile": None, "ssl_certfile": "c", "ssl_keyfile": "k"}
    sp = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u").kafka_python_security()
    assert sp["sasl_plain_username"] == "u" and not any(k.startswith("ssl_") for k in sp)


def test_as_dict_hides_password():
    s = Settings(kafka_sasl_password="hunter2")
    d = s.as_dict()
    assert d["kafka_sasl_password"] == "***" and "hunter2" not in repr(d)
    assert s.kafka_sasl_password == "hunter2"          # the object itself is untouched
    assert d["app_id"] == "streamrec" and set(d) == {f.name for f in dataclasses.fields(Settings)}
    assert Settings().as_dict()["kafka_sasl_password"] == ""


def test_boolean_settings_from_flags_and_env_read_false_as_false():
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser, ["recommend_seen"])
    assert from_args(parser.parse_args(["--recommend-seen", "false"])).recommend_seen is False
    assert from_args(parser.parse_args(["--recommend-seen", "yes"])).recommend_seen is True
    assert Settings.from_env({"STREAMREC_RECOMMEND_SEEN": "true"}).recommend_seen is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--recommend-seen", "maybe"])


# --------------------------------------------------------------------------------------------- secrets

def test_secret_is_read_from_its_file_without_the_trailing_newline(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret-value\n")
    s = Settings.from_env({"STREAMREC_KAFKA_SASL_PASSWORD_FILE": str(f), "STREAMREC_KAFKA_SASL_USERNAME_FILE": str(f)})
    assert s.kafka_sasl_password == "s3cret-value" and s.kafka_sasl_username == "s3cret-value"


def test_secret_file_and_variable_together_is_an_error(tmp_path):
    f = tmp_path / "pw"
    f.write_text("a")
    with pytest.raises(ValueError, match="not both"):
        Settings.from_env({"STREAMREC_KAFKA_SASL_PASSWORD_FILE": str(f), "STREAMREC_KAFKA_SASL_PASSWORD": "b"})


def test_unreadable_secret_file_names_the_file_not_a_value(tmp_path):
    with pytest.raises(ValueError) as info:
        Settings.from_env({"STREAMREC_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")})
    assert "STREAMREC_KAFKA_SASL_PASSWORD_FILE" in str(info.value) and "missing" in str(info.value)


def test_only_secret_capable_fields_read_files(tmp_path):
    f = tmp_path / "v"
    f.write_text("x")
    assert Settings.from_env({"STREAMREC_APP_ID_FILE": str(f)}).app_id == Settings().app_id


def test_password_never_shown_in_repr_as_dict_or_a_coercion_error():
    s = Settings(kafka_sasl_password="hunter2-xyz")
    assert "hunter2-xyz" not in repr(s)
    assert s.as_dict()["kafka_sasl_password"] == "***" and "hunter2-xyz" not in str(s.as_dict())


def test_help_names_the_file_variable_and_never_an_env_value(monkeypatch):
    monkeypatch.setenv("STREAMREC_KAFKA_SASL_PASSWORD", "hunter2-xyz")
    text = parser_with().format_help()
    assert "STREAMREC_KAFKA_SASL_PASSWORD_FILE" in text and "hunter2-xyz" not in text


def test_env_names_lists_the_file_variants():
    from streamrec.config import env_names
    names = env_names()
    assert {"STREAMREC_KAFKA_SASL_PASSWORD", "STREAMREC_KAFKA_SASL_PASSWORD_FILE"} <= names
    assert "STREAMREC_APP_ID_FILE" not in names

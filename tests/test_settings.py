"""Settings are checked when they are read: a bad value names its variable, the value and what is allowed,
and the `suara` command exits 2 with that message before doing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suara.runtime.settings import SettingError, Settings, TallySettings
from tests.support.processes import run_suara, suara_env


def test_nothing_set_is_every_default() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"SUARA_TALLY_PORT": "", "DATABASE_URL": ""}) == Settings()  # empty: the default


def test_values_are_parsed_into_their_groups() -> None:
    settings = Settings.from_env(
        {
            "SUARA_TALLY_PORT": "0",
            "SUARA_TALLY_COMMIT_WAIT_S": "2.5",
            "SUARA_SITE_DIR": "/srv/site",
            "SUARA_AGGREGATE_ADDRESS": "aggregate.internal:7000",
            "SUARA_LOG_LEVEL": "WARNING",
            "DATABASE_URL": "postgresql://db.internal/suara",
        }
    )
    assert settings.tally.port == 0
    assert settings.tally.commit_wait_s == 2.5
    assert settings.site.dir == Path("/srv/site")
    assert settings.peers.aggregate == "aggregate.internal:7000"
    assert settings.log.level == "WARNING"
    assert settings.database.url == "postgresql://db.internal/suara"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("True", True), ("0", False), ("false", False), ("No", False)],
)
def test_a_boolean_is_one_of_six_words_in_any_case(raw: str, expected: bool) -> None:
    assert Settings.from_env({"SUARA_TALLY_SHARED_PORT": raw}).tally.shared_port is expected


@pytest.mark.parametrize(
    ("env", "raw", "allowed"),
    [
        ("SUARA_TALLY_SHARED_PORT", "2", "1, true, yes, 0, false, no"),
        ("SUARA_TALLY_SHARED_PORT", "on", "1, true, yes, 0, false, no"),
        ("SUARA_TALLY_PORT", "65536", "a port, 0 to 65535"),
        ("SUARA_PUBLISH_PORT", "-1", "a port, 0 to 65535"),
        ("SUARA_HTTP_PORT", "eighty", "a port, 0 to 65535"),
        ("SUARA_DB_POOL_SIZE", "0", "a whole number of 1 or more"),
        ("SUARA_TALLY_MAX_IN_FLIGHT", "1.5", "a whole number of 1 or more"),
        ("SUARA_RELAY_BATCH", "10001", "1 to 10000"),
        ("SUARA_PHOTO_MAX_BYTES", "0", "bytes, 1 to 67108864"),
        ("SUARA_TALLY_COMMIT_WAIT_S", "0", "a number of seconds above 0"),
        ("SUARA_PUBLISH_INTERVAL_S", "soon", "a number of seconds above 0"),
        ("SUARA_SHUTDOWN_GRACE_S", "-1", "a number of seconds, 0 or more"),
        ("SUARA_LOG_LEVEL", "loud", "one of debug, info, warning, error"),
        ("SUARA_LOG_FORMAT", "xml", "one of json, console, auto"),
        ("SUARA_EVENT_LOOP", "trio", "one of uvloop, asyncio"),
        ("SUARA_TALLY_ADDRESS", "tally", "HOST:PORT"),
        ("SUARA_AGGREGATE_ADDRESS", "aggregate:0", "HOST:PORT"),
        ("SUARA_AGGREGATE_ADDRESS", "10.0.0.1:7000,aggregate", "several comma-separated"),
        ("SUARA_AGGREGATE_ADDRESS", " , ", "HOST:PORT"),
        ("SUARA_TALLY_HOST", "two words", "a host name or address"),
        ("DATABASE_URL", "mysql://db/suara", "a postgresql:// URL"),
        ("SUARA_PUBLISH_TO", "ftp://site", "s3://bucket/prefix"),
        ("SUARA_S3_ENDPOINT_URL", "minio:9000", "an http(s):// URL"),
        ("SUARA_PHOTO_STORE", "gs://photos", "s3://bucket/prefix"),
        ("SUARA_PHOTO_STORE", "s3://", "a valid S3 bucket name"),
        ("SUARA_PHOTO_STORE", "s3://Bad_Bucket/photos", "a valid S3 bucket name"),
        ("SUARA_PHOTO_STORE_ENDPOINT_URL", "seaweed:8333", "an http(s):// URL"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(env: str, raw: str, allowed: str) -> None:
    with pytest.raises(SettingError) as refused:
        Settings.from_env({env: raw})
    message = str(refused.value)
    assert message.startswith(f"{env}=")
    assert raw in message
    assert allowed in message


@given(st.integers(min_value=-100_000, max_value=100_000))
def test_a_port_is_0_to_65535(port: int) -> None:
    if 0 <= port <= 65535:
        assert Settings.from_env({"SUARA_TALLY_PORT": str(port)}).tally.port == port
    else:
        with pytest.raises(SettingError, match=r"^SUARA_TALLY_PORT="):
            Settings.from_env({"SUARA_TALLY_PORT": str(port)})


def test_settings_made_in_code_are_checked_too() -> None:
    with pytest.raises(SettingError, match=r"^SUARA_TALLY_PORT=70000"):
        TallySettings(port=70000)
    with pytest.raises(SettingError, match=r"^SUARA_TALLY_SHARED_PORT=1"):
        TallySettings(shared_port=1)  # type: ignore[arg-type]  # an int where a bool belongs


def test_a_photo_store_endpoint_needs_an_s3_photo_store() -> None:
    with pytest.raises(SettingError, match=r"^SUARA_PHOTO_STORE_ENDPOINT_URL=.*SUARA_PHOTO_STORE is s3://"):
        Settings.from_env({"SUARA_PHOTO_STORE_ENDPOINT_URL": "http://127.0.0.1:8333"})
    both = {"SUARA_PHOTO_STORE_ENDPOINT_URL": "http://127.0.0.1:8333", "SUARA_PHOTO_STORE": "s3://photos/night"}
    assert Settings.from_env(both).tally.photo_store == "s3://photos/night"


async def test_the_command_exits_2_naming_a_bad_variable(tmp_path: Path) -> None:
    done = await run_suara("db", "url", env=suara_env(SUARA_TALLY_SHARED_PORT="maybe"), cwd=tmp_path)
    assert done.returncode == 2
    assert "SUARA_TALLY_SHARED_PORT='maybe'" in done.stderr and "1, true, yes, 0, false, no" in done.stderr
    assert not done.stdout


async def test_a_flag_standing_in_for_a_setting_is_checked_as_it(tmp_path: Path) -> None:
    done = await run_suara("tally", "serve", "--port", "70000", env=suara_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "SUARA_TALLY_PORT=70000" in done.stderr and "a port, 0 to 65535" in done.stderr

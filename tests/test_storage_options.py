"""Storage options: one validated config section, CLI flags, and never recorded anywhere."""

from __future__ import annotations

import pytest
from fastapi.encoders import jsonable_encoder

from matteforge.cli import build_parser, main
from matteforge.config import (
    StorageConfig,
    load_config,
    parse_storage_option,
    seal_storage,
    unseal_storage,
)


def test_flags_parse_to_nested_per_location_options():
    assert parse_storage_option("endpoint_url=http://h:9000/a=b") == {
        "options": {"endpoint_url": "http://h:9000/a=b"}}
    assert parse_storage_option("output:client_kwargs.region_name=eu-west-1") == {
        "output": {"client_kwargs": {"region_name": "eu-west-1"}}}
    assert parse_storage_option("input:anon=true") == {"input": {"anon": True}}
    assert parse_storage_option("secret=0123") == {"options": {"secret": "0123"}}  # stays text


@pytest.mark.parametrize("bad", ["secret", "=s3cr3t", " =s3cr3t", "bucket:secret=s3cr3t"])
def test_malformed_flags_are_refused_without_echoing_the_value(bad):
    with pytest.raises(ValueError) as info:
        parse_storage_option(bad)
    assert "s3cr3t" not in str(info.value)


def test_shared_options_go_to_remote_locations_and_per_location_ones_win():
    storage = StorageConfig(options={"endpoint_url": "http://minio:9000", "client_kwargs": {
        "region_name": "eu-west-1", "verify": False}},
        output={"client_kwargs": {"region_name": "us-west-2"}}, input={"anon": True})
    assert storage.for_location("output", "s3://bucket/out") == {
        "endpoint_url": "http://minio:9000",
        "client_kwargs": {"region_name": "us-west-2", "verify": False}}
    assert storage.for_location("input", "/data/portraits") == {"anon": True}
    assert storage.for_location("backgrounds", "file:///bgs") == {}
    merged = storage.with_overrides({"options": {"profile": "dev"}})
    assert merged.for_location("backgrounds", "gs://b/bgs")["profile"] == "dev"


def test_the_storage_section_is_validated_and_left_out_of_every_dump():
    cfg = load_config({"storage": {"output": {"secret": "s3cr3t"}}})
    assert cfg.storage.output == {"secret": "s3cr3t"}
    assert "storage" not in cfg.model_dump() and "s3cr3t" not in cfg.model_dump_json()
    assert "s3cr3t" not in repr(cfg)
    with pytest.raises(ValueError, match="outptu"):
        load_config({"storage": {"outptu": {}}})


def test_sealed_options_are_masked_where_prefect_records_flow_parameters():
    sealed = seal_storage({"output": {"secret": "s3cr3t"}})
    assert "s3cr3t" not in str(jsonable_encoder({"storage_options": sealed}))
    assert unseal_storage(sealed) == {"output": {"secret": "s3cr3t"}}
    assert unseal_storage(None) == {}


def test_cli_takes_storage_flags_for_build_and_verify(tmp_path, capsys):
    args = build_parser().parse_args(
        ["build", "--endpoint-url", "http://h:9000", "--storage-option", "output:anon=false"])
    assert args.endpoint_url == "http://h:9000" and args.storage_option == ["output:anon=false"]
    assert main(["verify", str(tmp_path), "--storage-option", "junk"]) == 2
    err = capsys.readouterr().err
    assert "expected KEY=VALUE" in err

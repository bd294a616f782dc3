"""Server addresses the client takes, and the gRPC channel arguments it passes (no server)."""

import json

import pytest

from t2vserve.client import AsyncT2VClient, T2VClient
from t2vserve.client.core import SERVICE, channel_args, grpc_target


@pytest.mark.parametrize("given,target", [
    ("127.0.0.1:8001", "127.0.0.1:8001"),
    ("t2v.internal:8001", "t2v.internal:8001"),
    ("[::1]:8001", "[::1]:8001"),
    ("127.0.0.1:8001,127.0.0.1:9001", "ipv4:127.0.0.1:8001,127.0.0.1:9001"),
    (" 10.0.0.1:8001 , 10.0.0.2:8001 ", "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
    ("[::1]:8001,[fe80::1]:9001", "ipv6:[::1]:8001,[fe80::1]:9001"),
    ("ipv4:127.0.0.1:8001,127.0.0.1:9001", "ipv4:127.0.0.1:8001,127.0.0.1:9001"),
    ("ipv6:[::1]:8001,[::1]:9001", "ipv6:[::1]:8001,[::1]:9001"),
    ("dns:///t2vserve-headless:8001", "dns:///t2vserve-headless:8001"),
    ("unix:/run/triton.sock", "unix:/run/triton.sock"),
])
def test_targets_gRPC_takes(given, target):
    assert grpc_target(given) == target


@pytest.mark.parametrize("given,says", [
    ("gpu-a:8001,gpu-b:8001", "dns:///name:port"),          # several host names
    ("127.0.0.1:8001,gpu-b:8001", "several servers by host name"),
    ("127.0.0.1:8001,[::1]:8001", "mixes IPv4 and IPv6"),
    ("ipv4:127.0.0.1:8001,[::1]:9001", "is not an ipv4 address:port"),
    ("ipv4:gpu-a:8001", "is not an ipv4 address:port"),
    ("127.0.0.1:8001,", "must be host:port"),                # an empty entry
    ("127.0.0.1", "must be host:port"),                     # no port
    ("127.0.0.1:80001", "port in [1, 65535]"),
    ("127.0.0.1:http", "must be host:port"),
    ("", "the server address is empty"),
])
def test_bad_targets_say_what_is_allowed(given, says):
    with pytest.raises(ValueError) as err:
        grpc_target(given)
    assert says in str(err.value)
    if given:
        assert "dns:///name:port" in str(err.value)  # the forms that would do


def test_one_server_keeps_tritonclient_defaults():
    assert channel_args("127.0.0.1:8001") is None
    assert channel_args("unix:/run/triton.sock") is None


@pytest.mark.parametrize("target", ["ipv4:127.0.0.1:8001,127.0.0.1:9001",
                                    "dns:///t2vserve-headless:8001"])
def test_several_servers_balance_retry_and_keep_the_defaults(target):
    import tritonclient.grpc as grpcclient

    args = dict(channel_args(target))
    assert args["grpc.lb_policy_name"] == "round_robin"
    assert args["grpc.enable_retries"] == 1
    method = json.loads(args["grpc.service_config"])["methodConfig"][0]
    assert method["name"] == [{"service": SERVICE}] == [{"service": "inference.GRPCInferenceService"}]
    policy = method["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps tries at 5
    # a list replaces what tritonclient would have set: the same values, restated
    keepalive = grpcclient.KeepAliveOptions()
    assert args["grpc.max_send_message_length"] == args["grpc.max_receive_message_length"] \
        == 2**31 - 1
    assert (args["grpc.keepalive_time_ms"], args["grpc.keepalive_timeout_ms"],
            args["grpc.keepalive_permit_without_calls"],
            args["grpc.http2.max_pings_without_data"]) == (
        keepalive.keepalive_time_ms, keepalive.keepalive_timeout_ms,
        keepalive.keepalive_permit_without_calls, keepalive.http2_max_pings_without_data)


def test_clients_take_a_fleet_and_refuse_host_name_lists():
    # no server needed: gRPC connects lazily
    with T2VClient("127.0.0.1:1,127.0.0.1:2") as client:
        assert client.url == "ipv4:127.0.0.1:1,127.0.0.1:2"
        assert dict(client.channel_args)["grpc.lb_policy_name"] == "round_robin"
    with T2VClient("127.0.0.1:1") as client:
        assert client.url == "127.0.0.1:1" and client.channel_args is None
    with pytest.raises(ValueError, match="several servers by host name"):
        AsyncT2VClient("a:1,b:2")


@pytest.mark.parametrize("command", [["generate", "a cup"], ["batch", "catalog.jsonl"],
                                     ["gateway"]])
def test_cli_refuses_a_bad_url_before_connecting(command, capsys):
    from t2vserve.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(command + ["--url", "gpu-a:8001,gpu-b:8001"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--url" in err and "dns:///name:port" in err
    args = build_parser().parse_args(command + ["--url", "127.0.0.1:8001,127.0.0.1:9001"])
    assert args.url == "ipv4:127.0.0.1:8001,127.0.0.1:9001"

"""The error table: each error type has one gRPC code, and a status round-trips reason and hint."""

import grpc
import pytest

from ferry import errors
from ferry.rpc import error_type_for, from_rpc_error, grpc_code, has_status_details, to_status


@pytest.mark.parametrize(
    ("err_type", "code", "caller_fault"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, True),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND, True),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, True),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, True),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, False),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, False),
        (errors.Aborted, grpc.StatusCode.ABORTED, False),
        (errors.Internal, grpc.StatusCode.INTERNAL, False),
    ],
)
def test_error_table(err_type, code, caller_fault):
    assert grpc_code(err_type.code) == code
    assert err_type.caller_fault is caller_fault
    assert error_type_for(code) is err_type


def test_codes_are_unique():
    codes = [t.code for t in errors.ERROR_TYPES]
    assert len(codes) == len(set(codes))


class _FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.Status):
        self._status = status

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def test_status_round_trip_keeps_reason_and_hint():
    err = errors.FailedPrecondition(
        "bridge br-guest is missing on host2", reason="BRIDGE_MISSING", hint="map it: --map-bridge br-guest=br-vm"
    )
    back = from_rpc_error(_FakeRpcError(to_status(err)))
    assert type(back) is errors.FailedPrecondition
    assert (back.reason, back.message, back.hint) == (err.reason, err.message, err.hint)
    assert has_status_details(_FakeRpcError(to_status(err)))


def test_plain_status_without_details():
    class Plain(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection refused"

        def trailing_metadata(self):
            return ()

    back = from_rpc_error(Plain())
    assert type(back) is errors.Unavailable
    assert back.reason == "UNREACHABLE"
    assert not has_status_details(Plain())

"""Errors the control plane answers with; each maps to one gRPC status code."""

from __future__ import annotations

import grpc


class ControlError(Exception):
    """An error whose message is written for the person who sent the request."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ControlError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ControlError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ControlError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ControlError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ControlError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ControlError):
    code = grpc.StatusCode.UNAVAILABLE

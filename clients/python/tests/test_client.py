"""The hand-written layer on its own: tokens, retries, error details."""

import unittest
from datetime import timedelta

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ssak3.reservation.v1 import reservation_pb2
from ssak3_client import ApiError, FieldViolation, RetryPolicy, TokenAndRetryInterceptor


class Outcome(grpc.RpcError, grpc.Call):
    """What a call ends with: a code, a message and rich details."""

    def __init__(self, code, message="", details=()):
        self._code = code
        self._message = message
        self._trailers = ()
        if details:
            status = status_pb2.Status(code=code.value[0], message=message)
            for detail in details:
                packed = any_pb2.Any()
                packed.Pack(detail)
                status.details.append(packed)
            self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return self._trailers

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


class CallDetails(grpc.ClientCallDetails):
    method = "/ssak3.reservation.v1.ReservationService/CreateReservation"
    timeout = None
    metadata = None
    credentials = None
    wait_for_ready = None
    compression = None


def retry_info(seconds):
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromTimedelta(timedelta(seconds=seconds))
    return info


class Server:
    """A continuation that answers with `outcomes` in turn and records calls."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def __call__(self, details, request):
        self.calls.append((dict(details.metadata), getattr(request, "request_id", None)))
        return self.outcomes.pop(0)


class TokenAndRetryInterceptorTest(unittest.TestCase):
    def setUp(self):
        self.slept = []
        self.policy = RetryPolicy(attempts=4, sleep=self.slept.append)
        self.interceptor = TokenAndRetryInterceptor(lambda: "t0k3n", self.policy)

    def test_unavailable_is_retried_after_the_asked_delay_with_the_same_request_id(self):
        busy = Outcome(grpc.StatusCode.UNAVAILABLE, "pay again shortly", [retry_info(3)])
        server = Server(busy, busy, Outcome(grpc.StatusCode.OK))
        request = reservation_pb2.CreateReservationRequest(address="1 Main St")
        outcome = self.interceptor.intercept_unary_unary(server, CallDetails(), request)
        self.assertEqual(outcome.code(), grpc.StatusCode.OK)
        self.assertEqual(self.slept, [3.0, 3.0])
        keys = {request_id for _, request_id in server.calls}
        self.assertEqual(len(server.calls), 3)
        self.assertEqual(len(keys), 1)
        self.assertNotEqual(keys, {""})
        self.assertEqual(request.request_id, keys.pop())
        for metadata, _ in server.calls:
            self.assertEqual(metadata["authorization"], "Bearer t0k3n")

    def test_a_request_id_of_the_caller_is_kept(self):
        server = Server(Outcome(grpc.StatusCode.DEADLINE_EXCEEDED), Outcome(grpc.StatusCode.OK))
        request = reservation_pb2.CreateReservationRequest(request_id="mine-1")
        self.interceptor.intercept_unary_unary(server, CallDetails(), request)
        self.assertEqual([r for _, r in server.calls], ["mine-1", "mine-1"])
        self.assertEqual(len(self.slept), 1)
        self.assertLessEqual(self.slept[0], self.policy.base_delay)

    def test_a_lost_race_is_retried(self):
        server = Server(Outcome(grpc.StatusCode.ABORTED, "changed meanwhile"), Outcome(grpc.StatusCode.OK))
        outcome = self.interceptor.intercept_unary_unary(
            server, CallDetails(), reservation_pb2.CancelReservationRequest(reservation_id="r")
        )
        self.assertEqual(outcome.code(), grpc.StatusCode.OK)
        self.assertEqual(len(server.calls), 2)

    def test_bad_input_is_not_retried_and_its_fields_are_decoded(self):
        bad = error_details_pb2.BadRequest()
        bad.field_violations.add(field="address", description="is required")
        server = Server(Outcome(grpc.StatusCode.INVALID_ARGUMENT, "invalid address: is required", [bad]))
        request = reservation_pb2.CreateReservationRequest()
        outcome = self.interceptor.intercept_unary_unary(server, CallDetails(), request)
        self.assertEqual(len(server.calls), 1)
        self.assertEqual(self.slept, [])
        error = ApiError.of(outcome)
        self.assertEqual(error.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(error.field_violations, [FieldViolation("address", "is required")])
        self.assertIsNone(error.retry_delay)

    def test_retries_stop_after_the_last_attempt(self):
        busy = Outcome(grpc.StatusCode.UNAVAILABLE, "down", [retry_info(1)])
        server = Server(busy, busy, busy, busy)
        outcome = self.interceptor.intercept_unary_unary(
            server, CallDetails(), reservation_pb2.GetReservationRequest(reservation_id="r")
        )
        self.assertEqual(outcome.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(len(server.calls), 4)
        self.assertEqual(ApiError.of(outcome).retry_delay, 1.0)

    def test_rate_limits_are_retried_only_when_the_server_says_when(self):
        limited = Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [retry_info(2)])
        server = Server(limited, Outcome(grpc.StatusCode.OK))
        self.interceptor.intercept_unary_unary(
            server, CallDetails(), reservation_pb2.GetReservationRequest(reservation_id="r")
        )
        self.assertEqual(self.slept, [2.0])
        server = Server(Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, "no"))
        self.interceptor.intercept_unary_unary(
            server, CallDetails(), reservation_pb2.GetReservationRequest(reservation_id="r")
        )
        self.assertEqual(len(server.calls), 1)

    def test_details_that_contradict_the_call_are_ignored(self):
        status = status_pb2.Status(code=code_pb2.INTERNAL, message="other")
        outcome = Outcome(grpc.StatusCode.NOT_FOUND, "missing")
        outcome._trailers = (("grpc-status-details-bin", status.SerializeToString()),)
        error = ApiError.of(outcome)
        self.assertEqual(error.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(error.field_violations, [])


if __name__ == "__main__":
    unittest.main()

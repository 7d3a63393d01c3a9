"""A thin layer over the generated Ssak3 stubs (the ``ssak3`` package).

- ``Client`` opens one channel per service and sends
  ``authorization: Bearer <token>`` with every call.
- Unary calls are retried when the system says "try again"
  (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``ABORTED`` when a concurrent
  change won, or ``RESOURCE_EXHAUSTED`` with a ``google.rpc.RetryInfo``),
  after the delay the server asks for. Every
  unary call of the API is safe to repeat: reads and lists are, cancelling
  or completing twice changes nothing, and ``CreateReservation`` is
  idempotent per ``request_id``, which the layer fills in (a UUID) before
  the first attempt when the caller left it empty, so that every retry
  carries the same key.
- ``ApiError.of(error)`` decodes a failed call's ``google.rpc`` details:
  the fields a ``BadRequest`` names and the delay a ``RetryInfo`` asks for.

Streams (``Watch*``) are not retried: reconnect with the resume point of the
last item received (see docs/api.md).
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ssak3.mypage.v1 import mypage_pb2_grpc
from ssak3.notify.v1 import notify_pb2_grpc
from ssak3.payment.v1 import payment_pb2_grpc
from ssak3.reservation.v1 import reservation_pb2_grpc

__all__ = [
    "ApiError",
    "Client",
    "DEFAULT_PORTS",
    "FieldViolation",
    "RetryPolicy",
    "TokenAndRetryInterceptor",
]

#: Where each service listens by default (``ssak3 up``).
DEFAULT_PORTS: Dict[str, int] = {
    "reservation": 50051,
    "payment": 50052,
    "notify": 50053,
    "mypage": 50054,
}

_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
)


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One field a ``google.rpc.BadRequest`` names, and what is wrong with it."""

    field: str
    description: str


class ApiError(Exception):
    """A failed call, with its ``google.rpc`` error details decoded."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Sequence[FieldViolation] = (),
        retry_delay: Optional[float] = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations: List[FieldViolation] = list(field_violations)
        #: Seconds the server asks to wait before trying again, if it said.
        self.retry_delay = retry_delay

    @classmethod
    def of(cls, error: grpc.RpcError) -> "ApiError":
        """Decodes a ``grpc.RpcError`` raised by a stub (or a failed call)."""
        return cls(error.code(), error.details() or "", *_details(error))


def _details(call: grpc.Call) -> Tuple[List[FieldViolation], Optional[float]]:
    """The BadRequest violations and the RetryInfo delay of a failed call."""
    violations: List[FieldViolation] = []
    delay: Optional[float] = None
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        # The details disagree with the call's own code or message: ignore them.
        status = None
    if status is None:
        return violations, delay
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad.field_violations
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.ToTimedelta().total_seconds()
    return violations, delay


@dataclasses.dataclass
class RetryPolicy:
    """How unary calls are retried: ``attempts`` in all, waiting what the
    server's RetryInfo asks for, or else an exponential backoff with jitter
    from ``base_delay``; never longer than ``max_delay`` at a time."""

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 10.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int, asked: Optional[float]) -> float:
        if asked is not None:
            return min(asked, self.max_delay)
        backoff = self.base_delay * (2**attempt)
        return min(backoff * (0.5 + random.random() / 2), self.max_delay)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: Sequence[Tuple[str, str]]):
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class TokenAndRetryInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token to every call and retries unary calls."""

    def __init__(self, token: Callable[[], str], retry: RetryPolicy) -> None:
        self._token = token
        self._retry = retry

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
        metadata.append(("authorization", f"Bearer {self._token()}"))
        return _CallDetails(details, metadata)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        details = self._with_token(client_call_details)
        field = request.DESCRIPTOR.fields_by_name.get("request_id")
        if field is not None and not getattr(request, "request_id"):
            # Chosen once, so that every attempt is the same request.
            request.request_id = str(uuid.uuid4())
        attempt = 0
        while True:
            outcome = continuation(details, request)
            code = outcome.code()
            if code == grpc.StatusCode.OK or attempt + 1 >= self._retry.attempts:
                return outcome
            _, asked = _details(outcome)
            retryable = code in _RETRYABLE or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and asked is not None
            )
            if not retryable:
                return outcome
            self._retry.sleep(self._retry.delay(attempt, asked))
            attempt += 1

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


class Client:
    """Stubs of every public Ssak3 service, signed with one token.

    ``token`` is the bearer token (a JWT; ``ssak3 token`` issues development
    ones), or a function returning the current one. Services are reached at
    ``host`` on ``ports`` (the defaults of ``ssak3 up``, or consecutive ones
    from ``base_port``); ``credentials`` makes the channels TLS.
    """

    def __init__(
        self,
        token,
        host: str = "127.0.0.1",
        base_port: Optional[int] = None,
        ports: Optional[Dict[str, int]] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        retry: Optional[RetryPolicy] = None,
    ) -> None:
        if ports is None:
            ports = (
                dict(DEFAULT_PORTS)
                if base_port is None
                else {name: base_port + i for i, name in enumerate(DEFAULT_PORTS)}
            )
        current = token if callable(token) else (lambda: token)
        self.interceptor = TokenAndRetryInterceptor(current, retry or RetryPolicy())
        self._channels: List[grpc.Channel] = []

        def channel(service: str) -> grpc.Channel:
            target = f"{host}:{ports[service]}"
            raw = (
                grpc.secure_channel(target, credentials)
                if credentials is not None
                else grpc.insecure_channel(target)
            )
            self._channels.append(raw)
            return grpc.intercept_channel(raw, self.interceptor)

        reservation = channel("reservation")
        self.reservations = reservation_pb2_grpc.ReservationServiceStub(reservation)
        self.cleaning = reservation_pb2_grpc.CleaningServiceStub(reservation)
        self.companies = reservation_pb2_grpc.CompanyServiceStub(reservation)
        self.payments = payment_pb2_grpc.PaymentServiceStub(channel("payment"))
        self.notifications = notify_pb2_grpc.NotificationServiceStub(channel("notify"))
        self.my_page = mypage_pb2_grpc.MyPageServiceStub(channel("mypage"))

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_) -> None:
        self.close()

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ssak3.type.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVICE_TYPE_UNSPECIFIED: _ClassVar[ServiceType]
    SERVICE_TYPE_STANDARD: _ClassVar[ServiceType]
    SERVICE_TYPE_DEEP: _ClassVar[ServiceType]
    SERVICE_TYPE_MOVE_OUT: _ClassVar[ServiceType]

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    RESERVATION_STATE_PENDING_PAYMENT: _ClassVar[ReservationState]
    RESERVATION_STATE_CONFIRMED: _ClassVar[ReservationState]
    RESERVATION_STATE_CLEANED: _ClassVar[ReservationState]
    RESERVATION_STATE_CANCELLED: _ClassVar[ReservationState]
    RESERVATION_STATE_REJECTED: _ClassVar[ReservationState]
SERVICE_TYPE_UNSPECIFIED: ServiceType
SERVICE_TYPE_STANDARD: ServiceType
SERVICE_TYPE_DEEP: ServiceType
SERVICE_TYPE_MOVE_OUT: ServiceType
RESERVATION_STATE_UNSPECIFIED: ReservationState
RESERVATION_STATE_PENDING_PAYMENT: ReservationState
RESERVATION_STATE_CONFIRMED: ReservationState
RESERVATION_STATE_CLEANED: ReservationState
RESERVATION_STATE_CANCELLED: ReservationState
RESERVATION_STATE_REJECTED: ReservationState

class CreateReservationRequest(_message.Message):
    __slots__ = ("request_id", "cleaner_id", "address", "scheduled_at", "service_type", "note")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLEANER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    cleaner_id: str
    address: str
    scheduled_at: _timestamp_pb2.Timestamp
    service_type: ServiceType
    note: str
    def __init__(self, request_id: _Optional[str] = ..., cleaner_id: _Optional[str] = ..., address: _Optional[str] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service_type: _Optional[_Union[ServiceType, str]] = ..., note: _Optional[str] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class CancelReservationRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class CompleteCleaningRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Reservation]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "customer_id", "cleaner_id", "address", "scheduled_at", "service_type", "price", "state", "payment_id", "create_time", "update_time", "note")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CLEANER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    customer_id: str
    cleaner_id: str
    address: str
    scheduled_at: _timestamp_pb2.Timestamp
    service_type: ServiceType
    price: _money_pb2.Money
    state: ReservationState
    payment_id: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    note: str
    def __init__(self, reservation_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., cleaner_id: _Optional[str] = ..., address: _Optional[str] = ..., scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service_type: _Optional[_Union[ServiceType, str]] = ..., price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., state: _Optional[_Union[ReservationState, str]] = ..., payment_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class RegisterCompanyRequest(_message.Message):
    __slots__ = ("company_id", "display_name")
    COMPANY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    company_id: str
    display_name: str
    def __init__(self, company_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class Company(_message.Message):
    __slots__ = ("company_id", "display_name", "create_time")
    COMPANY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    company_id: str
    display_name: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, company_id: _Optional[str] = ..., display_name: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
